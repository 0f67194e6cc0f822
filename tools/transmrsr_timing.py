"""TransMRSR's parameter counts and train-step compile / step times, for docs/models.md.

  python tools/transmrsr_timing.py                        # the full networks (256 px), batch 2
  python tools/transmrsr_timing.py --quick --batch 8      # configs/transmrsr.py:quick's networks

Parameters come from `jax.eval_shape` (no weights). The two timed steps are the ones training runs:
stage 1's StyleSwin iteration (`prior_steps.prior_step`: D, lazy R1 on this step, G, EMA) and stage 2's
SR step (`recipe.stage_step` of the `sr` stage: L1 + 0.5 (content + style) on random VGG19 features,
Adam), each jitted with the training compile options and compiled once (`lower().compile()`), then
the mean of --steps executions after one warm-up. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs.transmrsr import get_config  # noqa: E402
from mrisr_jax import cli, compile_options, prior_steps, prior_train, recipe, spec  # noqa: E402
from mrisr_jax.train_state import TrainState  # noqa: E402


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _time(fn, args, steps: int) -> tuple[float, float]:
  t = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t
  out = compiled(*args)
  jax.block_until_ready(out)
  t = time.perf_counter()
  for _ in range(steps):
    out = compiled(*args)
  jax.block_until_ready(out)
  return compile_s, (time.perf_counter() - t) / steps


def prior_row(config, batch: int, steps: int) -> dict:
  p = config.prior
  g, d, g_tx, d_tx, init = prior_train.state_fns(p)
  state = jax.jit(init)(jax.random.PRNGKey(0))
  hp = prior_steps.PriorHparams(style_dim=p.style_dim, r1_gamma=p.r1_gamma, r1_every=1, d_clip=p.d_clip)
  fn = compile_options.jit(functools.partial(prior_steps.prior_step, g_model=g, d_model=d, g_tx=g_tx, d_tx=d_tx, hp=hp))
  real = jnp.zeros((batch, p.size, p.size, p.channels))
  compile_s, step_s = _time(fn, (state, {'hr': real}), steps)
  return {
    'what': f'stage 1 prior step (G + D + R1 + EMA), {p.size}x{p.size}, batch {batch}',
    'params': f'G {_count(state.g_params):,} (mapping {_count(state.g_params["style"]):,}), D {_count(state.d_params):,}',
    'compile': compile_s,
    'step': step_s,
  }


def sr_row(config, batch: int, steps: int) -> dict:
  run = spec.resolve(config)
  stages = recipe.stage_plan(run, 1)
  g = recipe.stage_generator(run, stages[0])
  g_tx, d_tx = recipe.make_optimizers(run, stages[0], 1)
  vgg, vgg_params = recipe.load_perceptual(run.loss, run.model.dtype)
  variables = jax.jit(lambda r: g.init({'params': r}, jnp.zeros((1, g.size, g.size, 1))))(jax.random.PRNGKey(0))
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    g_params=variables['params'],
    g_batch_stats=variables.get('batch_stats', {}),
    d_params={},
    d_batch_stats={},
    g_opt_state=g_tx.init(variables['params']),
    d_opt_state=(),
    rng=jax.random.PRNGKey(1),
  )
  fn = compile_options.jit(recipe.stage_step(run, stages[0], g, None, g_tx, d_tx, vgg))
  x = jnp.zeros((batch, g.size, g.size, 1))
  compile_s, step_s = _time(fn, (state, {'lr': x, 'hr': x}, vgg_params), steps)
  return {
    'what': f'stage 2 SR step (L1 + 0.5 (content + style), Adam), {g.size}x{g.size}, batch {batch}',
    'params': f'{_count(variables["params"]):,}',
    'compile': compile_s,
    'step': step_s,
  }


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--quick', action='store_true', help='the quick config (64 px, small channels)')
  ap.add_argument('--batch', type=int, default=2)
  ap.add_argument('--steps', type=int, default=2, help='timed executions after one warm-up')
  args = ap.parse_args(argv)
  config = get_config('quick' if args.quick else None)
  config.loss.allow_random_vgg = True  # timing only: random VGG19 features cost what ImageNet ones do
  rows = [prior_row(config, args.batch, args.steps), sr_row(config, args.batch, args.steps)]
  print(f'Machine: {platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s); jax {jax.__version__}')
  print(f'Command: python tools/transmrsr_timing.py {" ".join(argv or sys.argv[1:])}'.rstrip())
  print()
  print('| step | parameters | compile (s) | step (s) |')
  print('|---|---|---|---|')
  for r in rows:
    print(f'| {r["what"]} | {r["params"]} | {r["compile"]:.1f} | {r["step"]:.2f} |')
  return 0


if __name__ == '__main__':
  sys.exit(cli.guard(main, compile_cache=False))
