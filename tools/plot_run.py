#!/usr/bin/env python
"""Plots a training run's curves from the TensorBoard event files in its workdir.

Panels, side by side (a panel whose scalars are absent is left out):
  1. training losses vs step (train/* except train/lr_* and gradient norms; log y if all > 0);
  2. learning rates vs step (train/lr_*; log y);
  3. validation PSNR of the model and of bicubic vs step (val/model_psnr, val/bicubic_psnr; dB).
A step written twice (a resumed run) shows the value written last.

Example:
  python tools/plot_run.py --workdir runs/casr_x4            # -> runs/casr_x4/report/curves.png
  python tools/plot_run.py --workdir runs/casr_x4 --out /tmp/casr_x4.png
"""

from __future__ import annotations

import argparse
import sys

from mrisr_jax.run_curves import RunCurvesError, plot_run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    description=__doc__.split('\n\n', 1)[0],
    epilog=__doc__.split('\n\n', 1)[1],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    '--workdir',
    required=True,
    help='the run folder train.py wrote to; every events.out.tfevents.* file in it and its subfolders is read',
  )
  parser.add_argument(
    '--out', default=None, help='where to write the PNG (its folder is created); default: WORKDIR/report/curves.png'
  )
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    path = plot_run(args.workdir, args.out)
  except RunCurvesError as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    return 1
  print(path)
  return 0


if __name__ == '__main__':
  sys.exit(main())
