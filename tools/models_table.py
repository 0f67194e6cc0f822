"""docs/models.md: every system's model, source, scales, parameters, train-step compile/step time, and the
validation PSNR of its `quick` run on the embedded sample against bicubic.

  python tools/models_table.py --write docs/models.md            # everything (CPU: about an hour)
  python tools/models_table.py --only edsr.py --skip-quick        # one row, timings only

Timings: the full (seed-size) config's first stage, its train step jitted and compiled once
(`jit(...).lower().compile()`), then the mean of --steps executed steps after one warm-up, global batch
--batch at the config's HR crop, float32. Quick runs: `train.train_and_evaluate(get_config('quick'))`
in a temporary workdir; PSNR is the fastMRI per-volume mean over the sample's validation slices.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))
sys.path.insert(0, str(REPO))
import benchmark_train_step  # noqa: E402
from benchmark_train_step import time_step  # noqa: E402
from mrisr_jax import cli, registry, spec  # noqa: E402

# (config file, quick argument, full argument, source)
SYSTEMS = [
  ('casrgan_x2.py', 'quick', None, 'CASRGAN (seeds/000)'),
  ('casrgan_x3.py', 'quick', None, 'CASRGAN (seeds/000)'),
  ('casrgan_x4.py', 'quick', None, 'CASRGAN (seeds/000)'),
  ('srcnn.py', 'quick', None, 'CASRGAN baseline (seeds/000)'),
  ('srcnn.py', 'gan,quick', 'gan', 'CASRGAN baseline + `--gan` (seeds/000)'),
  ('drrn.py', 'quick', None, 'CASRGAN baseline (seeds/000)'),
  ('drrn.py', 'gan,quick', 'gan', 'CASRGAN baseline + `--gan` (seeds/000)'),
  ('edsr.py', 'quick', None, 'CASRGAN baseline (seeds/000)'),
  ('edsr.py', 'gan,quick', 'gan', 'CASRGAN baseline + `--gan` (seeds/000)'),
  ('rdn.py', 'quick', None, 'CASRGAN baseline (seeds/000)'),
  ('rdn.py', 'gan,quick', 'gan', 'CASRGAN baseline + `--gan` (seeds/000)'),
  ('fagan_x2.py', 'quick', None, 'FA-GAN (seeds/001)'),
  ('fagan_x4.py', 'quick', None, 'FA-GAN (seeds/001)'),
  ('fagan_x8.py', 'quick', None, 'FA-GAN (seeds/001)'),
  ('srdcgan_x4.py', 'quick', None, 'SR-DCGAN (seeds/002)'),
  ('perceptual_x4.py', 'model1,quick', 'model1', 'cardiac perceptual SR (seeds/003)'),
  ('perceptual_x4.py', 'model2,quick', 'model2', 'cardiac perceptual SR (seeds/003)'),
  ('perceptual_x4.py', 'model3,quick', 'model3', 'cardiac perceptual SR (seeds/003)'),
  ('perceptual_x4.py', 'model4,quick', 'model4', 'cardiac perceptual SR (seeds/003)'),
]


def load_config(file: str, arg: str | None):
  return benchmark_train_step.load_config(f'{REPO / "configs" / file}{":" + arg if arg else ""}')


def n_params(config) -> int:
  g = registry.build_generator(config.model)
  shape = registry.input_size(g, spec.resolve(config).lr_patch_shape)
  tree = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape, 1))))['params']
  return sum(x.size for x in jax.tree.leaves(tree))


def quick_run(file: str, arg: str) -> dict:
  config = load_config(file, arg)
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.time()
    from mrisr_jax import train  # imports clu and TensorFlow: only for the quick runs

    summary = train.train_and_evaluate(config, tmp)
    return {'model': summary['model'], 'bicubic': summary['bicubic'], 'wall_s': time.time() - t0}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument(
    '--steps', type=int, default=1, help='timed steps after the warm-up step (0: time the first step after compiling)'
  )
  parser.add_argument('--only', default='', help='comma-separated config files (e.g. edsr.py,rdn.py)')
  parser.add_argument('--skip-quick', action='store_true')
  parser.add_argument('--skip-timing', action='store_true')
  parser.add_argument('--results', default='docs/models_results.json', help='measurements, merged across runs')
  parser.add_argument('--write', default='', help='write the markdown table here')
  parser.add_argument('--benchmarks', default='', help='also write the compile-time target section of this file')
  a = parser.parse_args()
  only = set(filter(None, a.only.split(',')))
  results_path = REPO / a.results
  results = json.loads(results_path.read_text()) if results_path.exists() else {}
  for file, quick_arg, full_arg, _ in SYSTEMS:
    if only and file not in only:
      continue
    key = f'{file}:{full_arg or ""}'
    row = results.setdefault(key, {})
    full = load_config(file, full_arg)
    row['params'] = n_params(full)
    row['scales'] = list(registry.generator_class(full.model.name).supported_scales)
    # A `gan` variant's first stage is its base config's: timed once, on the base row.
    if not a.skip_timing and not (full_arg or '').startswith('gan'):
      stage = full.stage_order[0]
      row['timing'] = {
        'stage': stage,
        'batch': a.batch,
        'hr': list(spec.data_spec(full.data).hr_patch_size),
        **time_step(full, stage, a.batch, a.steps, None),
      }
    if not a.skip_quick:
      row['quick'] = quick_run(file, quick_arg)
      row['quick_arg'] = quick_arg
    print(key, json.dumps(row), flush=True)
    results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
  if a.write:
    write_table(results, a)
  if a.benchmarks:
    write_compile_target(results, a)


def write_table(results: dict, a) -> None:
  lines = [
    '# Models',
    '',
    'Every system the seeds describe, trainable with `python -m mrisr_jax.main --config FILE[:ARG]`.',
    "Parameters: the full config's generator. Compile / step: the full config's first training stage, "
    f'global batch {a.batch} of its HR crop, float32, on this machine (see the command below). Quick run: '
    '`FILE:quick` on the embedded sample (MNI152 T1), per-volume PSNR on its validation slices, with the '
    "bicubic baseline of the same LR (each system's own degradation: area, bicubic, or bicubic + blur).",
    '',
    f'Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, {jax.devices()[0].device_kind} '
    f'({jax.default_backend()}); jax {jax.__version__}, flax {__import__("flax").__version__}, '
    f'Python {platform.python_version()}.',
    f'Command: `python tools/models_table.py --batch {a.batch} --steps {a.steps} --write docs/models.md` '
    f'(measurements are kept in `{a.results}`).',
    '',
    '| config | model | source | scales | parameters | stage timed | compile (s) | step (s) | '
    'quick PSNR (dB) | bicubic (dB) | gain (dB) | quick wall (s) |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for file, quick_arg, full_arg, source in SYSTEMS:
    row = results.get(f'{file}:{full_arg or ""}')
    if not row:
      continue
    config = load_config(file, full_arg)
    t = row.get('timing', {})
    q = row.get('quick', {})
    timing = (
      (f'{t["stage"]} ({"x".join(map(str, t["hr"]))})', f'{t["compile_s"]:.1f}', f'{t["step_s"]:.2f}')
      if t
      else ('as the row above', '', '')
    )
    quick = (
      (
        f'{q["model"]["psnr"]:.2f}',
        f'{q["bicubic"]["psnr"]:.2f}',
        f'{q["model"]["psnr"] - q["bicubic"]["psnr"]:+.2f}',
        f'{q["wall_s"]:.0f}',
      )
      if q
      else ('',) * 4
    )
    name = f'`{file}{":" + full_arg if full_arg else ""}`'
    lines.append(
      f'| {name} | {config.model.name} | {source} | {", ".join(f"x{s}" for s in row["scales"])} | '
      f'{row["params"]:,} | {" | ".join(timing)} | {" | ".join(quick)} |'
    )
  path = REPO / a.write
  path.write_text('\n'.join(lines) + '\n\n' + NOTES)


TARGET_S = 90.0
BEGIN, END = '<!-- compile-target:begin -->', '<!-- compile-target:end -->'


def write_compile_target(results: dict, a) -> None:
  """The issue's target: seed-size CASR x4 and RDN x4 train steps compile in <= 90 s on this machine."""
  rows = []
  for key, label in (
    ('casrgan_x4.py:', 'CASR x4 (seed size, 20 AFEBs unrolled on CPU)'),
    ('rdn.py:', 'RDN x4 (seed size, 20 RDBs)'),
  ):
    t = results.get(key, {}).get('timing')
    if t:
      rows.append(
        f'| {label} | {t["stage"]} | {t["batch"]} x {"x".join(map(str, t["hr"]))} | '
        f'{t["compile_s"]:.1f} | {t["step_s"]:.2f} | {t["compile_s"] / TARGET_S:.2f} |'
      )
  section = '\n'.join(
    [
      BEGIN,
      f'Target: the seed-size CASR x4 and RDN x4 train steps compile in <= {TARGET_S:.0f} s on this machine. '
      f'Measured by `python tools/models_table.py --batch {a.batch} --steps {a.steps} --benchmarks '
      f'docs/benchmarks.md` ({platform.machine()}, {len(os.sched_getaffinity(0))} cores, jax {jax.__version__}); '
      'compile = `jit(step).lower(...).compile()` of the full train step (forward, backward, Adam).',
      '',
      '| model | stage | batch x HR crop | compile (s) | step (s) | compile / target |',
      '|---|---|---|---|---|---|',
      *rows,
      END,
    ]
  )
  path = REPO / a.benchmarks
  text = path.read_text() if path.exists() else ''
  if BEGIN in text:
    text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
  else:
    text = text.rstrip() + '\n\n## Compile-time target (CASR x4, RDN x4)\n\n' + section + '\n'
  path.write_text(text)


NOTES = """## Notes

- The quick runs are sized for CI (a few hundred steps of batch 8 on 36 slices, small models): most
  pixel-loss models are still climbing when they stop, so a small negative gain means "not trained
  long enough", not "worse than bicubic". The README's main job (`casrgan_x4.py:quick`) trains 100
  pre-training epochs to show a positive gain; `docs/benchmarks.md` has its figures.
- FA-GAN (an SRGAN-style trunk with 9x9 head/tail convs and no skip from the input) climbs slowest
  of all from scratch: its quick runs stop far below bicubic, at x8 on 8x8 LR crops most of all.
- Step times with `--steps 0` are the first step after compiling (one execution), on 2 CPU cores: use
  them as ratios between rows, not as accelerator throughput. XLA:CPU runs transposed convolutions
  slowly (`perceptual_x4` model1/3 against model2/4).
- The quick runs use randomly initialised VGG features wherever the recipe has a perceptual loss
  (nothing may download ImageNet weights here), so the perceptual-loss rows (`perceptual_x4` model1/2,
  the GAN stages) measure the pipeline, not the recipe's quality.
- `srdcgan_x4` trains with the adversarial BCE alone, as its seed does: nothing ties the output to the
  input's content, so its PSNR sits below bicubic. Add a pixel term (`--config.stages.gan.pixel_weight=1`)
  to make it a content-preserving GAN.
- The `gan` variants are the CASRGAN seed's `--gan` switch: the L1 pre-training stage, then the CASRGAN
  GAN stage with the CASRGAN discriminator.
- Each model's choices where its source is silent are written in its config file (`configs/`) and in
  its module's docstring (`mrisr_jax/models/`).
"""


if __name__ == '__main__':
  cli.guard(main, compile_cache=False)  # compile times are what it measures; a user error: one line, exit 2
