"""The training/validation pipeline over every source and degradation, chosen from config.data."""

from __future__ import annotations

import pathlib

import nibabel as nib
import numpy as np
import pytest

from mrisr_jax.data import degrade, fastmri_files, images, pipeline, splits
from mrisr_jax.data.errors import DataError

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _fresh_cache():
  yield


def cfg(root, **kw):
  base = dict(
    root=str(root),
    train_split='train',
    val_split='val',
    hr_patch_size=8,
    flips=False,
    num_workers=0,
    prefetch_buffer=0,
    degradation=('area',),
  )
  base.update(kw)
  return base


def write_h5(path: pathlib.Path, image: np.ndarray) -> pathlib.Path:
  """A single-coil volume in fastMRI's layout (kspace, reconstruction_esc = image, ismrmrd_header)."""
  return fastmri_files.write_volume(path, target=image.astype(np.float32), challenge='singlecoil')


def write_nifti(path: pathlib.Path, volume: np.ndarray) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(volume.astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0])), str(path))
  return path


def batches(config, n=2, scale=2, batch=4, **kw):
  it = iter(
    pipeline.make_train_dataset(
      config, scale=scale, global_batch_size=batch, seed=3, process_index=0, process_count=1, **kw
    )[0]
  )
  return [next(it) for _ in range(n)]


def locate(patch: np.ndarray, image: np.ndarray) -> tuple[int, int]:
  """Where `patch` sits in `image` (exact match)."""
  ph, pw = patch.shape
  for y in range(image.shape[0] - ph + 1):
    for x in range(image.shape[1] - pw + 1):
      if np.array_equal(image[y : y + ph, x : x + pw], patch):
        return y, x
  raise AssertionError('patch not found in the image')


def test_nifti_volumes_train_and_validate(tmp_path):
  rng = np.random.default_rng(0)
  for name in ('a', 'b'):
    write_nifti(tmp_path / 'train' / f'{name}.nii', rng.random((12, 10, 4)) + 0.5)
  write_nifti(tmp_path / 'val' / 'v.nii.gz', rng.random((12, 10, 3)) + 0.5)
  config = cfg(tmp_path, min_slice_foreground=0.0)
  b = batches(config)[0]
  assert b['hr'].shape == (4, 8, 8, 1) and b['lr'].shape == (4, 4, 4, 1)
  np.testing.assert_allclose(b['lr'][..., 0], degrade.area_downsample(b['hr'][..., 0], 2), atol=1e-6)
  assert pipeline.num_train_slices(config) == 8
  (val,) = pipeline.load_validation_volumes(config, scale=2)
  assert val['name'] == 'v' and val['hr'].shape == (3, 12, 10) and val['lr'].shape == (3, 6, 5)
  assert val['metadata']['voxel_size'] == pytest.approx((1.0, 1.0, 2.0))


def test_paired_lr_files_are_cropped_at_the_matching_place(tmp_path):
  rng = np.random.default_rng(1)
  hr_dir, lr_dir = tmp_path / 'train' / 'HR', tmp_path / 'train' / 'LR' / 'x2'
  lr_dir.mkdir(parents=True)
  hr_dir.mkdir(parents=True)
  for k in range(3):
    hr = rng.random((16, 20))
    images.write_grey(hr_dir / f'im{k}.png', hr)
    # An LR that is NOT the area of the HR (its transpose-flip), so only the files can give it.
    lr = rng.random((8, 10))
    images.write_grey(lr_dir / f'im{k}x2.png', lr)
  source, _ = splits.make_source(cfg(tmp_path), 'train', 2)
  assert source.has_lr
  for b in batches(cfg(tmp_path, flips=True), n=3):
    for hr, lr in zip(b['hr'][..., 0], b['lr'][..., 0]):
      found = False
      for v in range(3):
        full = source[v]
        for flip in (lambda a: a, np.fliplr, np.flipud, lambda a: a[::-1, ::-1]):
          img = flip(full['image'])
          try:
            y, x = locate(hr, img)
          except AssertionError:
            continue
          if y % 2 or x % 2:
            continue
          np.testing.assert_array_equal(lr, flip(full['lr'])[y // 2 : y // 2 + 4, x // 2 : x // 2 + 4])
          found = True
          break
        if found:
          break
      assert found


def test_kspace_truncation_degrades_the_whole_slice_then_crops(tmp_path):
  rng = np.random.default_rng(2)
  image = rng.random((2, 16, 24)).astype(np.float32)
  write_h5(tmp_path / 'train' / 'k.h5', image)
  config = cfg(tmp_path, degradation=('kspace',))
  for b in batches(config, n=2):
    for hr, lr in zip(b['hr'][..., 0], b['lr'][..., 0]):
      k = next(
        k
        for k in range(2)
        if any(
          np.array_equal(image[k, y : y + 8, x : x + 8] / image.max(), hr)
          for y in range(0, 9, 2)
          for x in range(0, 17, 2)
        )
      )
      full = image[k] / image.max()
      y, x = locate(hr, full)
      assert y % 2 == 0 and x % 2 == 0
      lr_full = degrade.make_lr(full, 2, ('kspace',))
      np.testing.assert_allclose(lr, lr_full[y // 2 : y // 2 + 4, x // 2 : x // 2 + 4], atol=1e-6)
      # a truncation of the crop alone would differ (the spectrum of the crop is not the slice's)
      assert not np.allclose(lr, degrade.make_lr(hr, 2, ('kspace',)), atol=1e-3)


def test_val_fraction_splits_by_volume_and_is_stable(tmp_path):
  rng = np.random.default_rng(3)
  for k in range(20):
    write_h5(tmp_path / 'train' / f'vol{k:02d}.h5', rng.random((1, 8, 8)) + 0.1)
  config = cfg(tmp_path, val_fraction=0.3)
  _, _, train = splits.split_files(config, 'train')
  _, _, val = splits.split_files(config, 'val')
  assert set(train).isdisjoint(val) and len(train) + len(val) == 20 and 2 <= len(val) <= 12
  write_h5(tmp_path / 'train' / 'vol99.h5', rng.random((1, 8, 8)) + 0.1)
  _, _, val2 = splits.split_files(config, 'val')
  assert set(val) <= set(val2)  # adding a file moves no volume
  vols = pipeline.load_validation_volumes(config, scale=2)
  assert {v['name'] for v in vols} == {p.stem for p in val2}


def test_volume_sample_rate_keeps_a_deterministic_fraction(tmp_path):
  rng = np.random.default_rng(4)
  for k in range(10):
    write_h5(tmp_path / 'train' / f'vol{k}.h5', rng.random((1, 8, 8)) + 0.1)
  _, _, kept = splits.split_files(cfg(tmp_path, volume_sample_rate=0.3), 'train')
  _, _, again = splits.split_files(cfg(tmp_path, volume_sample_rate=0.3), 'train')
  assert len(kept) == 3 and kept == again
  assert pipeline.num_train_slices(cfg(tmp_path, volume_sample_rate=0.3)) == 3


def test_a_volume_in_both_splits_stops(tmp_path):
  write_h5(tmp_path / 'train' / 'same.h5', np.ones((1, 8, 8)))
  write_h5(tmp_path / 'val' / 'same.h5', np.ones((1, 8, 8)))
  with pytest.raises(DataError, match="'same' is in both train and val"):
    splits.split_files(cfg(tmp_path), 'train')


def test_format_detection_and_errors(tmp_path):
  (tmp_path / 'train').mkdir()
  (tmp_path / 'train' / 'notes.txt').write_text('x')
  with pytest.raises(DataError, match='no data found'):
    splits.split_files(cfg(tmp_path), 'train')
  with pytest.raises(DataError, match="data.format: 'dicom'"):
    splits.split_files(cfg(tmp_path, format='dicom'), 'train')


def test_transposes_and_flips_apply_to_both(tmp_path):
  ramp = np.add.outer(np.arange(16) * 0.05, np.arange(16) * 0.001).astype(np.float32) + 0.1
  write_h5(tmp_path / 'train' / 'r.h5', ramp[None])
  rows_vary_most = []
  for b in batches(cfg(tmp_path, transposes=True, flips=True), n=6):
    for hr, lr in zip(b['hr'][..., 0], b['lr'][..., 0]):
      np.testing.assert_allclose(lr, degrade.area_downsample(hr, 2), atol=1e-6)
      rows_vary_most.append(abs(hr[1, 0] - hr[0, 0]) > abs(hr[0, 1] - hr[0, 0]))
  assert any(rows_vary_most) and not all(rows_vary_most)  # some patches transposed, some not
  with pytest.raises(DataError, match='transposes'):
    batches(cfg(tmp_path, transposes=True, hr_patch_size=(8, 4)))


def test_noise_is_seeded_per_sample_and_per_validation_slice(tmp_path):
  rng = np.random.default_rng(5)
  write_h5(tmp_path / 'train' / 't.h5', rng.random((3, 16, 16)) + 0.1)
  write_h5(tmp_path / 'val' / 'v.h5', rng.random((3, 16, 16)) + 0.1)
  config = cfg(tmp_path, degradation=('area', 'noise:snr=20'))
  a, b = batches(config, n=2), batches(config, n=2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['lr'], y['lr'])
  hr = a[0]['hr'][0, ..., 0]
  assert not np.allclose(a[0]['lr'][0, ..., 0], degrade.area_downsample(hr, 2), atol=1e-3)
  v1 = pipeline.load_validation_volumes(config, scale=2, seed=0)[0]['lr']
  v2 = pipeline.load_validation_volumes(config, scale=2, seed=0)[0]['lr']
  v3 = pipeline.load_validation_volumes(config, scale=2, seed=1)[0]['lr']
  np.testing.assert_array_equal(v1, v2)
  assert not np.allclose(v1, v3)


def test_thick_slices_need_a_model_that_takes_the_upsampled_input(tmp_path):
  rng = np.random.default_rng(6)
  write_h5(tmp_path / 'train' / 't.h5', rng.random((2, 16, 16)) + 0.1)
  config = cfg(tmp_path, degradation=('thick:axis=0',))
  with pytest.raises(DataError, match='upsampled input'):
    batches(config)
  b = batches(config, upsampled_input=True)[0]
  assert b['lr'].shape == b['hr'].shape == (4, 8, 8, 1)
  hr = b['hr'][0, ..., 0]
  thick = degrade.make_lr(hr, 2, ('thick:axis=0',))
  assert thick.shape == (4, 8)
  np.testing.assert_allclose(b['lr'][0, ..., 0], np.clip(degrade.bicubic_resize(thick, 8, 8), 0, 1), atol=1e-6)


def test_volumes_smaller_than_the_crop_are_bad_files(tmp_path):
  rng = np.random.default_rng(7)
  write_h5(tmp_path / 'train' / 'big.h5', rng.random((2, 16, 16)) + 0.1)
  small = write_h5(tmp_path / 'train' / 'small.h5', rng.random((2, 6, 16)) + 0.1)
  with pytest.raises(DataError) as err:
    batches(cfg(tmp_path))
  assert str(small) in str(err.value) and 'smaller than the HR crop' in str(err.value)
  assert pipeline.num_train_slices(cfg(tmp_path, skip_bad_files=True)) == 2
  source, _ = pipeline.train_source(cfg(tmp_path, skip_bad_files=True))
  assert [p for p, _ in source.skipped] == [small]
