"""The project's HDF5 files follow fastMRI's own layout: checked against fastMRI's reading rules.

TRANSCRIPTION: the first part of this file copies, as written upstream (names kept, torch replaced by
numpy on complex arrays, no transform, no dataset cache or sampling), the rules by which
facebookresearch/fastMRI (MIT licence, commit 91f2df4711adbb6d643df1810f234e4abcf5881b) reads files:
  fastmri/data/mri_data.py   et_query; SliceDataset.__init__ (recons_key, the sorted file walk),
                             SliceDataset._retrieve_metadata, SliceDataset.__getitem__
  fastmri/data/transforms.py center_crop, complex_center_crop; UnetDataTransform's crop of the image
                             to the target's size (else attrs['recon_size']), then complex_abs, then rss
  fastmri/fftc.py            ifft2c_new; fastmri/math.py complex_abs; fastmri/coil_combine.py rss
  fastmri/evaluate.py        mse, nmse, psnr, ssim, and evaluate(): target[recons_key] against
                             recons['reconstruction'], both centre-cropped to (W, W)
  fastmri/utils.py           save_reconstructions: dataset 'reconstruction'
fastMRI itself (torch, pandas, runstats) is not a dependency; a file that passes these rules loads
in fastMRI's SliceDataset, and a prediction written by `infer` is scored by its evaluate.py.
"""

from __future__ import annotations

import pathlib
import xml.etree.ElementTree as etree

import h5py
import numpy as np
import pytest

from mrisr_jax import evaluate, fileio, metrics
from mrisr_jax.data import fastmri, fastmri_files, sample

pytestmark = pytest.mark.unit

skm = pytest.importorskip('skimage.metrics')


# ==============================================================================================
# transcription of fastMRI (see the module docstring)
# ==============================================================================================
def et_query(root: etree.Element, qlist, namespace: str = 'http://www.ismrm.org/ISMRMRD') -> str:
  """fastmri/data/mri_data.py et_query."""
  s = '.'
  prefix = 'ismrmrd_namespace'
  ns = {prefix: namespace}
  for el in qlist:
    s = s + f'//{prefix}:{el}'
  value = root.find(s, ns)
  if value is None:
    raise RuntimeError('Element not found')
  return str(value.text)


class SliceDatasetTranscription:
  """fastmri/data/mri_data.py SliceDataset(root, challenge), transform=None, no cache, no sampling."""

  def __init__(self, root, challenge: str):
    if challenge not in ('singlecoil', 'multicoil'):
      raise ValueError('challenge should be either "singlecoil" or "multicoil"')
    self.recons_key = 'reconstruction_esc' if challenge == 'singlecoil' else 'reconstruction_rss'
    self.raw_samples = []
    files = list(pathlib.Path(root).iterdir())
    for fname in sorted(files):
      metadata, num_slices = self._retrieve_metadata(fname)
      for slice_ind in range(num_slices):
        self.raw_samples.append((fname, slice_ind, metadata))

  def _retrieve_metadata(self, fname):
    with h5py.File(fname, 'r') as hf:
      et_root = etree.fromstring(hf['ismrmrd_header'][()])

      enc = ['encoding', 'encodedSpace', 'matrixSize']
      enc_size = (
        int(et_query(et_root, enc + ['x'])),
        int(et_query(et_root, enc + ['y'])),
        int(et_query(et_root, enc + ['z'])),
      )
      rec = ['encoding', 'reconSpace', 'matrixSize']
      recon_size = (
        int(et_query(et_root, rec + ['x'])),
        int(et_query(et_root, rec + ['y'])),
        int(et_query(et_root, rec + ['z'])),
      )

      lims = ['encoding', 'encodingLimits', 'kspace_encoding_step_1']
      enc_limits_center = int(et_query(et_root, lims + ['center']))
      enc_limits_max = int(et_query(et_root, lims + ['maximum'])) + 1

      padding_left = enc_size[1] // 2 - enc_limits_center
      padding_right = padding_left + enc_limits_max

      num_slices = hf['kspace'].shape[0]

      metadata = {
        'padding_left': padding_left,
        'padding_right': padding_right,
        'encoding_size': enc_size,
        'recon_size': recon_size,
        **hf.attrs,
      }

    return metadata, num_slices

  def __len__(self):
    return len(self.raw_samples)

  def __getitem__(self, i: int):
    fname, dataslice, metadata = self.raw_samples[i]

    with h5py.File(fname, 'r') as hf:
      kspace = hf['kspace'][dataslice]

      mask = np.asarray(hf['mask']) if 'mask' in hf else None

      target = hf[self.recons_key][dataslice] if self.recons_key in hf else None

      attrs = dict(hf.attrs)
      attrs.update(metadata)

    return (kspace, mask, target, attrs, fname.name, dataslice)


def center_crop(data: np.ndarray, shape) -> np.ndarray:
  """fastmri/data/transforms.py center_crop (complex_center_crop is the same on a complex array)."""
  if not (0 < shape[0] <= data.shape[-2] and 0 < shape[1] <= data.shape[-1]):
    raise ValueError('Invalid shapes.')

  w_from = (data.shape[-2] - shape[0]) // 2
  h_from = (data.shape[-1] - shape[1]) // 2
  w_to = w_from + shape[0]
  h_to = h_from + shape[1]

  return data[..., w_from:w_to, h_from:h_to]


def ifft2c(data: np.ndarray) -> np.ndarray:
  """fastmri/fftc.py ifft2c_new, on a complex array (upstream: a real view with a trailing 2)."""
  data = np.fft.ifftshift(data, axes=(-2, -1))
  data = np.fft.ifftn(data, axes=(-2, -1), norm='ortho')
  return np.fft.fftshift(data, axes=(-2, -1))


def image_from_kspace(kspace: np.ndarray, target, attrs: dict, which_challenge: str) -> np.ndarray:
  """UnetDataTransform.__call__ without mask or normalisation: ifft2c, crop, complex_abs, rss."""
  image = ifft2c(kspace.astype(np.complex128))
  if target is not None:
    crop_size = (target.shape[-2], target.shape[-1])
  else:
    crop_size = (attrs['recon_size'][0], attrs['recon_size'][1])
  if image.shape[-1] < crop_size[1]:  # "check for FLAIR 203" (upstream: image.shape[-2], before the 2)
    crop_size = (image.shape[-1], image.shape[-1])
  image = center_crop(image, crop_size)
  image = np.abs(image)  # complex_abs
  if which_challenge == 'multicoil':
    image = np.sqrt((image**2).sum(0))  # rss(image), dim 0
  return image


def fastmri_nmse(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """fastmri/evaluate.py nmse."""
  return np.array(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)


def fastmri_psnr(gt: np.ndarray, pred: np.ndarray, maxval=None) -> np.ndarray:
  """fastmri/evaluate.py psnr."""
  if maxval is None:
    maxval = gt.max()
  return skm.peak_signal_noise_ratio(gt, pred, data_range=maxval)


def fastmri_ssim(gt: np.ndarray, pred: np.ndarray, maxval=None) -> np.ndarray:
  """fastmri/evaluate.py ssim."""
  if not gt.ndim == 3:
    raise ValueError('Unexpected number of dimensions in ground truth.')
  if not gt.ndim == pred.ndim:
    raise ValueError('Ground truth dimensions does not match pred.')

  maxval = gt.max() if maxval is None else maxval

  ssim = np.array([0])
  for slice_num in range(gt.shape[0]):
    ssim = ssim + skm.structural_similarity(gt[slice_num], pred[slice_num], data_range=maxval)

  return ssim / gt.shape[0]


def fastmri_evaluate(target_path: pathlib.Path, predictions_path: pathlib.Path, challenge: str, dtype=None) -> dict:
  """fastmri/evaluate.py evaluate(args, recons_key) and its recons_key choice; each volume's metrics
  returned by file name instead of being pushed into runstats.Statistics. dtype (not upstream): cast
  both arrays after reading (None: as stored, float32, as upstream computes)."""
  recons_key = 'reconstruction_rss' if challenge == 'multicoil' else 'reconstruction_esc'
  out = {}
  for tgt_file in target_path.iterdir():
    with h5py.File(tgt_file, 'r') as target, h5py.File(predictions_path / tgt_file.name, 'r') as recons:
      target = target[recons_key][()]
      recons = recons['reconstruction'][()]
      if dtype is not None:
        target, recons = target.astype(dtype), recons.astype(dtype)
      target = center_crop(target, (target.shape[-1], target.shape[-1]))
      recons = center_crop(recons, (target.shape[-1], target.shape[-1]))
      out[tgt_file.name] = {
        'NMSE': float(fastmri_nmse(target, recons)),
        'PSNR': float(fastmri_psnr(target, recons)),
        'SSIM': float(np.squeeze(fastmri_ssim(target, recons))),
        'target': target,
        'recons': recons,
      }
  return out


# ==============================================================================================
# the files under test
# ==============================================================================================
def _decaying_kspace(rng, shape) -> np.ndarray:
  """Random complex k-space whose energy falls off from the centre (image-like, target ~1)."""
  h, w = shape[-2:]
  r = np.hypot(*np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing='ij'))
  k = (rng.normal(size=shape) + 1j * rng.normal(size=shape)) / (1.0 + r)
  return (k * np.sqrt(h * w) / 4).astype(np.complex64)


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory) -> dict:
  """fastMRI-layout files written by fastmri_files.write_volume: k-space larger than the recon size
  (odd sizes), single-coil and multi-coil, the target computed from the k-space."""
  root = tmp_path_factory.mktemp('fastmri_layout')
  rng = np.random.default_rng(0)
  fastmri_files.write_volume(
    root / 'singlecoil' / 'sc.h5',
    kspace=_decaying_kspace(rng, (3, 21, 15)),
    challenge='singlecoil',
    recon_hw=(12, 10),
    attrs={'acquisition': 'CORPD_FBK', 'patient_id': 'synthetic-sc'},
  )
  fastmri_files.write_volume(
    root / 'multicoil' / 'mc.h5',
    kspace=_decaying_kspace(rng, (2, 4, 24, 17)),
    challenge='multicoil',
    recon_hw=(16, 16),
    attrs={'acquisition': 'AXT2', 'patient_id': 'synthetic-mc'},
  )
  return {'singlecoil': root / 'singlecoil', 'multicoil': root / 'multicoil'}


def _roots(synthetic) -> list[tuple[str, pathlib.Path, str]]:
  return [
    ('sample train', sample.SAMPLE_DIR / 'train', 'singlecoil'),
    ('sample val', sample.SAMPLE_DIR / 'val', 'singlecoil'),
    ('synthetic single-coil', synthetic['singlecoil'], 'singlecoil'),
    ('synthetic multi-coil', synthetic['multicoil'], 'multicoil'),
  ]


# ==============================================================================================
# tests
# ==============================================================================================
def test_every_file_loads_by_fastmri_slice_dataset_rules(synthetic):
  for name, root, challenge in _roots(synthetic):
    dataset = SliceDatasetTranscription(root, challenge)
    num_slices = 0
    for path in sorted(root.iterdir()):
      with h5py.File(path, 'r') as f:
        num_slices += f['kspace'].shape[0]
    assert num_slices and len(dataset) == num_slices, name
    for kspace, mask, target, attrs, fname, dataslice in dataset:
      where = f'{name}: {fname} slice {dataslice}'
      assert kspace.dtype == np.complex64 and kspace.ndim == (2 if challenge == 'singlecoil' else 3), where
      assert mask is None, where  # fully sampled: no mask dataset
      assert target is not None and target.dtype == np.float32, where
      enc_x, enc_y, enc_z = attrs['encoding_size']
      rec_x, rec_y, rec_z = attrs['recon_size']
      assert (enc_x, enc_y, enc_z) == (*kspace.shape[-2:], 1), where
      # fastMRI crops the (H, W) image to (recon x, recon y): that is the target's shape
      assert target.shape == (rec_x, rec_y) and rec_z == 1, where
      assert center_crop(np.zeros(kspace.shape[-2:]), (rec_x, rec_y)).shape == target.shape, where
      # every k-space column is sampled: fastMRI's padding is none at either side
      assert (attrs['padding_left'], attrs['padding_right']) == (0, kspace.shape[-1]), where
      for key in ('max', 'norm', 'acquisition', 'patient_id'):
        assert key in attrs, (where, key)
      assert isinstance(attrs['acquisition'], str) and isinstance(attrs['patient_id'], str), where
    # the target exists only under the challenge's own key
    other = 'multicoil' if challenge == 'singlecoil' else 'singlecoil'
    assert all(s[2] is None for s in SliceDatasetTranscription(root, other)), name


def test_kspace_inverts_to_the_target_and_attrs_describe_it(synthetic):
  for name, root, challenge in _roots(synthetic):
    dataset = SliceDatasetTranscription(root, challenge)
    by_file: dict[str, list] = {}
    for kspace, _, target, attrs, fname, _ in dataset:
      for crop_from in (target, None):  # UnetDataTransform: the target's shape, else recon_size
        image = image_from_kspace(kspace, crop_from, attrs, challenge)
        assert image.shape == target.shape
        err = float(np.max(np.abs(image - target.astype(np.float64))))
        assert err <= 1e-6, (name, fname, err)
      by_file.setdefault(fname, []).append((target, attrs))
    for fname, slices in by_file.items():
      volume = np.stack([t for t, _ in slices]).astype(np.float64)
      attrs = slices[0][1]
      assert volume.max() > 0.1, (name, fname)
      assert float(attrs['max']) == float(volume.max()), (name, fname)
      assert float(attrs['norm']) == pytest.approx(float(np.linalg.norm(volume)), rel=1e-12), (name, fname)


def test_library_reader_agrees_with_the_transcription(synthetic):
  for name, root, challenge in _roots(synthetic):
    for path in sorted(root.iterdir()):
      metadata, num_slices = SliceDatasetTranscription(root, challenge)._retrieve_metadata(path)
      with h5py.File(path, 'r') as f:
        raw = f['ismrmrd_header'][()]
      assert fastmri.parse_ismrmrd_header(raw, path) == {
        'encoding_size': metadata['encoding_size'],
        'recon_size': metadata['recon_size'],
        'padding_left': metadata['padding_left'],
        'padding_right': metadata['padding_right'],
      }, (name, path)
      src = fastmri.FastMRISliceSource([path])
      vol = src.volumes[0]
      assert vol.metadata['target'] == fastmri_files.TARGET_KEY[challenge], (name, path)
      assert vol.num_slices == num_slices and vol.shape == metadata['recon_size'][:2], (name, path)
      # the k-space target (RSS, cropped to the header's recon size) is the stored one
      k_src = fastmri.FastMRISliceSource([path], target_key='kspace')
      stored, computed = (
        src.read_volume(0) * vol.metadata['max'],
        k_src.read_volume(0) * k_src.volumes[0].metadata['max'],
      )
      assert np.max(np.abs(stored - computed)) <= 1e-5 * vol.metadata['max'], (name, path)
      src.close()
      k_src.close()


def test_metrics_equal_fastmri_evaluate_on_an_infer_output(tmp_path):
  """An `infer`-style prediction (fileio.write_stack) of the sample's validation volume is read by
  fastMRI's evaluate.py rules, and mrisr_jax's metrics equal its scores to 1e-6 relative.

  mrisr_jax computes in float64. Upstream, on the stored float32 arrays, accumulates NMSE's norms in
  float32 (about 1e-6 relative off); on float64 copies its formulas agree to 1e-6 relative, and on the
  float32 arrays as stored to float32 accuracy (1e-5)."""
  truth_dir = sample.SAMPLE_DIR / 'val'
  pred_dir = tmp_path / 'predictions'
  pred_dir.mkdir()
  rng = np.random.default_rng(1)
  for path in sorted(truth_dir.iterdir()):
    stack, info = fileio.read_stack(path, 'h5')  # [0, 1], as infer reads it
    blurred = stack.copy()
    for axis in (-1, -2):
      blurred = (blurred + np.roll(blurred, 1, axis) + np.roll(blurred, -1, axis)) / 3
    pred = np.clip(blurred + rng.normal(0, 0.01, stack.shape), 0, 1).astype(np.float32)
    fileio.write_stack(pred_dir / path.name, 'h5', pred, info, {'model': 'blur'})
  scores = fastmri_evaluate(truth_dir, pred_dir, 'singlecoil', dtype=np.float64)
  as_stored = fastmri_evaluate(truth_dir, pred_dir, 'singlecoil')
  assert sorted(scores) == sorted(as_stored) == sorted(p.name for p in truth_dir.iterdir())
  for fname, s in scores.items():
    gt, pred = s['target'], s['recons']
    assert as_stored[fname]['target'].dtype == np.float32 and as_stored[fname]['recons'].dtype == np.float32
    assert gt.shape[-2:] == (gt.shape[-1], gt.shape[-1]) and gt.shape == pred.shape
    assert 20 < s['PSNR'] < 60 and 0.3 < s['SSIM'] < 1 and 0 < s['NMSE'] < 0.1, (fname, s)  # a real comparison
    ours = metrics.volume_metrics(gt, pred)
    assert ours['psnr'] == pytest.approx(s['PSNR'], rel=1e-6), fname
    assert ours['ssim'] == pytest.approx(s['SSIM'], rel=1e-6), fname
    assert ours['nmse'] == pytest.approx(s['NMSE'], rel=1e-6), fname
    for key in ('psnr', 'ssim', 'nmse'):
      assert ours[key] == pytest.approx(as_stored[fname][key.upper()], rel=1e-5), (fname, key)
    # evaluate's per-slice scores use the volume's maximum as data range: their mean SSIM is fastMRI's
    per_slice = evaluate.slice_metrics(gt, pred)
    assert len(per_slice) == gt.shape[0]
    assert np.mean([r['ssim'] for r in per_slice]) == pytest.approx(s['SSIM'], rel=1e-6), fname
    for k, r in enumerate(per_slice):
      assert r['psnr'] == pytest.approx(fastmri_psnr(gt[k], pred[k], gt.max()), rel=1e-6), (fname, k)


def test_header_xml_and_writer_follow_the_rules(tmp_path):
  xml = fastmri_files.ismrmrd_header_xml((640, 368), (320, 320), voxel_mm=(0.5, 0.5, 3.0), num_coils=15)
  root = etree.fromstring(xml)
  assert root.tag == '{http://www.ismrm.org/ISMRMRD}ismrmrdHeader'
  assert [et_query(root, ['encoding', 'encodedSpace', 'matrixSize', a]) for a in 'xyz'] == ['640', '368', '1']
  assert [et_query(root, ['encoding', 'reconSpace', 'matrixSize', a]) for a in 'xyz'] == ['320', '320', '1']
  assert [et_query(root, ['encodedSpace', 'fieldOfView_mm', a]) for a in 'xyz'] == ['320', '184', '3']
  assert et_query(root, ['receiverChannels']) == '15'
  parsed = fastmri.parse_ismrmrd_header(xml)
  assert (parsed['padding_left'], parsed['padding_right']) == (0, 368)
  partial = fastmri.parse_ismrmrd_header(fastmri_files.ismrmrd_header_xml((640, 368), center=184, maximum=366))
  assert (partial['padding_left'], partial['padding_right']) == (0, 367)  # fastMRI's knee numbers
  # the same arguments give the same bytes (no HDF5 timestamps), compressed or not
  target = np.random.default_rng(2).random((2, 8, 6)).astype(np.float32)
  for gzip in (None, 9):
    a = fastmri_files.write_volume(tmp_path / f'a{gzip}.h5', target=target, gzip=gzip, attrs={'acquisition': 'AXT1'})
    b = fastmri_files.write_volume(tmp_path / f'b{gzip}.h5', target=target, gzip=gzip, attrs={'acquisition': 'AXT1'})
    assert a.read_bytes() == b.read_bytes()
    with h5py.File(a, 'r') as f:
      assert sorted(f) == ['ismrmrd_header', 'kspace', 'reconstruction_esc']
      assert f['reconstruction_esc'].compression == ('gzip' if gzip else None)
      np.testing.assert_array_equal(f['reconstruction_esc'][()], target)
  with pytest.raises(ValueError, match='multicoil expects complex'):
    fastmri_files.write_volume(tmp_path / 'x.h5', kspace=np.ones((1, 4, 4), np.complex64), challenge='multicoil')
  with pytest.raises(ValueError, match='recon_hw'):
    fastmri_files.write_volume(tmp_path / 'x.h5', target=target, recon_hw=(4, 4))
  with pytest.raises(ValueError, match='challenge'):
    fastmri_files.write_volume(tmp_path / 'x.h5', target=target, challenge='knee')
