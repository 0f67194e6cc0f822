"""Tests of the fastMRI source on tiny files in the fastMRI schema (mrisr_jax.data.fastmri)."""

from __future__ import annotations

import pathlib
import pickle

import h5py
import numpy as np
import pytest

from mrisr_jax.data import fastmri
from mrisr_jax.data.errors import DataError
from mrisr_jax.data.slice_source import SliceSource

pytestmark = pytest.mark.unit

NS = 'http://www.ismrm.org/ISMRMRD'


def ismrmrd_xml(enc=(24, 20, 1), recon=(12, 12, 1), center=10, maximum=19) -> bytes:
  """An ISMRMRD header with the elements fastMRI reads (and a few it ignores)."""

  def size(v):
    return f'<matrixSize><x>{v[0]}</x><y>{v[1]}</y><z>{v[2]}</z></matrixSize>'

  return (
    f'<?xml version="1.0" encoding="utf-8"?>\n<ismrmrdHeader xmlns="{NS}">'
    '<studyInformation><studyTime>00:00:00</studyTime></studyInformation><encoding>'
    f'<encodedSpace>{size(enc)}<fieldOfView_mm><x>280</x><y>160</y><z>4.5</z>'
    f'</fieldOfView_mm></encodedSpace><reconSpace>{size(recon)}</reconSpace>'
    '<encodingLimits><kspace_encoding_step_1><minimum>0</minimum>'
    f'<maximum>{maximum}</maximum><center>{center}</center></kspace_encoding_step_1>'
    '</encodingLimits><trajectory>cartesian</trajectory></encoding>'
    '</ismrmrdHeader>'
  ).encode()


def write_fastmri(
  path: pathlib.Path, header: bytes | None = None, attrs: dict | None = None, **datasets
) -> pathlib.Path:
  """A file laid out like the fastMRI release (header as a scalar bytes dataset)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with h5py.File(path, 'w') as f:
    for key, value in datasets.items():
      f.create_dataset(key, data=value)
    if header is not None:
      f['ismrmrd_header'] = header
    for key, value in (attrs or {}).items():
      f.attrs[key] = value
  return path


def random_kspace(rng, shape, scale=1e-4) -> np.ndarray:
  return (scale * (rng.normal(size=shape) + 1j * rng.normal(size=shape))).astype(np.complex64)


def ref_image(k):
  """float64 |ifft2c| per coil, written out with np.fft (independent of the module)."""
  k = k.astype(np.complex128)
  return np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm='ortho'), axes=(-2, -1)))


def ref_crop(x, shape):
  """fastMRI's T.center_crop: the last two dims to shape[0], shape[1]."""
  h0 = (x.shape[-2] - shape[0]) // 2
  w0 = (x.shape[-1] - shape[1]) // 2
  return x[..., h0 : h0 + shape[0], w0 : w0 + shape[1]]


def assert_one_line(err: BaseException, *needles):
  msg = str(err)
  assert '\n' not in msg, msg
  for needle in needles:
    assert str(needle) in msg, f'{needle!r} not in {msg!r}'


# ----------------------------------------------------------------------------------------------
# targets from k-space
# ----------------------------------------------------------------------------------------------
def test_single_coil_kspace_cropped_to_recon_size(tmp_path):
  rng = np.random.default_rng(0)
  # odd sizes (fftshift and ifftshift differ); W cropped more than H (the W-first FFT order)
  k = random_kspace(rng, (3, 15, 21))
  path = write_fastmri(tmp_path / 'sc.h5', kspace=k, header=ismrmrd_xml((15, 21, 1), (8, 10, 1)))
  src = fastmri.FastMRISliceSource([path])
  vol = src.volumes[0]
  expected = ref_crop(ref_image(k), (8, 10))
  assert vol.shape == (8, 10) and vol.metadata['crop_size'] == (8, 10)
  assert vol.metadata['num_coils'] is None and vol.metadata['target'] == 'kspace'
  assert vol.metadata['max'] == pytest.approx(expected.max(), rel=1e-5)
  images = src.read_volume(0)
  np.testing.assert_allclose(images * vol.metadata['max'], expected, rtol=1e-5, atol=1e-5 * expected.max())
  np.testing.assert_allclose(fastmri.rss_from_kspace(k, (8, 10)), expected, rtol=1e-5, atol=1e-5 * expected.max())


def test_multi_coil_rss_cropped_to_recon_size(tmp_path):
  rng = np.random.default_rng(1)
  k = random_kspace(rng, (2, 4, 24, 20))
  path = write_fastmri(tmp_path / 'mc.h5', kspace=k, header=ismrmrd_xml())
  rss = np.sqrt((ref_image(k) ** 2).sum(axis=1))
  expected = ref_crop(rss, (12, 12))
  src = fastmri.FastMRISliceSource([path])
  vol = src.volumes[0]
  assert vol.shape == (12, 12) and vol.metadata['num_coils'] == 4 and len(src) == 2
  assert vol.metadata['recon_size'] == (12, 12)
  assert vol.metadata['max'] == pytest.approx(expected.max(), rel=1e-5)
  for s in range(2):
    np.testing.assert_allclose(
      src[s]['image'] * vol.metadata['max'], expected[s], rtol=1e-5, atol=1e-5 * expected.max()
    )
  # no crop when asked, or without a header
  full = fastmri.FastMRISliceSource([path], crop_to_recon_size=False)
  assert full.volumes[0].shape == (24, 20) and full.volumes[0].metadata['crop_size'] is None
  np.testing.assert_allclose(
    full[1]['image'] * full.volumes[0].metadata['max'], rss[1], rtol=1e-5, atol=1e-5 * rss.max()
  )
  bare = write_fastmri(tmp_path / 'bare.h5', kspace=k)
  assert fastmri.FastMRISliceSource([bare]).volumes[0].shape == (24, 20)


def test_image_smaller_than_recon_size_keeps_that_dimension(tmp_path):
  rng = np.random.default_rng(2)
  k = random_kspace(rng, (1, 3, 24, 20))
  # recon y = 30 > W = 20: W stays whole, H is still cropped to recon x
  path = write_fastmri(tmp_path / 'small.h5', kspace=k, header=ismrmrd_xml(recon=(12, 30, 1)))
  vol = fastmri.FastMRISliceSource([path]).volumes[0]
  assert vol.shape == (12, 20) and vol.metadata['recon_size'] == (12, 30)
  expected = np.sqrt((ref_image(k) ** 2).sum(axis=1))[:, 6:18, :]
  assert vol.metadata['max'] == pytest.approx(expected.max(), rel=1e-5)
  np.testing.assert_allclose(fastmri.rss_from_kspace(k, (12, 30)), expected, rtol=1e-5, atol=1e-5 * expected.max())


def test_single_precision_matches_double(tmp_path):
  rng = np.random.default_rng(3)
  # fastMRI-like: 15 coils, k-space energy concentrated at the centre
  shape = (1, 15, 64, 48)
  decay = 1.0 / (1.0 + np.hypot(*np.meshgrid(np.arange(64) - 32, np.arange(48) - 24, indexing='ij')))
  k = random_kspace(rng, shape, 1e-3) * decay.astype(np.float32)
  k64 = k.astype(np.complex64)
  ref = ref_crop(np.sqrt((ref_image(k64) ** 2).sum(axis=1)), (32, 32))  # float64
  single = fastmri.rss_from_kspace(k64, (32, 32))
  double = fastmri.rss_from_kspace(k64.astype(np.complex128), (32, 32))
  assert single.dtype == np.float32 and single.shape == (1, 32, 32)
  for out in (single, double):
    assert np.abs(out - ref).max() <= 1e-5 * ref.max()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6 * ref.max())
  # float32 overflow of the squares falls back to double precision
  huge = fastmri.rss_from_kspace(k64 * np.float32(1e22), (32, 32))
  assert np.all(np.isfinite(huge))
  np.testing.assert_allclose(huge, ref * 1e22, rtol=1e-5, atol=1e-6 * ref.max() * 1e22)


# ----------------------------------------------------------------------------------------------
# header
# ----------------------------------------------------------------------------------------------
def test_header_parse_and_metadata(tmp_path):
  parsed = fastmri.parse_ismrmrd_header(ismrmrd_xml((640, 368, 1), (320, 320, 1), 184, 366))
  # fastMRI: padding_left = enc_y // 2 - center, padding_right = padding_left + maximum + 1
  assert parsed == {
    'encoding_size': (640, 368, 1),
    'recon_size': (320, 320, 1),
    'padding_left': 0,
    'padding_right': 367,
  }
  rss = np.ones((1, 12, 12), np.float32)
  path = write_fastmri(tmp_path / 'h.h5', header=ismrmrd_xml(), reconstruction_rss=rss)
  meta = fastmri.FastMRISliceSource([path]).volumes[0].metadata
  assert meta['encoding_size'] == (24, 20, 1) and meta['recon_size'] == (12, 12)
  assert (meta['padding_left'], meta['padding_right']) == (0, 20)
  assert meta['crop_size'] is None  # stored reconstructions are used as they are


@pytest.mark.parametrize(
  'xml,needle',
  [
    (b'<ismrmrdHeader><encoding>', 'not valid XML'),
    (ismrmrd_xml().replace(b'reconSpace', b'otherSpace'), 'reconSpace'),
    (ismrmrd_xml().replace(b'<x>12</x>', b'<x>twelve</x>'), 'twelve'),
  ],
)
def test_bad_header(tmp_path, xml, needle):
  path = write_fastmri(tmp_path / 'badxml.h5', header=xml, reconstruction_rss=np.ones((1, 12, 12), np.float32))
  with pytest.raises(DataError) as err:
    fastmri.FastMRISliceSource([path])
  assert_one_line(err.value, path, 'ismrmrd_header', needle)


# ----------------------------------------------------------------------------------------------
# attributes and filters
# ----------------------------------------------------------------------------------------------
def _recon_file(path, acquisition=None, **attrs):
  if acquisition is not None:
    attrs['acquisition'] = acquisition
  rss = np.linspace(0, 2, 2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
  return write_fastmri(path, reconstruction_rss=rss, attrs=attrs)


def test_attrs_are_metadata(tmp_path):
  full = _recon_file(tmp_path / 'a.h5', 'CORPD_FBK', max=2.0, norm=0.5, patient_id='p1')
  bare = _recon_file(tmp_path / 'b.h5')
  src = fastmri.FastMRISliceSource([full, bare])
  assert isinstance(src, SliceSource) and src.format_name == 'fastmri'
  meta = src.volumes[0].metadata
  assert meta['acquisition'] == 'CORPD_FBK' and meta['patient_id'] == 'p1'
  assert meta['attrs_max'] == 2.0 and meta['max_source'] == 'data'
  assert meta['attrs'] == {'acquisition': 'CORPD_FBK', 'max': 2.0, 'norm': 0.5, 'patient_id': 'p1'}
  assert all(type(v) in (str, float) for v in meta['attrs'].values())  # plain Python
  none = src.volumes[1].metadata
  assert none['acquisition'] is None and none['patient_id'] is None and none['attrs_max'] is None
  assert none['attrs'] == {} and none['recon_size'] is None and none['encoding_size'] is None


def test_acquisition_filter(tmp_path):
  files = [
    _recon_file(tmp_path / 'a.h5', 'CORPD_FBK'),
    _recon_file(tmp_path / 'b.h5', 'CORPDFS_FBK'),
    _recon_file(tmp_path / 'c.h5'),
  ]
  src = fastmri.FastMRISliceSource(files, acquisitions=('CORPD_FBK',))
  assert [v.name for v in src.volumes] == ['a'] and len(src) == 2 and not src.skipped
  assert [p for p, _ in src.excluded] == files[1:]
  assert 'CORPDFS_FBK' in src.excluded[0][1] and 'no acquisition' in src.excluded[1][1]
  both = fastmri.FastMRISliceSource(files, acquisitions=['CORPD_FBK', 'CORPDFS_FBK'])
  assert [v.name for v in both.volumes] == ['a', 'b']
  assert len(fastmri.FastMRISliceSource(files, acquisitions='CORPD_FBK').volumes) == 1
  assert len(fastmri.FastMRISliceSource(files).volumes) == 3  # () = all
  with pytest.raises(DataError) as err:
    fastmri.FastMRISliceSource(files, acquisitions=('AXT2',))
  assert_one_line(err.value, 'no usable volumes', 'filters')


# ----------------------------------------------------------------------------------------------
# scan='header'
# ----------------------------------------------------------------------------------------------
def test_header_scan_takes_max_from_attrs(tmp_path):
  path = _recon_file(tmp_path / 'a.h5', max=2.0)
  src = fastmri.FastMRISliceSource([path], scan='header')
  assert src.volumes[0].metadata['max'] == 2.0 and src.volumes[0].metadata['max_source'] == 'attrs'
  np.testing.assert_allclose(src.read_volume(0), fastmri.FastMRISliceSource([path]).read_volume(0), atol=1e-7)
  for attrs in ({}, {'max': 0.0}, {'max': np.nan}, {'max': 'big'}):
    bad = _recon_file(tmp_path / 'nomax.h5', **attrs)
    with pytest.raises(DataError) as err:
      fastmri.FastMRISliceSource([bad], scan='header')
    assert_one_line(err.value, bad, "attrs['max']", 'data.scan=full')
  with pytest.raises(DataError) as err:
    fastmri.FastMRISliceSource([path], scan='quick')
  assert_one_line(err.value, 'data.scan', 'quick')


def test_header_scan_catches_bad_slices_when_read(tmp_path):
  rss = np.full((3, 4, 4), 0.5, np.float32)
  rss[1, 2, 2] = np.nan
  rss[2, 0, 0] = 3.0  # above the (wrong) attrs max
  path = write_fastmri(tmp_path / 'bad.h5', reconstruction_rss=rss, attrs={'max': 1.0})
  with pytest.raises(DataError):  # a full scan refuses the file at once
    fastmri.FastMRISliceSource([path])
  src = fastmri.FastMRISliceSource([path], scan='header')
  np.testing.assert_allclose(src[0]['image'], 0.5)
  with pytest.raises(DataError) as err:
    src[1]
  assert_one_line(err.value, path, 'slice 1', 'non-finite')
  with pytest.raises(DataError) as err:
    src[2]
  assert_one_line(err.value, path, 'slice 2', 'outside [0, 1]', 'data.scan=full')
  # k-space targets too: a NaN anywhere in a slice's k-space spoils that slice
  k = random_kspace(np.random.default_rng(4), (2, 2, 8, 8))
  k[1, 0, 3, 3] = np.nan
  kpath = write_fastmri(tmp_path / 'badk.h5', kspace=k, attrs={'max': 1.0})
  ksrc = fastmri.FastMRISliceSource([kpath], scan='header')
  assert ksrc[0]['image'].shape == (8, 8)
  with pytest.raises(DataError) as err:
    ksrc[1]
  assert_one_line(err.value, kpath, 'slice 1', 'non-finite')


# ----------------------------------------------------------------------------------------------
# files, pickling
# ----------------------------------------------------------------------------------------------
def test_list_files(tmp_path):
  _recon_file(tmp_path / 'train' / 'b.hdf5')
  _recon_file(tmp_path / 'train' / 'a.h5')
  (tmp_path / 'train' / 'notes.txt').write_text('x')
  names = ['a.h5', 'b.hdf5']
  assert [p.name for p in fastmri.list_files(tmp_path / 'train')] == names
  assert [p.name for p in fastmri.list_volume_files(tmp_path, 'train')] == names
  with pytest.raises(DataError) as err:
    fastmri.list_files(tmp_path / 'val')
  assert_one_line(err.value, tmp_path / 'val', 'no .h5 files')


def test_pickles_with_open_handles(tmp_path):
  rng = np.random.default_rng(5)
  kfile = write_fastmri(
    tmp_path / 'k.h5',
    kspace=random_kspace(rng, (2, 3, 24, 20)),
    header=ismrmrd_xml(),
    attrs={'acquisition': 'CORPD_FBK'},
  )
  rfile = _recon_file(tmp_path / 'r.h5', 'CORPD_FBK')
  src = fastmri.FastMRISliceSource([kfile, rfile], acquisitions=('CORPD_FBK',))
  first = [src[i]['image'] for i in range(len(src))]
  assert set(src._handles) == {0, 1}
  clone = pickle.loads(pickle.dumps(src))
  assert clone._handles == {} and set(src._handles) == {0, 1}
  for i in range(len(src)):
    np.testing.assert_array_equal(clone[i]['image'], first[i])
  assert clone.volumes == src.volumes and clone.acquisitions == ('CORPD_FBK',)
  src.close()
  assert src._handles == {}
  np.testing.assert_array_equal(src[3]['image'], first[3])  # reopens lazily
