"""How faithful `infer` is to a NIfTI's intensities: its output against the bicubic-upsampled input.

  python tools/intensity_check.py --input SCAN.nii[.gz] --output SR.nii.gz [--slice_axis 2]

SR.nii.gz is what `python -m mrisr_jax.infer` wrote for SCAN (in-plane, every plane across
--slice_axis). Prints min, max and the 99.9th percentile of both and their relative difference;
docs/reliability.md records the figures.
"""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np

from mrisr_jax.data.degrade import bicubic_resize


def bicubic_volume(x: np.ndarray, out_shape: tuple[int, ...], slice_axis: int) -> np.ndarray:
  planes = np.moveaxis(x, slice_axis, 0).astype(np.float32)
  target = np.moveaxis(np.empty(out_shape, np.uint8), slice_axis, 0).shape
  return bicubic_resize(planes, target[1], target[2])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--input', required=True)
  parser.add_argument('--output', required=True)
  parser.add_argument('--slice_axis', type=int, default=2)
  args = parser.parse_args(argv)
  x = np.asarray(nib.load(args.input).get_fdata(), np.float32)
  sr = np.asarray(nib.load(args.output).get_fdata(), np.float32)
  sr_planes = np.moveaxis(sr, args.slice_axis, 0)
  bic = bicubic_volume(x, sr.shape, args.slice_axis)
  p_sr, p_bic = np.percentile(sr_planes, 99.9), np.percentile(bic, 99.9)
  print(f'input   min {x.min():.6g} max {x.max():.6g} p99.5 {np.percentile(x, 99.5):.6g}')
  print(f'bicubic min {bic.min():.6g} max {bic.max():.6g} p99.9 {p_bic:.6g}')
  print(f'infer   min {sr.min():.6g} max {sr.max():.6g} p99.9 {p_sr:.6g}')
  print(f'p99.9 infer/bicubic - 1 = {p_sr / p_bic - 1:+.2%}; max {sr.max() / bic.max() - 1:+.2%}')


if __name__ == '__main__':
  main()
