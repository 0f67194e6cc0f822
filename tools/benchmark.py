"""Speed of mrisr_jax against PyTorch, side by side in one run: train steps, inference, memory.

  python tools/benchmark.py --write docs/benchmarks.md --json speed.json     # every workload (CPU: an hour+)
  python tools/benchmark.py --workloads edsr_baseline_x4 --steps 2           # one workload, printed
  python tools/benchmark.py --memory --growth --workloads none                # the CASR x4 memory / growth tables

Per workload (a config, a batch and an LR crop; `--workloads` lists them) it measures
  train   the stage's real train step: JAX built and jitted exactly as training does it (as
          tools/benchmark_train_step.py: `train.jit_stage_step`, mesh, shardings, donation), compiled
          with `.lower().compile()` (compile time and `memory_analysis()`), then the median of
          --steps executed steps after --warmup steps; PyTorch (tools/torch_baselines.py: the torch
          mirrors, the reference's losses and Adam steps) eager, and with `torch.compile` where it
          compiles within --torch_compile_timeout seconds;
  infer   one slice whose SR output is 320x320, through the library's predict path
          (`predictor.Predictor`: edge-padding to the model's size multiple, bicubic input for
          SRCNN/DRRN) in a fresh process with an empty persistent compilation cache (first call =
          trace + compile + run), then in a second fresh process reading that cache ("cached first
          call"), and the steady-state median of --steps calls; PyTorch eager under no_grad through
          the same `tiling.super_resolve`.
Each (workload, framework) runs in its own subprocess of this tool (`--_one`), so the thread pools
stay apart and the peak RSS (the child's ru_maxrss) is that measurement's alone. Ratios are torch
time / JAX time: above 1, JAX is faster. --memory fits CASR x4's compiled memory in the batch (as
tools/memory_plan.py) and gives the largest per-device batch in 16 and 80 GiB, with and without
remat; --growth times CASR x4 pre-training at LR 48, 96 and 192 (more attention windows).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
TOOLS = REPO / 'tools'
for _p in (str(REPO), str(TOOLS)):
  if _p not in sys.path:
    sys.path.insert(0, _p)

BEGIN, END = '<!-- speed:begin -->', '<!-- speed:end -->'
HEADING = '## Speed against PyTorch'
GIB, MIB = 2**30, 2**20
INFER_OUT = 320  # SR output side of the inference slice
QUICK_BATCH, QUICK_LR, QUICK_INFER_OUT = 2, 12, 64  # --quick: small sizes for tests
MEMORY_BUDGETS_GIB = (16, 80)
GROWTH_LR, QUICK_GROWTH_LR = (48, 96, 192), (12, 24, 48)
FRAMEWORKS = ('jax', 'torch_eager', 'torch_compile')


@dataclasses.dataclass(frozen=True)
class Workload:
  """name; config FILE[:ARGS] under configs/; the train step's batch and LR crop side (None: the
  config's own crop); stage 'first' | 'gan' (the config's first stage, or its first 'gan' stage) or ''
  (no train step); infer: also time one inference slice; infer_lr: its LR side (None: 320 / scale)."""

  name: str
  config: str
  batch: int = 4
  lr: int | None = 48
  stage: str = 'first'
  infer: bool = True
  infer_lr: int | None = None


WORKLOADS = (
  Workload('casr_x4', 'casrgan_x4.py', batch=2, lr=96),  # the reference's fixed 96x96 LR input (HR 384)
  Workload('casrgan_gan_x4', 'casrgan_x4.py', batch=2, lr=96, stage='gan', infer=False),
  Workload('edsr_baseline_x4', 'edsr.py:baseline'),
  Workload('edsr_x4', 'edsr.py'),
  Workload('rdn_x4', 'rdn.py', batch=2),
  Workload('drrn_x4', 'drrn.py'),
  Workload('srcnn_x4', 'srcnn.py'),
  Workload('fagan_x4', 'fagan_x4.py'),
  Workload('srdcgan_x4', 'srdcgan_x4.py', lr=None),  # its D's dense layer is sized to the config's 240x256 HR
  Workload('perceptual_x4', 'perceptual_x4.py'),
  Workload('edsr_baseline_x2_infer', 'edsr.py:baseline,scale=2', stage='', infer_lr=256),
)
BY_NAME = {w.name: w for w in WORKLOADS}


def workload(name: str) -> Workload:
  """A listed workload, or `growth_lrN`: CASR x4 pre-training at LR N, batch 1 (--growth)."""
  if name.startswith('growth_lr'):
    return Workload(name, 'casrgan_x4.py', batch=1, lr=int(name[len('growth_lr') :]), infer=False)
  return BY_NAME[name]


def config_arg(w: Workload, quick: bool) -> str:
  """`configs/FILE[:ARGS]`, with `quick` added under --quick."""
  file, _, arg = w.config.partition(':')
  if quick:
    arg = f'{arg},quick' if arg else 'quick'
  return f'configs/{file}{":" + arg if arg else ""}'


# ------------------------------------------------------------------------------------ formatting


def fmt_s(x) -> str:
  """Seconds with 3 significant-ish digits; '-' for none."""
  if x is None:
    return '-'
  x = float(x)
  return f'{x:.3f}' if x < 1 else f'{x:.2f}' if x < 100 else f'{x:.0f}'


def fmt_bytes(n) -> str:
  if n is None:
    return '-'
  if n >= GIB:
    return f'{n / GIB:.2f} GiB'
  return f'{n / MIB:.0f} MiB' if n >= 10 * MIB else f'{n / MIB:.1f} MiB'


def ratio(torch_s, jax_s) -> str:
  """torch time / JAX time to two decimals (> 1: JAX is faster); '-' when either is missing."""
  if not torch_s or not jax_s:
    return '-'
  return f'{float(torch_s) / float(jax_s):.2f}'


def one_line(text: str, limit: int = 160) -> str:
  """The last meaningful line of a child's output (its exception), fit for a table cell."""
  lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
  pick = next((ln for ln in reversed(lines) if not ln.startswith(('File ', '^', '~'))), lines[-1] if lines else '?')
  pick = pick.replace('|', '/').replace('`', "'")
  return pick if len(pick) <= limit else pick[: limit - 3] + '...'


def status(r: dict | None) -> str | None:
  """None for a measurement that ran; else its table text ('failed: reason', 'skipped (...)', 'not run')."""
  if r is None:
    return 'not run'
  if 'error' in r:
    return r['error']
  return None


def _cell(r: dict | None, key: str, fmt=fmt_s) -> str:
  s = status(r)
  return s if s is not None else fmt(r.get(key))


def _val(r: dict | None, key: str):
  return None if status(r) is not None else r.get(key)


def _first_ok(*rs) -> dict:
  return next((r for r in rs if r and 'error' not in r), {})


def train_rows(results: dict) -> list[str]:
  rows = []
  for name, res in results.items():
    t = res.get('train')
    if not t:
      continue
    j, e, c = t.get('jax'), t.get('torch_eager'), t.get('torch_compile')
    info = _first_ok(j, e, c)
    lr = 'x'.join(map(str, info.get('lr', ['?'])))
    batch = info.get('batch', '?')
    rows.append(
      '| '
      + ' | '.join(
        [
          name,
          f'`{res["config"]}`',
          info.get('stage', '?'),
          str(batch),
          lr + (f' (input {"x".join(map(str, info["input"]))})' if info.get('input') != info.get('lr') else ''),
          _cell(j, 'compile_s'),
          _cell(j, 'step_s'),
          _cell(j, 'samples_per_s', lambda x: f'{x:.2f}'),
          _cell(j, 'peak_rss', fmt_bytes),
          _cell(j, 'compiled_bytes', fmt_bytes),
          _cell(e, 'step_s'),
          _cell(e, 'peak_rss', fmt_bytes),
          _cell(c, 'compile_s'),
          _cell(c, 'step_s'),
          _cell(c, 'peak_rss', fmt_bytes),
          ratio(_val(e, 'step_s'), _val(j, 'step_s')),
          ratio(_val(c, 'step_s'), _val(j, 'step_s')),
        ]
      )
      + ' |'
    )
  return rows


TRAIN_HEADER = [
  '| workload | config | stage | batch | LR crop | JAX compile (s) | JAX step (s) | JAX samples/s | JAX peak RSS | '
  'JAX compiled step memory | torch eager step (s) | torch eager peak RSS | torch.compile first step (s) | '
  'torch.compile step (s) | torch.compile peak RSS | eager / JAX | torch.compile / JAX |',
  '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
]


def infer_rows(results: dict) -> list[str]:
  rows = []
  for name, res in results.items():
    i = res.get('infer')
    if not i:
      continue
    j, jc, e = i.get('jax'), i.get('jax_cached'), i.get('torch_eager')
    info = _first_ok(j, jc, e)
    shape = f'{info.get("lr", "?")}² -> {info.get("out", "?")}²'
    if info.get('padded') and info.get('padded') != info.get('input'):
      shape += f' (padded to {info["padded"]}²)'
    elif info.get('input') and info.get('input') != info.get('lr'):
      shape += f' (bicubic input {info["input"]}²)'
    rows.append(
      '| '
      + ' | '.join(
        [
          name,
          f'`{res["config"]}`',
          shape,
          _cell(j, 'first_call_s'),
          _cell(jc, 'first_call_s') + (' (no cache entries were written)' if jc and jc.get('note') else ''),
          _cell(j, 'steady_s'),
          _cell(j, 'peak_rss', fmt_bytes),
          _cell(j, 'compiled_bytes', fmt_bytes),
          _cell(e, 'first_call_s'),
          _cell(e, 'steady_s'),
          _cell(e, 'peak_rss', fmt_bytes),
          ratio(_val(e, 'steady_s'), _val(j, 'steady_s')),
        ]
      )
      + ' |'
    )
  return rows


INFER_HEADER = [
  '| workload | config | LR -> SR | JAX first call (s) | JAX cached first call (s) | JAX steady (s) | JAX peak RSS | '
  'JAX compiled predict memory | torch eager first call (s) | torch eager steady (s) | torch peak RSS | '
  'steady: torch / JAX |',
  '|---|---|---|---|---|---|---|---|---|---|---|---|',
]


def fit_batches(b1_bytes: int, b2_bytes: int, budgets_gib=MEMORY_BUDGETS_GIB) -> tuple[float, float, list]:
  """(fixed bytes, bytes per sample, largest batch per budget) of the line through batch 1 and 2."""
  slope = b2_bytes - b1_bytes
  base = b1_bytes - slope
  fits = []
  for g in budgets_gib:
    if slope <= 0:
      fits.append(None)
    else:
      fits.append(max(0, math.floor((g * GIB - base) / slope)))
  return base, slope, fits


def memory_rows(rows: list[dict]) -> list[str]:
  out = [
    '| stage | remat | compiled step memory, batch 1 | batch 2 | fit: fixed + per sample | '
    + ' | '.join(f'largest batch in {g} GiB' for g in MEMORY_BUDGETS_GIB)
    + ' | compile, both batches (s) |',
    '|---|---|---|---|---|' + '---|' * len(MEMORY_BUDGETS_GIB) + '---|',
  ]
  for r in rows:
    if 'error' in r:
      out.append(
        f'| {r.get("stage", "?")} | {r.get("remat", "?")} | {r["error"]} |' + ' |' * (3 + len(MEMORY_BUDGETS_GIB))
      )
      continue
    base, slope, fits = fit_batches(r['batch1'], r['batch2'])
    out.append(
      f'| {r["stage"]} | {r["remat"]} | {fmt_bytes(r["batch1"])} | {fmt_bytes(r["batch2"])} | '
      f'{base / MIB:.0f} MiB + {slope / MIB:.1f} MiB | '
      + ' | '.join('-' if f is None else str(f) for f in fits)
      + ' | '
      f'{r["compile_s"]:.0f} |'
    )
  return out


def growth_rows(growth: dict) -> list[str]:
  out = [
    '| LR crop | HR | attention windows per image | JAX compile (s) | JAX step (s) | JAX compiled step memory | '
    'JAX peak RSS | torch eager step (s) | torch eager peak RSS | eager / JAX | JAX step / smallest |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  first = None
  for lr, r in growth.items():
    j, e = r.get('jax'), r.get('torch_eager')
    info = _first_ok(j, e)
    js = _val(j, 'step_s')
    if first is None and js:
      first = js
    out.append(
      f'| {lr} | {info.get("hr", ["?"])[0]} | {info.get("windows", "?")} | {_cell(j, "compile_s")} | '
      f'{_cell(j, "step_s")} | {_cell(j, "compiled_bytes", fmt_bytes)} | {_cell(j, "peak_rss", fmt_bytes)} | '
      f'{_cell(e, "step_s")} | {_cell(e, "peak_rss", fmt_bytes)} | {ratio(_val(e, "step_s"), js)} | '
      f'{ratio(js, first)} |'
    )
  return out


def cpu_model() -> str:
  try:
    from benchmark_infer import cpu_model as read  # tools/benchmark_infer.py: /proc/cpuinfo's model name
  except ImportError:
    return platform.processor() or '?'
  return read()


def versions() -> dict:
  from importlib import metadata

  out = {'python': platform.python_version()}
  for pkg in ('jax', 'jaxlib', 'flax', 'optax', 'torch', 'numpy'):
    try:
      out[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      out[pkg] = 'not installed'
  return out


def machine() -> dict:
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count()
  return {'platform': platform.platform(), 'machine': platform.machine(), 'cpu': cpu_model(), 'cores': cores}


def make_section(report: dict) -> str:
  m, v, a = report['machine'], report['versions'], report['args']
  results = report['results']
  backend = next(
    (
      r['backend']
      for res in results.values()
      for part in (res.get('train') or {}, res.get('infer') or {})
      for r in part.values()
      if r and r.get('backend')
    ),
    'cpu',
  )
  lines = [
    BEGIN,
    f'Machine: {m["platform"]} ({m["machine"]}), {m["cpu"]}, {m["cores"]} cores; JAX backend {backend}.',
    'Versions: ' + ', '.join(f'{k} {val}' for k, val in v.items()) + '.',
    f'Command: `{report["command"]}`',
    '',
    f'Train steps: JAX compile = `jit(step).lower(...).compile()` of the whole step (forward, backward, Adam); '
    f'step times are medians of {a["steps"]} steps after {a["warmup"]} warm-up step(s), each waited for. '
    'torch.compile first step = the first step, compile included (networks compiled, Adam eager). '
    "Peak RSS: the measuring subprocess's ru_maxrss (compile included); JAX compiled step memory: "
    '`memory_analysis()` arguments + outputs + temporaries - aliased. Ratios: torch time / JAX time, '
    'above 1 JAX is faster. The PyTorch side is `tools/torch_baselines.py` (the torch mirrors, the '
    "reference's losses, Adam); PyTorch uses "
    f'{report.get("torch_threads", "?")} threads. VGG weights are random on both sides (nothing is downloaded).',
    '',
  ]
  rows = train_rows(results)
  if rows:
    lines += TRAIN_HEADER + rows + ['']
  rows = infer_rows(results)
  if rows:
    lines += [
      f'Inference of one slice ({"quick sizes" if a["quick"] else f"SR output {INFER_OUT}x{INFER_OUT}"} unless the '
      'row says otherwise): first call = trace + compile + run in a fresh process with an empty persistent '
      'compilation cache; cached first call = the same in a second fresh process reading that cache; steady = '
      f'median of {a["steps"]} further calls (host arrays in and out, as `Predictor` returns them).',
      '',
      *INFER_HEADER,
      *rows,
      '',
    ]
  if report.get('memory'):
    mem = report['memory']
    lines += [
      f'Memory of the CASR x4 steps per device, from `{mem["config"]}` at LR {mem["lr"]}x{mem["lr"]} '
      f'(HR {mem["lr"] * 4}), `scan_unroll=1` as on GPU/TPU: each step compiled from abstract inputs at batch 1 '
      'and 2 (tools/memory_plan.py), a line fitted, and the largest batch whose fitted total fits each '
      "budget. XLA:CPU's buffer assignment: GPU/TPU lay out differently, so treat these as estimates.",
      '',
      *memory_rows(mem['rows']),
      '',
    ]
  if report.get('growth'):
    lines += [
      f'Growth: CASR x4 pre-training (`{report["growth_config"]}`), batch 1, median of {a["growth_steps"]} '
      'steps after one warm-up; attention windows per image = (LR / patch_size / window_size)².',
      '',
      *growth_rows(report['growth']),
      '',
    ]
  lines.append(END)
  return '\n'.join(lines)


# ------------------------------------------------------------------------------------ children


def _load(w: Workload, quick: bool):
  """The workload's config (ConfigDict) with its LR crop set, random VGG allowed."""
  from mrisr_jax import config_base

  file, _, arg = config_arg(w, quick).partition(':')
  config = config_base.load_config(f'{REPO / file}{":" + arg if arg else ""}')
  if w.lr is not None:  # None: the config's own crop (SR-DCGAN's whole slices)
    lr = QUICK_LR if quick and not w.name.startswith('growth_lr') else w.lr
    config.data.hr_patch_size = lr * config.model.scale
  config.loss.allow_random_vgg = True
  return config


def _stage(run, which: str):
  from mrisr_jax import recipe

  plan = recipe.stage_plan(run, 1)
  if which == 'gan':
    return next(s for s in plan if s.spec.kind == 'gan')
  return plan[0]


def _peak_self() -> int:
  import resource

  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _windows(model, lr_hw) -> int | None:
  p, w = getattr(model, 'patch_size', None), getattr(model, 'window_size', None)
  if not p or not w:
    return None
  return (lr_hw[0] // p // w) * (lr_hw[1] // p // w)


def _compiled_bytes(stats: dict | None) -> int | None:
  if not stats:
    return None
  return stats['arguments'] + stats['outputs'] + stats['temporaries'] - stats['aliased']


def _configure_jax_cache() -> str:
  """The persistent compilation cache as the parent chose it in MRISR_JAX_COMPILATION_CACHE (a directory,
  or off), turned on as the library's entry points turn it on (mrisr_jax.compile_cache) where it has that."""
  import jax

  d = os.environ.get('MRISR_JAX_COMPILATION_CACHE', 'off')
  if d.strip().lower() in ('off', '0', 'false', 'no', ''):
    jax.config.update('jax_compilation_cache_dir', None)
    return 'off'
  try:
    from mrisr_jax import compile_cache
  except ImportError:
    jax.config.update('jax_compilation_cache_dir', d)
  else:
    compile_cache.enable()
  return d


def jax_train(w: Workload, a) -> dict:
  """The stage's train step built, jitted and compiled as tools/benchmark_train_step.time_step does
  (train.jit_stage_step on the mesh, the state donated), then timed step by step."""
  import jax
  import numpy as np

  _configure_jax_cache()
  from mrisr_jax import recipe, registry, sharding, spec, train

  config = _load(w, a.quick)
  batch = QUICK_BATCH if a.quick and not w.name.startswith('growth_lr') else w.batch
  config.batch_size = batch
  run = spec.resolve(config)
  stage = _stage(run, w.stage)
  d = registry.build_discriminator(run)
  g_tx, d_tx = recipe.make_optimizers(run, stage, 1)
  hr_h, hr_w = run.data.hr_patch_size
  g_model = recipe.stage_generator(run, stage)
  in_h, in_w = registry.input_size(g_model, run.lr_patch_shape)
  mesh = sharding.make_mesh(dict(run.mesh))
  rng = np.random.default_rng(0)
  data = sharding.global_batch(
    {
      'lr': rng.uniform(size=(batch, in_h, in_w, 1)).astype(np.float32),
      'hr': rng.uniform(size=(batch, hr_h, hr_w, 1)).astype(np.float32),
    },
    sharding.batch_sharding(mesh),
  )
  init = recipe.init_state_fn(run, registry.build_generator(run.model), d, g_tx, d_tx)
  _, state_sharding = train.state_layout(run, mesh, init)
  state = jax.jit(init, out_shardings=state_sharding)(jax.random.PRNGKey(0))
  vgg, vgg_params = None, None
  if recipe.needs_vgg(run, [stage]):
    vgg, vgg_params = recipe.load_perceptual(run.loss, run.model.dtype)
    vgg_params = jax.device_put(vgg_params, sharding.replicated(mesh))
  step = train.jit_stage_step(run, stage, 1, mesh, state_sharding, d, vgg).step
  t0 = time.perf_counter()
  compiled = step.lower(state, data, vgg_params).compile()
  compile_s = time.perf_counter() - t0
  stats = sharding.memory_stats(compiled)
  for _ in range(a.warmup):
    state, m = compiled(state, data, vgg_params)
    jax.block_until_ready((state, m))
  profile = os.path.join(a.profile, w.name) if a.profile else ''
  times = []
  with jax.profiler.trace(profile) if profile else contextlib.nullcontext():
    for _ in range(a.steps):
      t0 = time.perf_counter()
      state, m = compiled(state, data, vgg_params)
      jax.block_until_ready((state, m))
      times.append(time.perf_counter() - t0)
  if profile:
    print(f'[{w.name}] JAX profile of the timed steps: {profile} (tensorboard --logdir {profile})', flush=True)
  step_s = statistics.median(times)
  return {
    'stage': stage.name,
    'batch': batch,
    'lr': list(run.lr_patch_shape),
    'input': [in_h, in_w],
    'hr': [hr_h, hr_w],
    'windows': _windows(g_model, run.lr_patch_shape),
    'compile_s': compile_s,
    'step_s': step_s,
    'step_times': times,
    'samples_per_s': batch / step_s,
    'memory': stats,
    'compiled_bytes': _compiled_bytes(stats),
    'backend': f'{jax.default_backend()} ({jax.device_count()} x {jax.devices()[0].device_kind})',
    'profile': profile,
    'self_peak_rss': _peak_self(),
  }


def torch_train(w: Workload, a, compile: bool, marker: str) -> dict:
  import torch
  import torch_baselines

  from mrisr_jax import registry, spec

  threads = torch_baselines.torch_threads()
  torch.set_num_threads(threads)
  config = _load(w, a.quick)
  batch = QUICK_BATCH if a.quick and not w.name.startswith('growth_lr') else w.batch
  config.batch_size = batch
  run = spec.resolve(config)
  stage = _stage(run, w.stage)
  step = torch_baselines.TrainStep(run, stage, batch, compile=compile)
  out = {
    'stage': stage.name,
    'batch': batch,
    'lr': list(run.lr_patch_shape),
    'input': list(step.lr.shape[2:]),
    'hr': list(step.hr.shape[2:]),
    'windows': _windows(registry.build_generator(run.model), run.lr_patch_shape),
    'threads': threads,
  }
  t0 = time.perf_counter()
  step.step()
  out['first_step_s'] = time.perf_counter() - t0
  if compile:
    out['compile_s'] = out['first_step_s']
    pathlib.Path(marker).write_text('compiled')
  for _ in range(a.warmup - 1 if not compile else a.warmup):  # eager: the first step was a warm-up
    step.step()
  times = []
  for _ in range(a.steps):
    t0 = time.perf_counter()
    step.step()
    times.append(time.perf_counter() - t0)
  out.update(step_s=statistics.median(times), step_times=times, samples_per_s=batch / statistics.median(times))
  out['self_peak_rss'] = _peak_self()
  return out


def _infer_setup(w: Workload, a):
  from mrisr_jax import registry, spec

  run = spec.resolve(_load(w, a.quick))
  model = registry.build_generator(run.model)  # as infer builds it
  scale = int(model.scale)
  lr_side = (QUICK_INFER_OUT // scale) if a.quick else (w.infer_lr or INFER_OUT // scale)
  in_side = registry.input_size(model, (lr_side, lr_side))[0]
  m = max(1, int(model.size_multiple))
  return run, model, lr_side, in_side, -(-in_side // m) * m


def jax_infer(w: Workload, a) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  cache = _configure_jax_cache()
  entries_before = len(os.listdir(cache)) if cache != 'off' and os.path.isdir(cache) else 0
  from mrisr_jax import predictor as predictor_lib
  from mrisr_jax import sharding
  from mrisr_jax.predictor import Predictor

  run, model, lr_side, in_side, padded = _infer_setup(w, a)
  init_hw = (padded, padded)
  variables = jax.jit(lambda k: model.init({'params': k}, jnp.zeros((1, *init_hw, 1)), train=False))(
    jax.random.PRNGKey(0)
  )
  variables = jax.block_until_ready(variables)
  lr = np.random.default_rng(0).uniform(size=(1, lr_side, lr_side)).astype(np.float32)
  predictor = Predictor(model, variables)  # infer's defaults: whole slices (tile 0), batch by size
  t0 = time.perf_counter()
  sr = predictor(lr)
  first = time.perf_counter() - t0
  times = []
  for _ in range(a.steps):
    t0 = time.perf_counter()
    predictor(lr)
    times.append(time.perf_counter() - t0)
  peak = _peak_self()
  # the predict that Predictor jitted, compiled again for its memory analysis (a persistent-cache read)
  x = jnp.zeros((1, padded, padded, 1))
  stats = sharding.memory_stats(predictor_lib._jitted_predict().lower(predictor.variables, x, g_model=model).compile())
  return {
    'lr': lr_side,
    'input': in_side,
    'padded': padded,
    'out': int(sr.shape[-1]),
    'first_call_s': first,
    'steady_s': statistics.median(times),
    'times': times,
    'memory': stats,
    'compiled_bytes': _compiled_bytes(stats),
    'cache': cache,
    'cache_entries_before': entries_before,
    'backend': f'{jax.default_backend()} ({jax.device_count()} x {jax.devices()[0].device_kind})',
    'self_peak_rss': peak,
  }


def torch_infer(w: Workload, a) -> dict:
  import numpy as np
  import torch
  import torch_baselines

  from mrisr_jax import tiling

  threads = torch_baselines.torch_threads()
  torch.set_num_threads(threads)
  run, model, lr_side, in_side, padded = _infer_setup(w, a)
  fn = torch_baselines.predict_fn(run.model)
  lr = np.random.default_rng(0).uniform(size=(1, lr_side, lr_side)).astype(np.float32)

  def call():  # what Predictor does with the flax model: pad to the size multiple, crop, clip
    return tiling.super_resolve(fn, lr, model.scale, model.size_multiple, model.upsampled_input, tile=0, batch=0)

  t0 = time.perf_counter()
  sr = call()
  first = time.perf_counter() - t0
  times = []
  for _ in range(a.steps):
    t0 = time.perf_counter()
    call()
    times.append(time.perf_counter() - t0)
  return {
    'lr': lr_side,
    'input': in_side,
    'padded': padded,
    'out': int(sr.shape[-1]),
    'first_call_s': first,
    'steady_s': statistics.median(times),
    'times': times,
    'threads': threads,
    'self_peak_rss': _peak_self(),
  }


def jax_memory(a) -> dict:
  """CASR x4's compiled step memory at batch 1 and 2, with and without remat (tools/memory_plan.py)."""
  import memory_plan

  from mrisr_jax import config_base

  arg = 'quick' if a.quick else ''
  base = config_base.load_config(f'{REPO / "configs" / "casrgan_x4.py"}{":" + arg if arg else ""}')
  lr = 24 if a.quick else 96
  rows = []
  for kind in ('generator', 'gan'):
    name = next(n for n in base.stage_order if base.stages[n].kind == kind)
    for remat in (False, True):
      config = base.copy_and_resolve_references()
      config.data.hr_patch_size = lr * config.model.scale
      config.loss.allow_random_vgg = True
      config.model.scan_unroll = 1  # as on GPU/TPU (memory_plan does the same)
      config.model.remat = remat
      row = {'stage': name, 'remat': remat}
      try:
        fn, abstract, vgg_params, batch = memory_plan.build(config, name)
        t0 = time.perf_counter()
        for n in (1, 2):
          stats, _, _ = memory_plan.compile_stats(fn, abstract, vgg_params, batch(n))
          row[f'batch{n}'] = stats['total']
        row['compile_s'] = time.perf_counter() - t0
      except Exception as e:  # noqa: BLE001 - one row says what failed
        row['error'] = f'failed: {one_line(f"{type(e).__name__}: {e}")}'
      print(f'[memory] {row}', flush=True)
      rows.append(row)
  return {'config': f'configs/casrgan_x4.py{":" + arg if arg else ""}', 'lr': lr, 'rows': rows}


def child(a) -> None:
  w = None if a._one == 'memory' else workload(a._one)
  if a._mode == 'memory':
    out = jax_memory(a)
  elif a._mode == 'train':
    out = (
      jax_train(w, a)
      if a._framework == 'jax'
      else torch_train(w, a, a._framework == 'torch_compile', a._json + '.compiled')
    )
  elif a._framework == 'jax':
    out = jax_infer(w, a)
  else:
    out = torch_infer(w, a)
  pathlib.Path(a._json).write_text(json.dumps(out))


# ------------------------------------------------------------------------------------ parent


def run_child(
  a, name: str, framework: str, mode: str, tmp: pathlib.Path, env_extra: dict, tag: str = '', compile_timeout=None
) -> dict:
  """Runs `--_one name` in a subprocess; its JSON result plus 'peak_rss' (the child's ru_maxrss), or
  {'error': 'failed: ...'} / {'error': 'skipped (...)'}."""
  out = tmp / f'{name}_{framework}_{mode}{tag}.json'
  marker = pathlib.Path(str(out) + '.compiled')
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), '--_one', name, '--_framework', framework]
  cmd += ['--_mode', mode, '--_json', str(out), '--steps', str(a.steps), '--warmup', str(a.warmup)]
  if name.startswith('growth_lr'):
    cmd[cmd.index('--steps') + 1] = str(a.growth_steps)
    cmd[cmd.index('--warmup') + 1] = '1'
  if a.quick:
    cmd.append('--quick')
  if a.profile and framework == 'jax' and mode == 'train':
    cmd += ['--profile', str(pathlib.Path(a.profile).resolve())]
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env.update(TF_CPP_MIN_LOG_LEVEL='3', MRISR_JAX_COMPILATION_CACHE='off')
  env.update(env_extra)
  env['PYTHONPATH'] = os.pathsep.join([str(REPO), str(TOOLS), env.get('PYTHONPATH', '')]).rstrip(os.pathsep)
  log = tmp / (out.stem + '.log')
  label = f'[{name}] {framework} {mode}{tag}'
  print(f'{label} ...', flush=True)
  start = time.perf_counter()
  with open(log, 'wb') as f:
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    timed_out = False
    while True:
      pid, st, usage = os.wait4(proc.pid, os.WNOHANG)
      if pid:
        break
      if compile_timeout is not None and not marker.exists() and time.perf_counter() - start > compile_timeout:
        timed_out = True
        os.killpg(proc.pid, 9)
        _, st, usage = os.wait4(proc.pid, 0)
        break
      time.sleep(0.2)
  proc.returncode = os.waitstatus_to_exitcode(st)
  wall = time.perf_counter() - start
  text = log.read_text(errors='replace')
  if timed_out:
    r = {'error': f'skipped (compile > {compile_timeout:g} s)'}
  elif proc.returncode != 0 or not out.exists():
    r = {'error': f'failed: {one_line(text)}'}
    print(f'{label} failed (exit {proc.returncode}); the end of its output:\n' + '\n'.join(text.splitlines()[-15:]))
  else:
    r = json.loads(out.read_text())
    r['peak_rss'] = usage.ru_maxrss * 1024
  r['wall_s'] = wall
  if r.get('profile'):
    print(f'{label}: JAX profile of the timed steps in {r["profile"]} (tensorboard --logdir {r["profile"]})')
  if 'error' not in r:
    keys = [k for k in ('compile_s', 'step_s', 'first_call_s', 'steady_s') if k in r]
    print(
      f'{label}: ' + ', '.join(f'{k} {fmt_s(r[k])}' for k in keys) + f', peak RSS {fmt_bytes(r["peak_rss"])}',
      flush=True,
    )
  else:
    print(f'{label}: {r["error"]}', flush=True)
  return r


def parse(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  names = [w.name for w in WORKLOADS]
  parser.add_argument(
    '--workloads',
    nargs='+',
    default=['all'],
    help=f'workloads to run: all (default), none, or some of: {", ".join(names)}',
  )
  parser.add_argument(
    '--steps', type=int, default=5, help='timed steps (train) or calls (inference); the median is reported'
  )
  parser.add_argument('--warmup', type=int, default=1, help='untimed steps after compiling, before the timed ones')
  parser.add_argument(
    '--torch', default='eager,compile', help='PyTorch modes to run: eager,compile | eager | compile | none'
  )
  parser.add_argument(
    '--torch_compile_timeout',
    type=float,
    default=900,
    help='seconds a torch.compile first step may take before it is skipped',
  )
  parser.add_argument(
    '--compile_workloads',
    nargs='+',
    default=['all'],
    help='the workloads torch.compile is tried on (default all; a CPU compile of the large models takes minutes)',
  )
  parser.add_argument(
    '--quick', action='store_true', help='every config with its `quick` argument and small sizes (tests)'
  )
  parser.add_argument(
    '--write', default='', help='replace the speed section (<!-- speed:begin/end -->) of this markdown file'
  )
  parser.add_argument('--json', default='', help='write the raw results here')
  parser.add_argument(
    '--profile', default='', help='write a jax.profiler trace of the timed JAX train steps to DIR/WORKLOAD'
  )
  parser.add_argument(
    '--memory', action='store_true', help='CASR x4: largest batch in 16 and 80 GiB, with and without remat'
  )
  parser.add_argument(
    '--growth', action='store_true', help='CASR x4 pre-training step time and memory at LR 48, 96, 192'
  )
  parser.add_argument('--growth_steps', type=int, default=2, help='timed steps per size with --growth')
  # internal: one measurement in this process (the parent runs each in a subprocess)
  parser.add_argument('--_one', default='', help='internal: run one measurement of this workload in this process')
  parser.add_argument('--_framework', default='jax', choices=FRAMEWORKS, help='internal: the framework of --_one')
  parser.add_argument(
    '--_mode', default='train', choices=('train', 'infer', 'memory'), help='internal: what --_one measures'
  )
  parser.add_argument('--_json', default='', help='internal: where --_one writes its result')
  a = parser.parse_args(argv)
  if a.steps < 1 or a.warmup < 0 or a.growth_steps < 1:
    parser.error('--steps and --growth_steps must be >= 1, --warmup >= 0')
  modes = [m for m in a.torch.split(',') if m and m != 'none']
  if any(m not in ('eager', 'compile') for m in modes):
    parser.error(f'--torch {a.torch!r}: give eager, compile, eager,compile or none')
  a.torch_modes = modes
  if a.workloads == ['all']:
    a.workloads = names
  elif a.workloads == ['none']:
    a.workloads = []
  unknown = [n for n in a.workloads if n not in BY_NAME]
  if unknown:
    parser.error(f'unknown workload(s) {", ".join(unknown)}; known: all, none, {", ".join(names)}')
  return a


def main(argv=None):
  a = parse(argv)
  if a._one:
    return child(a)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix='mrisr_speed_'))
  argv = sys.argv[1:] if argv is None else list(argv)
  from torch_baselines import torch_threads  # light: torch is imported on use

  report = {
    'machine': machine(),
    'versions': versions(),
    'command': 'python tools/benchmark.py' + (' ' + shlex.join(argv) if argv else ''),
    'args': {k: v for k, v in vars(a).items() if not k.startswith('_')},
    'torch_threads': torch_threads(),
    'results': {},
  }
  try:
    for name in a.workloads:
      w = BY_NAME[name]
      res = report['results'][name] = {'config': config_arg(w, a.quick)}
      if w.stage:
        t = res['train'] = {'jax': run_child(a, name, 'jax', 'train', tmp, {})}
        if 'eager' in a.torch_modes:
          t['torch_eager'] = run_child(a, name, 'torch_eager', 'train', tmp, {})
        if 'compile' in a.torch_modes and ('all' in a.compile_workloads or name in a.compile_workloads):
          inductor = {'TORCHINDUCTOR_CACHE_DIR': str(tmp / f'inductor_{name}')}  # a cold compile, as JAX's
          t['torch_compile'] = run_child(
            a, name, 'torch_compile', 'train', tmp, inductor, compile_timeout=a.torch_compile_timeout
          )
      if w.infer:
        # an empty cache: the first call compiles; every compile is written (JAX reads these variables)
        cache = {
          'MRISR_JAX_COMPILATION_CACHE': str(tmp / f'xla_cache_{name}'),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '-1',
        }
        i = res['infer'] = {'jax': run_child(a, name, 'jax', 'infer', tmp, cache)}
        i['jax_cached'] = run_child(a, name, 'jax', 'infer', tmp, cache, tag='_cached')
        if i['jax_cached'].get('cache_entries_before') == 0 and 'error' not in i['jax_cached']:
          i['jax_cached']['note'] = 'the first process wrote no cache entries'
        if 'eager' in a.torch_modes:
          i['torch_eager'] = run_child(a, name, 'torch_eager', 'infer', tmp, {})
    if a.memory:
      report['memory'] = run_child(a, 'memory', 'jax', 'memory', tmp, {})
      if 'error' in report['memory']:
        report['memory'] = {'config': 'configs/casrgan_x4.py', 'lr': 96, 'rows': [report['memory']]}
    if a.growth:
      report['growth_config'] = config_arg(workload('growth_lr48'), a.quick)
      report['growth'] = {}
      for lr in QUICK_GROWTH_LR if a.quick else GROWTH_LR:
        g = report['growth'][lr] = {'jax': run_child(a, f'growth_lr{lr}', 'jax', 'train', tmp, {})}
        if 'eager' in a.torch_modes:
          g['torch_eager'] = run_child(a, f'growth_lr{lr}', 'torch_eager', 'train', tmp, {})
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  section = make_section(report)
  print(section)
  if a.json:
    pathlib.Path(a.json).write_text(json.dumps(report, indent=1, sort_keys=True))
  if a.write:
    from mrisr_jax import report as report_lib

    report_lib.replace_section(a.write, section, HEADING)
  if a.profile:
    print(f'JAX profiles of the timed train steps: {pathlib.Path(a.profile).resolve()}/WORKLOAD')


if __name__ == '__main__':
  main()
