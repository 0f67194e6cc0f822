#!/usr/bin/env python
"""Builds mrisr_jax/sample_data/ (real MRI in the fastMRI HDF5 layout) from the MNI ICBM152 template.

Source: the MNI ICBM152 2009a symmetric T1 template (1 mm, 197 x 233 x 189, uint8) that the
`nilearn` wheel on PyPI carries as
  nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz
nilearn itself is never imported: the NIfTI is read straight out of the wheel (a zip).

Steps (deterministic):
  1. reorient to RAS (nibabel.as_closest_canonical); intensities / 255 -> float32 in [0, 1];
  2. axial slice z (RAS voxel index) -> image rows = anterior -> posterior (y descending),
     columns = x ascending (subject left -> right, neurological view), cropped to a fixed
     192 x 168 (H x W) window centred on the head (every dimension divisible by 2, 3, 4, 8);
  3. three disjoint axial slabs, every 2nd slice, with gaps of >= 5 unused slices between
     them: inferior -> train, middle -> val, superior -> train;
  4. per slab one HDF5 file in fastMRI's single-coil layout (mrisr_jax.data.fastmri_files.write_volume),
     which fastMRI's own SliceDataset(challenge='singlecoil') reads:
       kspace             complex64 (S, H, W), single coil:
                          kspace = fftshift(fft2(ifftshift(img), norm='ortho'))   (fastmri.fft2c)
                          so img = |fftshift(ifft2(ifftshift(kspace), norm='ortho'))| (fastmri.ifft2c)
       reconstruction_esc float32 (S, H, W), the image (the single-coil challenge's target key)
       ismrmrd_header     ISMRMRD XML: encoded and recon matrix (x, y, z) = (H, W, 1), 1 mm voxels,
                          kspace_encoding_step_1 center W // 2, maximum W - 1 (fully sampled:
                          fastMRI's padding_left 0, padding_right W)
       attrs: max (recon volume max), norm (its L2 norm), acquisition 'AXT1',
              patient_id 'mni152_2009a', plus provenance (source file, z indices, crop box).
     gzip level 9, one chunk per slice, no timestamps -> byte-identical reruns.

Usage:
  python tools/make_sample_data.py                 # pip download --no-deps nilearn into a temp dir
  python tools/make_sample_data.py --wheel nilearn-0.14.1-py3-none-any.whl
  python tools/make_sample_data.py --nifti mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz
"""

from __future__ import annotations

import argparse
import hashlib
import gzip
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from mrisr_jax.data import fastmri_files  # noqa: E402
from mrisr_jax.data.fastmri import fft2c, ifft2c  # noqa: E402

DEFAULT_OUT = REPO / 'mrisr_jax' / 'sample_data'
NIFTI_NAME = 'mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz'
NIFTI_IN_WHEEL = 'nilearn/datasets/data/' + NIFTI_NAME
EXPECTED_SHAPE = (197, 233, 189)

CROP_H, CROP_W = 192, 168  # rows (A->P) x columns (L->R)
CENTRE_Y, CENTRE_X = 117, 98  # RAS voxel centre of the head (y, x) in the axial plane
SLICE_STEP = 2
# (split, file stem, first z, last z inclusive): slabs with gaps of >= 5 slices between them.
SLABS = (
  ('train', 'mni152_2009a_t1_slab_inferior', 40, 74),
  ('val', 'mni152_2009a_t1_slab_middle', 84, 98),
  ('train', 'mni152_2009a_t1_slab_superior', 104, 138),
)
MAX_TOTAL_BYTES = 10 * 1024 * 1024


def fetch_wheel(tmpdir: pathlib.Path) -> pathlib.Path:
  cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:', 'nilearn', '-d', str(tmpdir)]
  print('running:', ' '.join(cmd), flush=True)
  subprocess.run(cmd, check=True)
  wheels = sorted(tmpdir.glob('nilearn-*.whl'))
  if not wheels:
    raise SystemExit(f'{tmpdir}: pip download produced no nilearn wheel')
  return wheels[-1]


def load_template(nifti_bytes: bytes) -> np.ndarray:
  """RAS-oriented uint8 volume (x, y, z)."""
  if nifti_bytes[:2] == b'\x1f\x8b':
    nifti_bytes = gzip.decompress(nifti_bytes)
  img = nib.Nifti1Image.from_bytes(nifti_bytes)
  img = nib.as_closest_canonical(img)
  data = np.asarray(img.dataobj)
  if data.shape != EXPECTED_SHAPE:
    raise SystemExit(f'{NIFTI_NAME}: shape {data.shape}, expected {EXPECTED_SHAPE}')
  if nib.aff2axcodes(img.affine) != ('R', 'A', 'S'):
    raise SystemExit(f'{NIFTI_NAME}: not RAS after as_closest_canonical')
  return data


def axial_slice(vol: np.ndarray, z: int) -> np.ndarray:
  """(H, W) = (A->P rows, L->R columns) crop of RAS axial slice z, float32 in [0, 1]."""
  y0, x0 = CENTRE_Y - CROP_H // 2, CENTRE_X - CROP_W // 2
  assert 0 <= y0 and y0 + CROP_H <= vol.shape[1] and 0 <= x0 and x0 + CROP_W <= vol.shape[0]
  sl = vol[x0 : x0 + CROP_W, y0 : y0 + CROP_H, z]  # (x, y)
  img = np.flipud(sl.T)  # rows: y descending = anterior first
  return (img.astype(np.float64) / 255.0).astype(np.float32)


def write_slab(path: pathlib.Path, recon: np.ndarray, zs: list[int], source_name: str) -> None:
  """One slab in fastMRI's single-coil layout (mrisr_jax.data.fastmri_files.write_volume)."""
  kspace = fft2c(recon.astype(np.float64)).astype(np.complex64)
  check = np.abs(ifft2c(kspace.astype(np.complex128)))
  err = float(np.max(np.abs(check - recon)))
  if err > 1e-5:
    raise SystemExit(f'{path}: kspace round trip error {err:g} > 1e-5')
  attrs = {
    'acquisition': 'AXT1',
    'patient_id': 'mni152_2009a',
    'source': f'MNI ICBM152 2009a T1 template ({source_name}), see LICENSE_MNI152.txt',
    'slice_z_ras': np.asarray(zs, dtype=np.int32),
    'crop_yx_ras': np.asarray([CENTRE_Y - CROP_H // 2, CENTRE_X - CROP_W // 2, CROP_H, CROP_W], dtype=np.int32),
    'orientation': 'rows anterior->posterior, columns subject left->right',
    'kspace_convention': (
      "fastmri.fft2c: fftshift(fft2(ifftshift(img), norm='ortho')); img = |fastmri.ifft2c(kspace)|"
    ),
    'max_roundtrip_error': err,
  }
  # 1 mm voxels in every direction (rows, columns, slice thickness); max and norm of the recon.
  fastmri_files.write_volume(
    path, kspace=kspace, target=recon, challenge='singlecoil', attrs=attrs, voxel_mm=(1.0, 1.0, 1.0), gzip=9
  )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  group = parser.add_mutually_exclusive_group()
  group.add_argument('--wheel', type=pathlib.Path, help='a downloaded nilearn wheel')
  group.add_argument('--nifti', type=pathlib.Path, help=f'the {NIFTI_NAME} file itself')
  parser.add_argument('--out', type=pathlib.Path, default=DEFAULT_OUT)
  args = parser.parse_args(argv)

  with tempfile.TemporaryDirectory() as tmp:
    if args.nifti:
      nifti_bytes = args.nifti.read_bytes()
      origin = str(args.nifti)
    else:
      wheel = args.wheel or fetch_wheel(pathlib.Path(tmp))
      with zipfile.ZipFile(wheel) as zf:
        nifti_bytes = zf.read(NIFTI_IN_WHEEL)
      origin = f'{pathlib.Path(wheel).name}:{NIFTI_IN_WHEEL}'
  print(f'template: {origin}\n  sha256={hashlib.sha256(nifti_bytes).hexdigest()}')
  vol = load_template(nifti_bytes)

  out: pathlib.Path = args.out
  for split in ('train', 'val'):
    if (out / split).exists():
      shutil.rmtree(out / split)
  total = 0
  rows = []
  for split, stem, z0, z1 in SLABS:
    zs = list(range(z0, z1 + 1, SLICE_STEP))
    recon = np.stack([axial_slice(vol, z) for z in zs])
    path = out / split / f'{stem}.h5'
    write_slab(path, recon, zs, NIFTI_NAME)
    size = path.stat().st_size
    total += size
    rows.append((path.relative_to(out), recon.shape, zs, size))
  # Slab disjointness, including immediate neighbours.
  taken = {split: set() for split, *_ in SLABS}
  for split, _, z0, z1 in SLABS:
    taken[split].update(range(z0 - 1, z1 + 2))
  assert not (taken['train'] & taken['val']), 'train/val slabs touch'
  for rel, shape, zs, size in rows:
    print(
      f'{rel}: reconstruction_esc {shape} float32 + kspace complex64 + ismrmrd_header, z={zs[0]}..{zs[-1]} step {SLICE_STEP}'
      f' ({len(zs)} slices), {size} bytes'
    )
  print(f'total {total} bytes in {out}')
  if total > MAX_TOTAL_BYTES:
    raise SystemExit(f'{out}: sample data is {total} bytes > {MAX_TOTAL_BYTES}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
