"""fastMRI-style HDF5 volumes as a random-access source of 2-D slices.

File schema (https://github.com/facebookresearch/fastMRI): one volume per file,
  kspace                 complex (slices, H, W) single-coil or (slices, coils, H, W) multi-coil
  reconstruction_rss     float (slices, h, w)   root-sum-of-squares magnitude (optional)
  reconstruction_esc     float (slices, h, w)   single-coil emulated recon (optional)
  ismrmrd_header         bytes scalar           ISMRMRD XML (matrix sizes, encoding limits)
  attrs: max, norm, acquisition, patient_id, ...

k-space convention (the one fastMRI uses, `fastmri.fft2c` / `fastmri.ifft2c`):
  image = fftshift(ifft2(ifftshift(kspace), norm='ortho'))   over the last two axes.

Targets: a stored reconstruction is used as it is. A k-space target is computed the way the
fastMRI reference does: ifft2c per coil, root-sum-of-squares over coils (single-coil: magnitude),
then a centre crop of (H, W) to (recon x, recon y) read from ismrmrd_header
(encoding/reconSpace/matrixSize), as `T.center_crop(image, (recon_size[0], recon_size[1]))`.
Where the image is smaller than the recon size along a dimension, that dimension is kept whole
(fastMRI special-cases such brain volumes). No header, or crop_to_recon_size=False: no crop.

Start-up scan (`scan`):
  full    every file is read in full at construction: finiteness, sign, and the volume maximum
          used for normalisation computed from the target (for k-space, of the cropped RSS).
          Slow for big sets (a whole FFT pass over multi-coil k-space) but catches bad data early.
  header  only keys, ranks, dtypes, shapes and the header are checked, and the maximum is
          attrs['max'] (what fastMRI stores). Start-up is cheap; a slice that is non-finite or
          exceeds that maximum stops with a DataError naming file and slice when it is read.

VolumeInfo.metadata: max (normalisation maximum), max_source ('data' | 'attrs'), target (key),
attrs (all file attributes as plain Python), attrs_max, acquisition, patient_id (None when
missing), encoding_size (x, y, z) and recon_size (H, W) = (recon x, recon y) from the header (None
without one), padding_left/padding_right (fastMRI's, from the encoding limits; None without them),
crop_size (the (H, W) crop applied to a k-space target, or None) and num_coils (None for
single-coil k-space and stored reconstructions).
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Iterable
import xml.etree.ElementTree as etree

from absl import logging
import h5py
import numpy as np

from mrisr_jax.data.errors import DataError, one_line
from mrisr_jax.data.slice_source import SliceSource, VolumeExcluded, VolumeInfo

__all__ = [
  'FastMRISliceSource',
  'VolumeInfo',
  'TARGET_KEYS',
  'VALID_TARGET_KEYS',
  'SCANS',
  'ifft2c',
  'fft2c',
  'rss_from_kspace',
  'parse_ismrmrd_header',
  'list_files',
  'list_volume_files',
]

TARGET_KEYS = ('reconstruction_rss', 'reconstruction_esc')
KSPACE_KEY = 'kspace'
HEADER_KEY = 'ismrmrd_header'
VALID_TARGET_KEYS = ('auto',) + TARGET_KEYS + (KSPACE_KEY,)
SCANS = ('full', 'header')
SUFFIXES = ('.h5', '.hdf5')
ISMRMRD_NAMESPACE = 'http://www.ismrm.org/ISMRMRD'
_SCAN_CHUNK_BYTES = 64 << 20  # read this much per step while validating a volume
_MAX_ATTR_ITEMS = 4096  # longer array attributes are summarised, not copied into metadata


# ----------------------------------------------------------------------------------------------
# k-space -> image
# ----------------------------------------------------------------------------------------------
def ifft2c(kspace: np.ndarray) -> np.ndarray:
  """Centred orthonormal inverse 2-D FFT over the last two axes (fastMRI's ifft2c)."""
  axes = (-2, -1)
  return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=axes), axes=axes, norm='ortho'), axes=axes)


def fft2c(image: np.ndarray) -> np.ndarray:
  """Centred orthonormal forward 2-D FFT over the last two axes (fastMRI's fft2c)."""
  axes = (-2, -1)
  return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=axes), axes=axes, norm='ortho'), axes=axes)


def _crop_index(n: int, c: int) -> np.ndarray:
  """Indices into an unshifted FFT output of the centred `c` entries of its fftshift.

  fftshift(x)[j] = x[(j - n // 2) % n] and fastMRI's center_crop starts at (n - c) // 2, so taking
  these indices both shifts and crops, in one small copy.
  """
  start = (n - c) // 2
  return (np.arange(start, start + c) - n // 2) % n


def _magnitude(kspace: np.ndarray, crop: tuple[int, int], coils: bool) -> np.ndarray:
  """Cropped |ifft2c(kspace)|, root-sum-of-squares over axis -3 when `coils`; input precision.

  |ifft2c(k)| = fftshift(|ifft2(k)|): the input ifftshift is only a phase ramp, which the
  magnitude drops, so no shifted copy of the k-space is made. The 2-D FFT runs one axis at a time
  and the axis cropped more goes first, so the second FFT runs only on the lines that are kept
  (for 640x368 -> 320x320 knee data that halves the second pass).
  """
  h, w = kspace.shape[-2:]
  ch, cw = crop
  rows, cols = _crop_index(h, ch), _crop_index(w, cw)
  if ch * w <= cw * h:  # ch / h <= cw / w: rows are cropped more
    x = np.fft.ifft(kspace, axis=-2, norm='ortho').take(rows, axis=-2)
    x = np.fft.ifft(x, axis=-1, norm='ortho', out=x)
    rest, rest_axis = cols, -1
  else:
    x = np.fft.ifft(kspace, axis=-1, norm='ortho').take(cols, axis=-1)
    x = np.fft.ifft(x, axis=-2, norm='ortho', out=x)
    rest, rest_axis = rows, -2
  # re^2 + im^2 summed over coils: square the interleaved real view in place, reduce the (fast,
  # contiguous) coil axis, then add the real and imaginary planes. No sqrt-then-square via abs.
  parts = x.view(x.real.dtype)  # (..., h', 2 * w')
  np.square(parts, out=parts)
  if coils:
    parts = parts.sum(axis=-3)
  power = parts[..., 0::2] + parts[..., 1::2]
  np.sqrt(power, out=power)
  return power.take(rest, axis=rest_axis)


def _target_from_kspace(kspace: np.ndarray, crop: tuple[int, int] | None, coils: bool) -> np.ndarray:
  """float32 cropped RSS; single precision for complex64 k-space, double otherwise."""
  kspace = np.asarray(kspace)
  crop = tuple(kspace.shape[-2:]) if crop is None else crop
  if kspace.dtype != np.complex64:
    return _magnitude(kspace.astype(np.complex128, copy=False), crop, coils).astype(np.float32)
  with np.errstate(over='ignore'):
    out = _magnitude(kspace, crop, coils)
  if not np.all(np.isfinite(out)) and np.all(np.isfinite(kspace)):
    # float32 squares overflow above ~1.8e19; such (rare, unscaled) data needs double precision.
    out = _magnitude(kspace.astype(np.complex128), crop, coils).astype(np.float32)
  return out


def rss_from_kspace(kspace: np.ndarray, crop_size: tuple[int, int] | None = None) -> np.ndarray:
  """Root-sum-of-squares magnitude image(s) from k-space, centre-cropped like fastMRI.

  Args:
    kspace: complex (S, H, W) single-coil or (S, C, H, W) multi-coil. complex64 is computed in
      single precision (within ~1e-6 relative of double), anything else in double.
    crop_size: (h, w) centre crop of the image (fastMRI's center_crop offsets); dimensions larger
      than the image keep the whole image. None: no crop.

  Returns:
    float32 (S, h, w): |ifft2c| for single-coil, sqrt(sum_c |ifft2c_c|^2) for multi-coil.
  """
  kspace = np.asarray(kspace)
  if kspace.ndim not in (3, 4) or kspace.dtype.kind not in 'cfiu':
    raise ValueError(f'rss_from_kspace: expected complex (S, H, W) or (S, C, H, W), got {kspace.dtype} {kspace.shape}')
  return _target_from_kspace(kspace, _fit_crop(kspace.shape[-2:], crop_size), kspace.ndim == 4)


def _fit_crop(shape, crop_size) -> tuple[int, int] | None:
  if crop_size is None:
    return None
  return (min(int(crop_size[0]), int(shape[0])), min(int(crop_size[1]), int(shape[1])))


# ----------------------------------------------------------------------------------------------
# ISMRMRD header
# ----------------------------------------------------------------------------------------------
def _et_query(root: etree.Element, qlist) -> str | None:
  """fastMRI's et_query: nested descendant search in the ISMRMRD namespace; None when absent."""
  prefix = 'ismrmrd_namespace'
  query = '.' + ''.join(f'//{prefix}:{el}' for el in qlist)
  node = root.find(query, {prefix: ISMRMRD_NAMESPACE})
  return None if node is None else node.text


def parse_ismrmrd_header(xml, path='<ismrmrd_header>') -> dict:
  """The sizes fastMRI's SliceDataset reads from an ISMRMRD XML header.

  Returns:
    {'encoding_size': (x, y, z), 'recon_size': (x, y, z), 'padding_left': int | None,
     'padding_right': int | None}; the paddings come from encodingLimits/kspace_encoding_step_1
    (center, maximum) as fastMRI computes them, None when the header has no such limits.

  Raises:
    DataError naming `path` and 'ismrmrd_header': not XML, or a matrix size missing / not a
    positive integer.
  """
  where = f'{path}: key {HEADER_KEY!r}'
  if isinstance(xml, np.ndarray) and xml.size == 1:
    xml = xml.reshape(()).item()
  if not isinstance(xml, (bytes, str)):
    raise DataError(f'{where} holds {type(xml).__name__}, expected an XML string')
  try:
    root = etree.fromstring(xml)
  except etree.ParseError as err:
    raise DataError(f'{where} is not valid XML ({one_line(err)})') from err

  def integer(qlist, required: bool, positive: bool) -> int | None:
    text = _et_query(root, qlist)
    name = '/'.join(qlist)
    if text is None:
      if required:
        raise DataError(f'{where} has no {name} (namespace {ISMRMRD_NAMESPACE})')
      return None
    try:
      value = int(text.strip())
    except ValueError as err:
      raise DataError(f'{where}: {name} is {text!r}, not an integer') from err
    if positive and value < 1:
      raise DataError(f'{where}: {name} is {value}, expected >= 1')
    return value

  enc = ['encoding', 'encodedSpace', 'matrixSize']
  rec = ['encoding', 'reconSpace', 'matrixSize']
  enc_size = tuple(integer(enc + [a], True, True) for a in 'xyz')
  recon_size = tuple(integer(rec + [a], True, True) for a in 'xyz')
  lims = ['encoding', 'encodingLimits', 'kspace_encoding_step_1']
  center = integer(lims + ['center'], False, False)
  maximum = integer(lims + ['maximum'], False, False)
  padding_left = padding_right = None
  if center is not None and maximum is not None:
    padding_left = enc_size[1] // 2 - center
    padding_right = padding_left + maximum + 1
  return {
    'encoding_size': enc_size,
    'recon_size': recon_size,
    'padding_left': padding_left,
    'padding_right': padding_right,
  }


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------
def list_files(directory) -> list[pathlib.Path]:
  """Sorted *.h5 and *.hdf5 files directly in `directory` (not recursive).

  Raises:
    DataError: the directory is missing or holds no such files.
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise DataError(f'{directory}: no .h5 files in {directory} (the directory does not exist)')
  files = sorted(p for p in directory.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
  if not files:
    raise DataError(f'{directory}: no .h5 files in {directory} (the directory is empty of .h5/.hdf5)')
  return files


def list_volume_files(root, split: str) -> list[pathlib.Path]:
  """Sorted root/split/*.h5 and *.hdf5 files (see list_files)."""
  return list_files(pathlib.Path(root) / split)


def _plain(value: Any) -> Any:
  """An HDF5 attribute as plain Python (str, int, float, bool, lists of them)."""
  if isinstance(value, bytes):
    return value.decode('utf-8', 'replace')
  if isinstance(value, np.ndarray):
    if value.size > _MAX_ATTR_ITEMS:
      return f'<array {value.dtype} {value.shape}>'
    return _plain(value.tolist())
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, np.generic):
    return _plain(value.item())
  return value


def _dataset(f: h5py.File, path: pathlib.Path, key: str) -> h5py.Dataset:
  try:
    obj = f[key]
  except Exception as err:
    raise DataError(f'{path}: cannot read key {key!r} ({one_line(err)})') from err
  if not isinstance(obj, h5py.Dataset):
    raise DataError(f'{path}: key {key!r} is a {type(obj).__name__}, not a dataset')
  return obj


def _choose_target(f: h5py.File, path: pathlib.Path, target_key: str) -> str:
  keys = sorted(f.keys())
  if target_key == 'auto':
    for key in TARGET_KEYS + (KSPACE_KEY,):
      if key in f:
        return key
    raise DataError(f'{path}: none of the keys {list(TARGET_KEYS + (KSPACE_KEY,))} found (the file has keys {keys})')
  if target_key not in f:
    raise DataError(f'{path}: key {target_key!r} (data.target_key) not found (the file has keys {keys})')
  return target_key


def _check_layout(path: pathlib.Path, key: str, shape: tuple, dtype: np.dtype) -> None:
  if key == KSPACE_KEY:
    if len(shape) not in (3, 4):
      raise DataError(
        f'{path}: key {key!r} has shape {shape} (rank {len(shape)}); expected '
        '(slices, H, W) single-coil or (slices, coils, H, W) multi-coil'
      )
    if dtype.kind != 'c':
      raise DataError(f'{path}: key {key!r} has dtype {dtype}; expected complex k-space')
  else:
    if len(shape) != 3:
      raise DataError(f'{path}: key {key!r} has shape {shape} (rank {len(shape)}); expected (slices, H, W)')
    if dtype.kind not in 'fiu':
      raise DataError(f'{path}: key {key!r} has dtype {dtype}; expected real magnitudes')
  if min(shape) < 1:
    raise DataError(f'{path}: key {key!r} has an empty shape {shape}')


def _attr_max(attrs: dict) -> float | None:
  value = attrs.get('max')
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  return None


# ----------------------------------------------------------------------------------------------
# the source
# ----------------------------------------------------------------------------------------------
class FastMRISliceSource(SliceSource):
  """Random-access source (grain `RandomAccessDataSource`) of 2-D slices of fastMRI volumes.

  Element i: {'image': float32 (H, W) in [0, 1] (target / volume max), 'volume': str (file stem),
  'slice': int}. Every file is validated at construction (see the module docstring for what
  `scan` checks); a bad file fails there with a one-line DataError, or is skipped and counted
  with skip_bad_files. Files whose attrs['acquisition'] is not in a non-empty `acquisitions` are
  left out and counted in `excluded`.

  HDF5 handles are opened lazily per process and dropped when pickled or after fork, so the
  source can be sent to grain worker processes.
  """

  format_name = 'fastmri'

  def __init__(
    self,
    files: Iterable,
    target_key: str = 'auto',
    skip_bad_files: bool = False,
    acquisitions: Iterable[str] = (),
    scan: str = 'full',
    crop_to_recon_size: bool = True,
    min_shape: tuple | None = None,
  ):
    if target_key not in VALID_TARGET_KEYS:
      raise DataError(f'data.target_key: {target_key!r} is not one of {list(VALID_TARGET_KEYS)}')
    if scan not in SCANS:
      raise DataError(f'data.scan: {scan!r} is not one of {list(SCANS)}')
    if isinstance(acquisitions, (str, bytes)):  # one name, not its characters
      acquisitions = (acquisitions,)
    self.target_key = target_key
    self.acquisitions = tuple(str(a) for a in acquisitions)
    self.scan = scan
    self.crop_to_recon_size = bool(crop_to_recon_size)
    self._handles: dict[int, h5py.File] = {}  # per process: volume number -> open file
    super().__init__(files, skip_bad_files=skip_bad_files, min_shape=min_shape)
    small = [
      v
      for v in self.volumes
      if v.metadata['crop_size'] is not None and tuple(v.metadata['crop_size']) != tuple(v.metadata['recon_size'])
    ]
    if small:
      logging.info(
        '%d k-space volume(s) are smaller than their header recon size along a '
        'dimension, which is kept whole (first: %s: image %s, recon %s)',
        len(small),
        small[0].path,
        small[0].shape,
        small[0].metadata['recon_size'],
      )

  # --- SliceSource --------------------------------------------------------------------------
  def inspect(self, path: pathlib.Path) -> VolumeInfo:
    """Opens and checks one file; raises DataError naming what is wrong, or VolumeExcluded."""
    path = pathlib.Path(path)
    if not path.is_file():
      raise DataError(f'{path}: file does not exist')
    try:
      f = h5py.File(path, 'r')
    except Exception as err:  # h5py raises OSError for non-HDF5, truncated, unreadable files
      raise DataError(f'{path}: cannot open as HDF5 ({one_line(err)})') from err
    with f:
      try:
        attrs = {str(k): _plain(v) for k, v in f.attrs.items()}
      except Exception as err:
        raise DataError(f'{path}: cannot read the file attributes ({one_line(err)})') from err
      acquisition = attrs.get('acquisition')
      if self.acquisitions and acquisition not in self.acquisitions:
        why = 'has no acquisition attribute' if acquisition is None else f'acquisition {acquisition!r}'
        raise VolumeExcluded(f'{why}, not one of data.acquisitions {list(self.acquisitions)}')
      key = _choose_target(f, path, self.target_key)
      ds = _dataset(f, path, key)
      try:
        shape, dtype = tuple(int(n) for n in ds.shape), ds.dtype
      except Exception as err:
        raise DataError(f'{path}: cannot read key {key!r} ({one_line(err)})') from err
      _check_layout(path, key, shape, dtype)
      header = {'encoding_size': None, 'recon_size': None, 'padding_left': None, 'padding_right': None}
      if HEADER_KEY in f:
        try:
          raw_header = _dataset(f, path, HEADER_KEY)[()]
        except DataError:
          raise
        except Exception as err:
          raise DataError(f'{path}: cannot read key {HEADER_KEY!r} ({one_line(err)})') from err
        header = parse_ismrmrd_header(raw_header, path)
        header['recon_size'] = header['recon_size'][:2]
      crop = None
      if key == KSPACE_KEY and self.crop_to_recon_size and header['recon_size'] is not None:
        crop = _fit_crop(shape[-2:], header['recon_size'])
      out_shape = crop or tuple(shape[-2:])
      if self.scan == 'full':
        vmax = self._scan_max(path, ds, key, shape, dtype, crop)
        max_source = 'data'
      else:
        vmax = _attr_max(attrs)
        if vmax is None or not math.isfinite(vmax) or vmax <= 0:
          raise DataError(
            f"{path}: data.scan=header needs a positive finite attrs['max'] (the "
            f'file has {attrs.get("max")!r}); use data.scan=full to compute the '
            'maximum from the data'
          )
        max_source = 'attrs'
    metadata = {
      'max': vmax,
      'max_source': max_source,
      'target': key,
      'attrs': attrs,
      'attrs_max': _attr_max(attrs),
      'acquisition': None if acquisition is None else str(acquisition),
      'patient_id': None if attrs.get('patient_id') is None else str(attrs['patient_id']),
      **header,
      'crop_size': crop,
      'num_coils': shape[1] if (key == KSPACE_KEY and len(shape) == 4) else None,
    }
    return VolumeInfo(path=path, name=path.stem, num_slices=shape[0], shape=tuple(out_shape), metadata=metadata)

  def read_target(self, v: int, s: int) -> np.ndarray:
    """Slice s of volume v before normalisation: the stored reconstruction, or the cropped RSS."""
    vol = self.volumes[v]
    raw = self._read(v, s)
    if vol.metadata['target'] == KSPACE_KEY:
      return _target_from_kspace(raw, vol.metadata['crop_size'], raw.ndim == 3)
    return raw

  def read_slice(self, v: int, s: int) -> np.ndarray:
    image = self.read_target(v, s) / self.volumes[v].metadata['max']
    return image.astype(np.float32, copy=False)

  def close(self) -> None:
    with self._lock:
      for f in self._handles.values():
        try:
          f.close()
        except Exception:  # pylint: disable=broad-except
          pass
      self._handles = {}

  def _handle_attrs(self) -> tuple[str, ...]:
    return ('_handles',)

  def __repr__(self) -> str:
    return (
      f'FastMRISliceSource({len(self.volumes)} volumes, {len(self)} slices, '
      f'target_key={self.target_key!r}, scan={self.scan!r}, skipped={len(self.skipped)}, '
      f'excluded={len(self.excluded)})'
    )

  # --- helpers ------------------------------------------------------------------------------
  @staticmethod
  def _scan_max(
    path: pathlib.Path, ds: h5py.Dataset, key: str, shape: tuple, dtype: np.dtype, crop: tuple[int, int] | None
  ) -> float:
    """Reads the whole target: finiteness, sign and its maximum (of the cropped RSS for k-space)."""
    num_slices = shape[0]
    per_slice_bytes = max(1, math.prod(shape[1:]) * dtype.itemsize)
    step = max(1, _SCAN_CHUNK_BYTES // per_slice_bytes)
    vmax, vmin = -np.inf, np.inf
    for start in range(0, num_slices, step):
      try:
        raw = ds[start : start + step]
      except Exception as err:
        raise DataError(
          f'{path}: cannot read key {key!r} slices {start}..{min(start + step, num_slices) - 1} ({one_line(err)})'
        ) from err
      # Non-finite k-space makes its whole coil image non-finite, so the (smaller) target is
      # checked first and the raw data only looked at to name the slice.
      if key == KSPACE_KEY:  # slice by slice: smaller FFT temporaries run faster
        target = np.stack([_target_from_kspace(r, crop, raw.ndim == 4) for r in raw])
      else:
        target = raw
      if not np.all(np.isfinite(target)):
        finite = np.isfinite(raw).reshape(raw.shape[0], -1).all(axis=1)
        if not finite.all():
          bad = int(np.argmin(finite)) + start
          raise DataError(f'{path}: key {key!r} has non-finite values (first in slice {bad})')
        raise DataError(f'{path}: key {key!r} gives a non-finite target (overflow)')
      vmax = max(vmax, float(np.max(target)))
      vmin = min(vmin, float(np.min(target)))
    if vmin < 0:
      raise DataError(f'{path}: key {key!r} has negative values (min {vmin:g}); expected magnitudes')
    if not vmax > 0:
      raise DataError(f'{path}: key {key!r} has maximum {vmax:g}; expected > 0 (an all-zero volume)')
    return vmax

  def _read(self, v: int, s: int) -> np.ndarray:
    vol = self.volumes[v]
    key = vol.metadata['target']
    with self._lock:  # h5py serialises reads anyway; the FFT runs outside the lock
      f = self._handles.get(v)
      if f is None:
        try:
          f = h5py.File(vol.path, 'r')
        except Exception as err:
          raise DataError(f'{vol.path}: cannot open as HDF5 ({one_line(err)})') from err
        self._handles[v] = f
      try:
        return f[key][s]
      except Exception as err:
        raise DataError(f'{vol.path}: cannot read key {key!r} slice {s} ({one_line(err)})') from err
