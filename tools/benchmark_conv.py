"""One 3x3 convolution, forward and both gradients, in XLA and in PyTorch: where a CPU train step's time goes.

  python tools/benchmark_conv.py --write docs/benchmarks.md

For each shape (batch, side, in -> out channels) it times, in one process, the median of --repeats calls of:
the forward convolution; the input gradient; the weight gradient as XLA differentiates it (without and
with mrisr_jax.compile_options) and as mrisr_jax.models.conv computes it on CPU; and PyTorch's
`conv2d`, `conv2d_input` and `conv2d_weight`. The ratio is PyTorch's time over ours (> 1: ours faster).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import numpy as np

from mrisr_jax import cli, compile_options, report
from mrisr_jax.models import conv

BEGIN, END = '<!-- conv:begin -->', '<!-- conv:end -->'
# CASR's RDB (224 -> 32), EDSR's body (64 -> 64), the x4 upsampler (64 -> 256), a tail (64 -> 1)
SHAPES = ('2,96,224,32', '2,96,128,32', '4,48,64,64', '4,96,64,256', '4,192,64,1')


def median_ms(fn, repeats: int) -> float:
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def measure(shape: str, repeats: int) -> dict:
  import torch
  import torch.nn.grad as torch_grad

  b, side, cin, cout = (int(v) for v in shape.split(','))
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(b, side, side, cin)).astype(np.float32)
  w = (0.05 * rng.normal(size=(3, 3, cin, cout))).astype(np.float32)
  dy = rng.uniform(size=(b, side, side, cout)).astype(np.float32)
  jx, jw, jdy = (jax.device_put(v) for v in (x, w, dy))
  pad = (1, 1)
  fast = compile_options.jit
  forward = fast(lambda a, k: conv.plain_conv(a, k, pad))
  input_grad = fast(lambda a, k, g: jax.vjp(lambda v: conv.plain_conv(v, k, pad), a)[1](g)[0])
  xla_grad = lambda a, g: conv.weight_grad_autodiff(a, g, w.shape, pad)  # noqa: E731
  xla_default, xla_options = jax.jit(xla_grad), fast(xla_grad)
  ours_cpu = fast(lambda a, g: conv.weight_grad_cpu(a, g, w.shape, pad))
  ours = {
    'forward': median_ms(lambda: forward(jx, jw), repeats),
    'input grad': median_ms(lambda: input_grad(jx, jw, jdy), repeats),
    'weight grad, XLA default': median_ms(lambda: xla_default(jx, jdy), repeats),
    'weight grad, XLA + options': median_ms(lambda: xla_options(jx, jdy), repeats),
    'weight grad, ours (CPU)': median_ms(lambda: ours_cpu(jx, jdy), repeats),
  }
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
  tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
  tdy = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous()
  theirs = {
    'forward': median_ms(lambda: torch.nn.functional.conv2d(tx, tw, padding=1), repeats),
    'input grad': median_ms(lambda: torch_grad.conv2d_input(tx.shape, tw, tdy, padding=1), repeats),
    'weight grad': median_ms(lambda: torch_grad.conv2d_weight(tx, tw.shape, tdy, padding=1), repeats),
  }
  return {'shape': shape, 'ours': ours, 'torch': theirs}


def table(results: list[dict]) -> list[str]:
  lines = [
    '| batch x side, in -> out | forward: XLA / torch (ms) | input grad: XLA / torch | weight grad: XLA default '
    '/ XLA + options / ours / torch | ratio torch / ours: forward, input grad, weight grad |',
    '|---|---|---|---|---|',
  ]
  for r in results:
    b, side, cin, cout = r['shape'].split(',')
    o, t = r['ours'], r['torch']
    lines.append(
      f'| {b} x {side}x{side}, {cin} -> {cout} | {o["forward"]:.1f} / {t["forward"]:.1f} | '
      f'{o["input grad"]:.1f} / {t["input grad"]:.1f} | {o["weight grad, XLA default"]:.1f} / '
      f'{o["weight grad, XLA + options"]:.1f} / {o["weight grad, ours (CPU)"]:.1f} / {t["weight grad"]:.1f} | '
      f'{t["forward"] / o["forward"]:.2f}, {t["input grad"] / o["input grad"]:.2f}, '
      f'{t["weight grad"] / o["weight grad, ours (CPU)"]:.2f} |'
    )
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--shapes', nargs='+', default=list(SHAPES), help='batch,side,in,out')
  parser.add_argument('--repeats', type=int, default=9)
  parser.add_argument('--write', default='', help='replace the conv section of this markdown file')
  a = parser.parse_args()
  import torch

  results = [measure(s, a.repeats) for s in a.shapes]
  for r in results:
    print(r, flush=True)
  section = '\n'.join(
    [
      BEGIN,
      f'Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; jax {jax.__version__}, '
      f'torch {torch.__version__}, Python {platform.python_version()}. float32, 3x3, padding 1, median of '
      f'{a.repeats} calls. XLA options: `{compile_options.CPU_OPTIONS}`.',
      f'Command: `python tools/benchmark_conv.py --repeats {a.repeats} --write {a.write or "FILE"}`',
      '',
      *table(results),
      END,
    ]
  )
  print(section)
  if a.write:
    report.replace_section(a.write, section, '## Where the CPU time went: one convolution')


if __name__ == '__main__':
  cli.guard(main, compile_cache=False)
