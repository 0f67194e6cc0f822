"""Memory per device and gradient traffic of a config's train steps, for planning a large run.

  python tools/memory_plan.py --config configs/casrgan_x4.py --batch 1 2 --target 16 32 --fsdp 8

Compiles each stage kind's step (the first 'generator' stage and the first 'gan' stage) on one device
for each per-device batch in --batch, from abstract inputs (nothing runs), and prints the compiled
memory analysis (sharding.memory_report), then a linear fit in the batch evaluated at --target.
On N data-parallel devices a device holds the same state and runs the same step on its share of the
batch, so these are per-device numbers for a per-device batch. The compiled numbers are XLA:CPU's:
GPU/TPU fuse and lay out differently, so treat them as estimates (docs/scaling.md).

It also prints the parameter and gradient bytes (float32) that a step all-reduces, and with --fsdp
the per-device state bytes when the default rules shard the kernels over that many devices.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from mrisr_jax import cli, recipe, registry, sharding, spec

MIB = 2**20


def _nbytes(tree) -> int:
  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def build(config, stage_name: str):
  """(step fn, abstract state, vgg params or None, batch shapes fn) for one stage, as train.py builds them."""
  config = spec.resolve(config)
  stage = next(s for s in recipe.stage_plan(config, 1) if s.name == stage_name)
  g = recipe.stage_generator(config, stage)
  d = registry.build_discriminator(config)
  g_tx, d_tx = recipe.make_optimizers(config, stage, 1)
  abstract = jax.eval_shape(
    recipe.init_state_fn(config, registry.build_generator(config.model), d, g_tx, d_tx), jax.random.PRNGKey(0)
  )
  vgg = vgg_params = None
  if recipe.needs_vgg(config, [stage]):
    vgg, vgg_params = recipe.load_perceptual(config.loss, config.model.dtype)
  fn = recipe.stage_step(config, stage, g, d, g_tx, d_tx, vgg)
  hr_h, hr_w = config.data.hr_patch_size
  in_h, in_w = registry.input_size(g, config.lr_patch_shape)

  def batch(n):
    return {
      'lr': jax.ShapeDtypeStruct((n, in_h, in_w, config.model.in_channels), jnp.float32),
      'hr': jax.ShapeDtypeStruct((n, hr_h, hr_w, config.model.out_channels), jnp.float32),
    }

  return fn, abstract, vgg_params, batch


def compile_stats(fn, abstract, vgg_params, batch) -> tuple[dict, str, float]:
  t0 = time.perf_counter()
  # donate the state as train.py does, so outputs alias it
  compiled = jax.jit(fn, donate_argnums=0).lower(abstract, batch, vgg_params).compile()
  return sharding.memory_stats(compiled), sharding.memory_report(compiled), time.perf_counter() - t0


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='configs/casrgan_x4.py', help=cli.CONFIG_HELP)
  parser.add_argument('--batch', type=int, nargs='+', default=[1, 2], help='per-device batches to compile')
  parser.add_argument('--target', type=int, nargs='*', default=[16, 32], help='per-device batches to extrapolate to')
  parser.add_argument('--stages', nargs='+', default=['generator', 'gan'], help='stage kinds: generator, gan')
  parser.add_argument('--dtype', default='', help='override config.model.dtype (e.g. bfloat16)')
  parser.add_argument('--fsdp', type=int, default=0, help='also show per-device state bytes with this fsdp size')
  a, overrides = cli.tool_args(parser)  # --config.KEY=VALUE as the entry points take them
  config = cli.load_config(a.config, overrides, lock=False)
  config.loss.allow_random_vgg = True  # shapes only: the weights do not change memory
  config.model.scan_unroll = 1  # as on GPU/TPU (scan_unroll=0 picks 1 there)
  if a.dtype:
    config.model.dtype = a.dtype
  print(
    f'{a.config}: {config.model.name} x{config.model.scale}, HR crop {config.data.hr_patch_size}, '
    f'dtype {config.model.dtype}, jax {jax.__version__} on {jax.devices()[0].device_kind}',
    flush=True,
  )

  for kind in a.stages:
    name = next((n for n in config.stage_order if config.stages[n].kind == kind), None)
    if name is None:
      print(f'{kind}: no such stage in {a.config}')
      continue
    fn, abstract, vgg_params, batch = build(config, name)
    g_bytes, d_bytes = _nbytes(abstract.g_params), _nbytes(abstract.d_params)
    grad = g_bytes + (d_bytes if kind == 'gan' else 0)
    print(
      f'[{name}] G {g_bytes // 4:,} params ({g_bytes / MIB:.1f} MiB), D {d_bytes // 4:,} params '
      f'({d_bytes / MIB:.1f} MiB); state {_nbytes(abstract) / MIB:.1f} MiB; gradients all-reduced per step '
      f'{grad / MIB:.1f} MiB (float32)',
      flush=True,
    )
    if a.fsdp > 1:
      specs = sharding.partition_specs(abstract, _ShapeMesh(data=1, fsdp=a.fsdp))
      specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
      per_device = sum(
        math.prod(x.shape) * np.dtype(x.dtype).itemsize / (a.fsdp if 'fsdp' in tuple(s) else 1)
        for x, s in zip(jax.tree.leaves(abstract), specs)
      )
      print(
        f'[{name}] fsdp={a.fsdp}: state per device {per_device / MIB:.1f} MiB '
        f'(replicated: {_nbytes(abstract) / MIB:.1f} MiB)'
      )
    points = []
    for n in a.batch:
      stats, report, secs = compile_stats(fn, abstract, vgg_params, batch(n))
      print(f'[{name}] per-device batch {n}: {report} (compiled in {secs:.0f} s)', flush=True)
      if stats:
        points.append((n, stats['total'], stats['temporaries']))
    if len(points) >= 2:
      (b0, t0, _), (b1, t1, _) = points[0], points[-1]
      slope = (t1 - t0) / (b1 - b0)
      base = t0 - slope * b0
      fit = ', '.join(f'batch {n}: {(base + slope * n) / 2**30:.2f} GiB' for n in a.target)
      print(f'[{name}] linear fit: {base / MIB:.0f} MiB + {slope / MIB:.1f} MiB per sample -> {fit}', flush=True)


class _ShapeMesh:
  """Axis sizes for the sharding rules without devices."""

  def __init__(self, **shape):
    self.shape, self.axis_names = shape, tuple(shape)


if __name__ == '__main__':
  cli.guard(main)  # a user error: one line, exit 2
