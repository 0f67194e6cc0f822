"""Write the embedded real-MRI sample (the validation slab) as a NIfTI scan, to try infer/evaluate on.

  python tools/sample_scan.py --out runs/scan_hr.nii.gz              # the 1 mm truth (192x168x8)
  python tools/sample_scan.py --out runs/scan_lr.nii.gz --scale 4    # a 4 mm in-plane low-res scan

The slab is 8 axial slices of the MNI ICBM152 2009a T1 template (1 mm in-plane, every second
slice, so 2 mm apart), stored as (rows, columns, slices) with an affine in millimetres: columns run left -> right (+x), rows anterior -> posterior (-y), slices
inferior -> superior (+z). With --scale S the slices are reduced by S in-plane with --degradation
(default `area`, as training's LR) and the in-plane voxel size becomes S mm, so
`python -m mrisr_jax.infer` on it returns the 1 mm grid. Intensities are the sample's [0, 1]
values scaled to int16 (0..1000). See mrisr_jax/sample_data/LICENSE_MNI152.txt for the licence.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import h5py
import nibabel as nib
import numpy as np

from mrisr_jax.data import degrade, sample

SLAB = 'val/mni152_2009a_t1_slab_middle.h5'


def sample_volume(scale: int = 1, degradation=('area',)) -> nib.Nifti1Image:
  """The validation slab as a NIfTI image, optionally degraded by `scale` in-plane (along rows and/or
  columns, as the degradation reduces them: `thick:axis=1` makes thick slices along x)."""
  fy, fx = degrade.lr_factors(tuple(degradation), scale) if scale > 1 else (1, 1)
  with h5py.File(sample.SAMPLE_DIR / SLAB, 'r') as f:
    slab = np.asarray(f['reconstruction_esc'], np.float32)  # (slices, rows, cols), fastMRI single-coil key
    z = np.asarray(f.attrs['slice_z_ras'], np.float64)
  if scale > 1:  # each slice cropped to a multiple of the scale, then degraded as training does
    slab = np.stack(
      [
        degrade.make_lr(
          s[: s.shape[0] // fy * fy, : s.shape[1] // fx * fx],
          scale,
          tuple(degradation),
          rng=np.random.default_rng(i),
        )
        for i, s in enumerate(slab)
      ]
    )
  data = np.round(np.clip(np.transpose(slab, (1, 2, 0)), 0, 1) * 1000).astype(np.int16)
  affine = np.array(
    [
      [0.0, fx, 0.0, -84.0],  # column j -> x = -84 + fx*j (left -> right)
      [-fy, 0.0, 0.0, 70.0],  # row i -> y = 70 - fy*i (anterior -> posterior)
      [0.0, 0.0, z[1] - z[0], z[0] - 72.0],
      [0.0, 0.0, 0.0, 1.0],
    ]
  )
  # a voxel of the S-times coarser grid covers S fine voxels: move its centre accordingly
  affine[:3, 3] += affine[:3, :2] @ (0.5 - 0.5 / np.array([fy, fx], np.float64))
  img = nib.Nifti1Image(data, affine)
  img.set_sform(affine, code=1)
  img.set_qform(affine, code=1)
  return img


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split('\n\n')[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=__doc__.split('\n\n', 1)[1],
  )
  parser.add_argument('--out', required=True, help='output .nii or .nii.gz path')
  parser.add_argument('--scale', type=int, default=1, help='in-plane reduction factor (1: the truth)')
  parser.add_argument(
    '--degradation',
    action='append',
    default=None,
    help='a degradation step for --scale > 1, repeatable (default: area; see docs/degradations.md)',
  )
  parser.add_argument('--overwrite', action='store_true', help='replace an existing --out file')
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  if not (out.name.endswith('.nii') or out.name.endswith('.nii.gz')):
    print(f'error: {out}: the output must end in .nii or .nii.gz', file=sys.stderr)
    return 1
  if out.exists() and not args.overwrite:
    print(f'error: {out}: exists; pass --overwrite to replace it', file=sys.stderr)
    return 1
  if args.scale < 1:
    print(f'error: --scale {args.scale} must be >= 1', file=sys.stderr)
    return 1
  try:
    img = sample_volume(args.scale, tuple(args.degradation or ('area',)))
  except ValueError as e:
    print(f'error: --degradation {args.degradation}: {" ".join(str(e).split())}', file=sys.stderr)
    return 1
  out.parent.mkdir(parents=True, exist_ok=True)
  nib.save(img, str(out))
  print(f'wrote {out}: {img.shape} voxels of {tuple(float(z) for z in img.header.get_zooms())} mm')
  return 0


if __name__ == '__main__':
  sys.exit(main())
