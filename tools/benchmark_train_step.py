"""Compile time and step time of a config's train steps, with a baseline in the same run.

  python tools/benchmark_train_step.py --config configs/casrgan_x4.py --batch 16 --steps 3 \
      --write docs/benchmarks.md

For the generator (L1) step and, with --gan, the GAN step, it times `jit(...).lower().compile()`
and the mean of --steps executed steps, once with the AFEBs under `nn.scan` and once fully unrolled (the
baseline), and reports the ratios.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from mrisr_jax import cli, config_base, recipe, registry, report, sharding, spec

BEGIN, END = '<!-- train-step:begin -->', '<!-- train-step:end -->'


load_config = config_base.load_config


def time_step(config, stage_name: str, batch: int, n_steps: int, unroll: int | None) -> dict:
  """Compile time and mean step time of one stage's train step (unroll: CASR scan_unroll, None = as configured)."""
  config = config.copy_and_resolve_references()
  if unroll is not None:
    config.model.scan_unroll = unroll
  config.loss.allow_random_vgg = True
  config.batch_size = batch
  from mrisr_jax import train  # imports clu and TensorFlow: only once the config has loaded

  run = spec.resolve(config)
  stage = next(s for s in recipe.stage_plan(run, 1) if s.name == stage_name)
  d = registry.build_discriminator(run)
  g_tx, d_tx = recipe.make_optimizers(run, stage, 1)
  hr_h, hr_w = run.data.hr_patch_size
  in_h, in_w = registry.input_size(recipe.stage_generator(run, stage), run.lr_patch_shape)
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
  # the step exactly as training jits it: same shardings, same donation
  step = train.jit_stage_step(run, stage, 1, mesh, state_sharding, d, vgg).step
  args = (state, data, vgg_params)
  t0 = time.perf_counter()
  compiled = step.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  state, m = compiled(*args)  # warm-up; with n_steps=0 it is the one timed step
  jax.block_until_ready(m)
  if n_steps == 0:
    return {'compile_s': compile_s, 'step_s': time.perf_counter() - t0}
  t0 = time.perf_counter()
  for _ in range(n_steps):
    state, m = compiled(state, *args[1:])
  jax.block_until_ready(m)
  return {'compile_s': compile_s, 'step_s': (time.perf_counter() - t0) / n_steps}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='configs/casrgan_x4.py', help=cli.CONFIG_HELP)
  parser.add_argument('--batch', type=int, default=16, help='global batch (HR crops of config.data.hr_patch_size)')
  parser.add_argument('--steps', type=int, default=3, help='timed steps after one warm-up step')
  parser.add_argument('--gan', action='store_true', help='also time the GAN step (G + D + VGG)')
  parser.add_argument('--write', default='', help='replace the train-step section of this markdown file')
  a, overrides = cli.tool_args(parser)  # --config.KEY=VALUE as the entry points take them
  config = cli.load_config(a.config, overrides, lock=False)
  unrolls = [('nn.scan (scan_unroll=1)', 1), (f'unrolled ({config.model.depth} AFEBs)', config.model.depth)]
  stages = ['pretrain'] + (['gan'] if a.gan else [])
  rows = []
  for stage in stages:
    results = {label: time_step(config, stage, a.batch, a.steps, u) for label, u in unrolls}
    (l0, r0), (l1, r1) = results.items()
    rows.append(
      f'| {stage} | {l0} | {r0["compile_s"]:.1f} | {r0["step_s"]:.2f} | {l1} | {r1["compile_s"]:.1f} | '
      f'{r1["step_s"]:.2f} | {r0["compile_s"] / r1["compile_s"]:.2f} | {r0["step_s"] / r1["step_s"]:.2f} |'
    )
    print(rows[-1], flush=True)
  n_params = sum(
    x.size
    for x in jax.tree.leaves(
      jax.eval_shape(
        lambda: registry.build_generator(config.model).init(jax.random.PRNGKey(0), jnp.zeros((1, 24, 24, 1)))
      )['params']
    )
  )
  section = '\n'.join(
    [
      BEGIN,
      f'Config `{a.config}` ({config.model.name} x{config.model.scale}, {n_params:,} generator parameters), '
      f'global batch {a.batch}, HR crop {config.data.hr_patch_size}, float32.',
      f'Machine: {platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind} '
      f'({jax.default_backend()}), {len(__import__("os").sched_getaffinity(0))} cores; jax {jax.__version__}, '
      f'flax {__import__("flax").__version__}, Python {platform.python_version()}.',
      f'Command: `python tools/benchmark_train_step.py --config {a.config} --batch {a.batch} --steps {a.steps}'
      f'{" --gan" if a.gan else ""} --write {a.write or "FILE"}`',
      '',
      '| step | variant | compile (s) | step (s) | baseline | compile (s) | step (s) | compile ratio | step ratio |',
      '|---|---|---|---|---|---|---|---|---|',
      *rows,
      END,
    ]
  )
  print(section)
  if a.write:
    report.replace_section(a.write, section, '## Train step: compile and step time')


if __name__ == '__main__':
  cli.guard(main, compile_cache=False)  # compile times are what it measures; a user error: one line, exit 2
