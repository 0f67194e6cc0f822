"""NIfTI volumes (.nii, .nii.gz) as a random-access source of 2-D slices.

Orientation: every volume is read in RAS+ order (what `nib.as_closest_canonical` gives: array axes
0, 1, 2 run closest to L->R, P->A, I->S), so `slice_axis` names the same anatomical axis whatever
the stored affine: 0 = sagittal, 1 = coronal, 2 = axial. A slice along axis a is the RAS array
with axis a removed, the two remaining axes kept in RAS order (an axial slice is (x, y): rows
L->R, columns P->A). Slices are not rotated or flipped for display; transpose and flip for that.

Intensities: each volume is normalised on its own by percentile clipping,
  image = clip((x - lo) / (hi - lo), 0, 1),   lo, hi = np.percentile(volume, percentiles),
with lo/hi computed once when the file is inspected. The file's scl_slope/scl_inter are applied
(by nibabel) before that. Slices whose foreground (pixels above 0.1 after normalisation) is less
than `min_foreground` of the slice are left out of the index.

Reading: `.nii` files are memory-mapped and one slice reads only that slice's bytes. `.nii.gz` has
no random access, so whole decompressed, normalised volumes are kept in a small per-process LRU
cache (decompress to .nii when there are many volumes and reads are shuffled).
"""

from __future__ import annotations

import pathlib
import threading
from typing import Iterable, Sequence

from absl import logging
import nibabel as nib
from nibabel import orientations
import numpy as np

from mrisr_jax.data.errors import DataError, one_line
from mrisr_jax.data.slice_source import SliceSource, VolumeInfo

SUFFIXES = ('.nii', '.nii.gz')
# A pixel is foreground when its normalised value is above this.
_FOREGROUND_LEVEL = 0.1
_AXIS_NAMES = ('sagittal (x, L->R)', 'coronal (y, P->A)', 'axial (z, I->S)')


def _suffix(path: pathlib.Path) -> str | None:
  name = path.name.lower()
  for suffix in SUFFIXES:
    if name.endswith(suffix) and len(name) > len(suffix):
      return suffix
  return None


def _is_gz(path: pathlib.Path) -> bool:
  return _suffix(path) == '.nii.gz'


def volume_name(path: pathlib.Path) -> str:
  """The file name without .nii / .nii.gz."""
  suffix = _suffix(path)
  return path.name[: -len(suffix)] if suffix else path.stem


def list_files(directory) -> list[pathlib.Path]:
  """Sorted *.nii and *.nii.gz files directly in `directory` (not recursive).

  Raises:
    DataError: the directory is missing or holds no such files.
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise DataError(f'{directory}: no .nii/.nii.gz files in {directory} (the directory does not exist)')
  files = sorted(p for p in directory.iterdir() if _suffix(p) and p.is_file())
  if not files:
    raise DataError(f'{directory}: no .nii/.nii.gz files in {directory}')
  return files


def normalise(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """float32 clip((x - lo) / (hi - lo), 0, 1), elementwise (so a slice matches its volume)."""
  x = np.asarray(x, dtype=np.float32)
  out = (x - np.float32(lo)) / np.float32(hi - lo)
  return np.clip(out, 0.0, 1.0, out=out)


def _load(path: pathlib.Path):
  """nib.load with DataError; `.nii` data stays on disk (memory-mapped proxy)."""
  if not path.is_file():
    raise DataError(f'{path}: file does not exist')
  if not _suffix(path):
    raise DataError(f'{path}: not a .nii or .nii.gz file')
  try:
    img = nib.load(str(path))
  except Exception as err:  # nibabel raises ImageFileError, OSError, EOFError, ValueError, ...
    raise DataError(f'{path}: cannot read as NIfTI ({one_line(err)})') from err
  if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
    raise DataError(f'{path}: is a {type(img).__name__}, not a NIfTI image')
  return img


def _stored_layout(img, path: pathlib.Path) -> tuple[tuple, np.ndarray]:
  """(3-D stored shape, RAS orientation) of an image; DataError for non-3-D or bad affines."""
  shape = tuple(int(n) for n in img.shape)
  if len(shape) < 3 or any(n != 1 for n in shape[3:]):
    raise DataError(
      f'{path}: has shape {shape}; expected a 3-D volume (X, Y, Z) (4-D time series and 2-D images are not supported)'
    )
  if min(shape[:3]) < 1:
    raise DataError(f'{path}: has an empty shape {shape}')
  dtype = img.get_data_dtype()
  if dtype.kind not in 'biuf':
    raise DataError(f'{path}: has data type {dtype}; expected real magnitudes')
  ornt = orientations.io_orientation(img.affine)
  if np.isnan(ornt).any():
    raise DataError(
      f'{path}: has a degenerate affine (an axis with no direction); cannot '
      f'reorient to RAS: {np.round(img.affine, 4).tolist()}'
    )
  return shape[:3], ornt


def _read_stored(img, path: pathlib.Path, slicer: tuple, what: str) -> np.ndarray:
  """float32 stored data (scaling applied); extra singleton dimensions indexed away."""
  slicer = tuple(slicer) + (0,) * (len(img.shape) - 3)
  try:
    # img.dataobj[...] applies scl_slope/inter the same way for a slab and the whole volume, so
    # .nii (slab) and .nii.gz (whole volume) reads give identical values.
    return np.array(img.dataobj[slicer], dtype=np.float32)
  except Exception as err:  # truncated files, bad gzip streams, short memmaps
    raise DataError(f'{path}: cannot read the {what} ({one_line(err)})') from err


def _without(values: Sequence, axis: int) -> tuple:
  return tuple(v for i, v in enumerate(values) if i != axis)


class NiftiSliceSource(SliceSource):
  """Random-access source of 2-D slices of 3-D NIfTI volumes, reoriented to RAS.

  Every file is loaded once at construction to validate it (3-D, finite, has signal), compute its
  normalisation percentiles and find the slices with signal; see the module docstring.

  metadata per volume: voxel_size (RAS zooms), slice_voxel_size (zooms of the two in-plane axes of
  a returned slice), affine (RAS affine, nested lists), orientation (axis codes of the stored
  affine, e.g. ('L', 'P', 'S')), shape (RAS shape), slice_axis, lo, hi, slice_index (the kept
  indices along slice_axis; element 'slice' s is slice slice_index[s]).
  """

  format_name = 'nifti'

  def __init__(
    self,
    files: Iterable,
    *,
    slice_axis: int = 2,
    percentiles: Sequence[float] = (0.0, 99.5),
    min_foreground: float = 0.01,
    skip_bad_files: bool = False,
    cache_volumes: int = 4,
    min_shape: tuple | None = None,
  ):
    if slice_axis not in (0, 1, 2):
      raise DataError(f'NiftiSliceSource: slice_axis {slice_axis!r} must be 0 (sagittal), 1 (coronal) or 2 (axial)')
    try:
      p_lo, p_hi = (float(p) for p in percentiles)
    except (TypeError, ValueError) as err:
      raise DataError(f'NiftiSliceSource: percentiles {percentiles!r} must be two numbers ({one_line(err)})') from err
    if not 0.0 <= p_lo < p_hi <= 100.0:
      raise DataError(f'NiftiSliceSource: percentiles {percentiles!r} must satisfy 0 <= low < high <= 100')
    if not 0.0 <= float(min_foreground) <= 1.0:
      raise DataError(f'NiftiSliceSource: min_foreground {min_foreground!r} must be in [0, 1]')
    if int(cache_volumes) < 0:
      raise DataError(f'NiftiSliceSource: cache_volumes {cache_volumes!r} must be >= 0')
    self.slice_axis = int(slice_axis)
    self.percentiles = (p_lo, p_hi)
    self.min_foreground = float(min_foreground)
    self.cache_volumes = int(cache_volumes)
    # Per-process state (emptied when pickled and after fork, see _handle_attrs):
    self._images: dict = {}  # v -> (nibabel image, RAS orientation) of .nii files
    self._cache: dict = {}  # v -> read-only normalised RAS volume (.nii.gz), in LRU order
    self._loading: dict = {}  # v -> lock held while one thread decompresses volume v
    super().__init__(files, skip_bad_files=skip_bad_files, min_shape=min_shape)
    num_gz = sum(_is_gz(vol.path) for vol in self.volumes)
    if num_gz > self.cache_volumes:
      logging.warning(
        '%d of %d NIfTI volumes are .nii.gz but cache_volumes=%d: gzip has no random '
        'access, so shuffled reads decompress whole volumes again and again. '
        'Decompress them to .nii (e.g. `gunzip -k *.nii.gz`) for fast reads.',
        num_gz,
        len(self.volumes),
        self.cache_volumes,
      )

  # --- SliceSource ----------------------------------------------------------------------------
  def inspect(self, path: pathlib.Path) -> VolumeInfo:
    path = pathlib.Path(path)
    img = _load(path)
    stored_shape, ornt = _stored_layout(img, path)
    data = _read_stored(img, path, (slice(None),) * 3, 'volume')
    finite = np.isfinite(data)
    if not finite.all():
      first = tuple(int(i) for i in np.unravel_index(np.argmax(~finite), data.shape))
      raise DataError(
        f'{path}: has {int(data.size - finite.sum())} non-finite value(s) (NaN/inf; first at stored voxel {first})'
      )
    del finite
    vmin, vmax = float(data.min()), float(data.max())
    if vmin == vmax:
      raise DataError(f'{path}: has no signal (every voxel is {vmin:g})')
    lo, hi = (float(v) for v in np.percentile(data, self.percentiles))
    if not hi > lo:
      raise DataError(
        f'{path}: has no signal between the percentiles {self.percentiles} (both '
        f'are {lo:g}; the volume is almost constant)'
      )
    # Negative values (interpolation ringing) are fine: they clip to 0 below lo.
    ras = orientations.apply_orientation(data, ornt)
    del data
    a = self.slice_axis
    other = _without(range(3), a)
    fraction = np.mean(normalise(ras, lo, hi) > _FOREGROUND_LEVEL, axis=other)
    keep = [int(k) for k in np.flatnonzero(fraction >= self.min_foreground)]
    if not keep:
      raise DataError(
        f'{path}: no slice has signal above {_FOREGROUND_LEVEL} in at least '
        f'{self.min_foreground:g} of its pixels along slice_axis {a} '
        f'({_AXIS_NAMES[a]}; best {float(fraction.max()):.3g}); lower min_foreground'
      )
    ras_shape = tuple(int(n) for n in ras.shape)
    # as_closest_canonical's affine and zooms, without loading the data a second time.
    ras_affine = img.affine @ orientations.inv_ornt_aff(ornt, stored_shape)
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    ras_zooms = [0.0] * 3
    for i in range(3):
      ras_zooms[int(ornt[i, 0])] = zooms[i]
    metadata = {
      'voxel_size': tuple(ras_zooms),
      'slice_voxel_size': _without(ras_zooms, a),
      'affine': np.asarray(ras_affine, dtype=np.float64).tolist(),
      'orientation': tuple(orientations.aff2axcodes(img.affine)),
      'shape': ras_shape,
      'slice_axis': a,
      'lo': lo,
      'hi': hi,
      'slice_index': keep,
    }
    return VolumeInfo(
      path=path, name=volume_name(path), num_slices=len(keep), shape=_without(ras_shape, a), metadata=metadata
    )

  def read_slice(self, v: int, s: int) -> np.ndarray:
    vol = self.volumes[v]
    k = vol.metadata['slice_index'][s]
    if _is_gz(vol.path):
      return np.take(self._cached_volume(v), k, axis=self.slice_axis)  # a copy
    return self._read_nii_slice(v, k)

  def close(self) -> None:
    with self._lock:
      self._images, self._cache, self._loading = {}, {}, {}

  def _handle_attrs(self) -> tuple[str, ...]:
    return ('_images', '_cache', '_loading')

  # --- whole volumes ----------------------------------------------------------------------------
  def read_normalised_volume(self, v: int) -> np.ndarray:
    """float32 normalised RAS volume (X, Y, Z) of volume `v`, all slices (also the skipped ones).

    .nii.gz volumes come through the LRU cache; .nii volumes are read from disk on every call.
    """
    self._check_process()
    vol = self.volumes[v]
    if _is_gz(vol.path):
      return np.array(self._cached_volume(v))
    return self._load_normalised(v)

  # --- helpers ----------------------------------------------------------------------------------
  def _open(self, v: int):
    """(image, RAS orientation) of .nii volume v, opened once per process."""
    with self._lock:
      entry = self._images.get(v)
    if entry is None:
      vol = self.volumes[v]
      img = _load(vol.path)
      stored_shape, ornt = _stored_layout(img, vol.path)
      ras_shape = [0] * 3
      for i in range(3):
        ras_shape[int(ornt[i, 0])] = stored_shape[i]
      if tuple(ras_shape) != tuple(vol.metadata['shape']):
        raise DataError(
          f'{vol.path}: has RAS shape {tuple(ras_shape)} now but '
          f'{tuple(vol.metadata["shape"])} when inspected (the file changed)'
        )
      entry = (img, ornt)
      with self._lock:
        self._images[v] = entry
    return entry

  def _read_nii_slice(self, v: int, k: int) -> np.ndarray:
    """RAS slice k along slice_axis, reading only the matching stored slab."""
    vol = self.volumes[v]
    img, ornt = self._open(v)
    a = self.slice_axis
    i = int(np.flatnonzero(ornt[:, 0] == a)[0])  # the stored axis that becomes RAS axis a
    n = int(img.shape[i])
    stored_k = n - 1 - k if ornt[i, 1] < 0 else k
    slicer = [slice(None)] * 3
    slicer[i] = slice(stored_k, stored_k + 1)
    slab = _read_stored(img, vol.path, tuple(slicer), f'slice {k} along axis {a}')
    # Reorienting the (singleton-thick) slab applies the same transpose and in-plane flips as
    # reorienting the whole volume; the flip of the singleton axis is a no-op.
    ras = orientations.apply_orientation(slab, ornt)
    return normalise(np.take(ras, 0, axis=a), vol.metadata['lo'], vol.metadata['hi'])

  def _load_normalised(self, v: int) -> np.ndarray:
    vol = self.volumes[v]
    img = _load(vol.path)
    _, ornt = _stored_layout(img, vol.path)
    data = _read_stored(img, vol.path, (slice(None),) * 3, 'volume')
    ras = normalise(orientations.apply_orientation(data, ornt), vol.metadata['lo'], vol.metadata['hi'])
    if ras.shape != tuple(vol.metadata['shape']):
      raise DataError(
        f'{vol.path}: has RAS shape {ras.shape} now but '
        f'{tuple(vol.metadata["shape"])} when inspected (the file changed)'
      )
    return np.ascontiguousarray(ras)

  def _cached_volume(self, v: int) -> np.ndarray:
    """Read-only normalised RAS volume v from the LRU cache (decompressed once per miss)."""
    with self._lock:
      arr = self._cache.pop(v, None)
      if arr is not None:
        self._cache[v] = arr  # re-insert: dicts keep order, the end is most recent
        return arr
      gate = self._loading.setdefault(v, threading.Lock())
    with gate:  # one thread decompresses; the others wait for its result
      with self._lock:
        arr = self._cache.get(v)
      if arr is not None:
        return arr
      arr = self._load_normalised(v)
      arr.flags.writeable = False
      with self._lock:
        if self.cache_volumes > 0:
          self._cache[v] = arr
          while len(self._cache) > self.cache_volumes:
            del self._cache[next(iter(self._cache))]
        self._loading.pop(v, None)
    return arr
