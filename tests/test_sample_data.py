"""The committed sample data (mrisr_jax/sample_data) is present, well-formed and usable."""

from __future__ import annotations

import h5py
import ml_collections
import numpy as np
import pytest

from mrisr_jax.data import fastmri
from mrisr_jax.data import pipeline
from mrisr_jax.data import sample

pytestmark = pytest.mark.unit

MAX_BYTES = 10 * 1024 * 1024


def _ifft2c(k):
  return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm='ortho'), axes=(-2, -1))


def _files(split):
  return fastmri.list_volume_files(sample.SAMPLE_DIR, split)


def test_sample_exists_and_is_small():
  root, is_sample = sample.resolve_data_root('')
  assert is_sample and root == sample.SAMPLE_DIR
  for name in ('LICENSE_MNI152.txt', 'README.md'):
    assert (root / name).is_file(), name
  assert 'Louis Collins' in (root / 'LICENSE_MNI152.txt').read_text()
  total = sum(p.stat().st_size for p in root.rglob('*') if p.is_file())
  assert total <= MAX_BYTES, total
  assert len(_files('train')) >= 1 and len(_files('val')) >= 1


@pytest.mark.parametrize('split', ['train', 'val'])
def test_schema(split):
  for path in _files(split):
    with h5py.File(path, 'r') as f:
      # fastMRI's single-coil layout (tests/test_fastmri_layout.py checks it against fastMRI's rules)
      assert set(f.keys()) == {'ismrmrd_header', 'kspace', 'reconstruction_esc'}
      recon, kspace = f['reconstruction_esc'], f['kspace']
      header = fastmri.parse_ismrmrd_header(f['ismrmrd_header'][()], path)
      assert header['encoding_size'] == header['recon_size'] == (*recon.shape[1:], 1)
      assert recon.dtype == np.float32 and recon.ndim == 3
      assert kspace.dtype == np.complex64 and kspace.shape == recon.shape
      assert recon.compression == 'gzip' and kspace.compression == 'gzip'
      data = recon[()]
      assert np.isfinite(data).all() and data.min() >= 0
      assert float(f.attrs['max']) == pytest.approx(float(data.max()))
      assert isinstance(f.attrs['acquisition'], str) and f.attrs['acquisition']
      assert isinstance(f.attrs['patient_id'], str) and f.attrs['patient_id']
      assert len(f.attrs['slice_z_ras']) == recon.shape[0]
      # every slice contains brain tissue
      assert (data.reshape(len(data), -1) > 0.2 * data.max()).mean(axis=1).min() > 0.02
      h, w = recon.shape[1:]
      assert h % 12 == 0 and w % 12 == 0  # whole slices downsample by 2, 3, 4


def test_enough_slices():
  train = fastmri.FastMRISliceSource(_files('train'))
  val = fastmri.FastMRISliceSource(_files('val'))
  assert len(train) >= 24 and len(val) >= 6
  assert {v.metadata['target'] for v in train.volumes + val.volumes} == {'reconstruction_esc'}


def test_train_val_slabs_disjoint_with_gap():
  def zs(split):
    out = set()
    for path in _files(split):
      with h5py.File(path, 'r') as f:
        out.update(int(z) for z in f.attrs['slice_z_ras'])
    return out

  train, val = zs('train'), zs('val')
  assert train and val
  near_val = {z + d for z in val for d in (-1, 0, 1)}
  assert not train & near_val
  # and the pixel data agree: no val slice equals a train slice
  train_imgs = np.concatenate([h5py.File(p, 'r')['reconstruction_esc'][()] for p in _files('train')])
  for path in _files('val'):
    with h5py.File(path, 'r') as f:
      for img in f['reconstruction_esc'][()]:
        assert np.abs(train_imgs - img).reshape(len(train_imgs), -1).max(axis=1).min() > 0.05


def test_kspace_consistent_with_recon():
  for split in ('train', 'val'):
    for path in _files(split):
      with h5py.File(path, 'r') as f:
        recon = f['reconstruction_esc'][()]
        kspace = f['kspace'][()]
      mag = np.abs(_ifft2c(kspace.astype(np.complex128)))
      assert np.max(np.abs(mag - recon)) <= 1e-5
      # and the pipeline's RSS-from-kspace target equals the stored recon
      np.testing.assert_allclose(fastmri.rss_from_kspace(kspace), recon, atol=1e-5)


def test_pipeline_runs_on_sample(monkeypatch):
  logged = []
  monkeypatch.setattr(pipeline.logging, 'info', lambda msg, *args: logged.append(msg % args))
  cfg = ml_collections.ConfigDict(
    dict(
      root='',
      train_split='train',
      val_split='val',
      target_key='auto',
      hr_patch_size=96,
      flips=True,
      num_workers=0,
      prefetch_buffer=2,
      skip_bad_files=False,
      val_max_volumes=0,
      val_max_slices=3,
    )
  )
  assert pipeline.num_train_slices(cfg) >= 24
  assert f'using the embedded sample data at {sample.SAMPLE_DIR}' in logged
  batch = next(
    iter(pipeline.make_train_dataset(cfg, scale=4, global_batch_size=4, seed=0, process_index=0, process_count=1)[0])
  )
  assert batch['hr'].shape == (4, 96, 96, 1) and batch['lr'].shape == (4, 24, 24, 1)
  assert 0 <= batch['hr'].min() and batch['hr'].max() <= 1 and batch['hr'].max() > 0.1
  vols = pipeline.load_validation_volumes(cfg)
  assert len(vols) >= 1 and vols[0]['hr'].shape[0] == 3
  assert vols[0]['hr'].max() <= 1 and vols[0]['hr'].dtype == np.float32
