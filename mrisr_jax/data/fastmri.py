"""fastMRI-style HDF5 volumes as a random-access source of 2-D slices.

File schema (https://github.com/facebookresearch/fastMRI): one volume per file,
  kspace                 complex (slices, H, W) single-coil or (slices, coils, H, W) multi-coil
  reconstruction_rss     float (slices, H, W)   root-sum-of-squares magnitude (optional)
  reconstruction_esc     float (slices, H, W)   single-coil emulated recon (optional)
  attrs: max, norm, acquisition, patient_id, ...

k-space convention (the one fastMRI uses, `fastmri.fft2c` / `fastmri.ifft2c`):
  image = fftshift(ifft2(ifftshift(kspace), norm='ortho'))   over the last two axes.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import threading
from typing import Any, Iterable, Sequence

from absl import logging
import h5py
import numpy as np

from mrisr_jax.data.errors import DataError, one_line

TARGET_KEYS = ('reconstruction_rss', 'reconstruction_esc')
KSPACE_KEY = 'kspace'
VALID_TARGET_KEYS = ('auto',) + TARGET_KEYS + (KSPACE_KEY,)
_SUFFIXES = ('.h5', '.hdf5')
_SCAN_CHUNK_BYTES = 64 << 20   # read this much per step while validating a volume


def ifft2c(kspace: np.ndarray) -> np.ndarray:
  """Centred orthonormal inverse 2-D FFT over the last two axes (fastMRI's ifft2c)."""
  axes = (-2, -1)
  return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=axes), axes=axes, norm='ortho'),
                         axes=axes)


def fft2c(image: np.ndarray) -> np.ndarray:
  """Centred orthonormal forward 2-D FFT over the last two axes (fastMRI's fft2c)."""
  axes = (-2, -1)
  return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=axes), axes=axes, norm='ortho'),
                         axes=axes)


def rss_from_kspace(kspace: np.ndarray) -> np.ndarray:
  """Root-sum-of-squares magnitude image(s) from k-space.

  Args:
    kspace: complex (S, H, W) single-coil or (S, C, H, W) multi-coil.

  Returns:
    float32 (S, H, W): |ifft2c| for single-coil, sqrt(sum_c |ifft2c_c|^2) for multi-coil.
  """
  kspace = np.asarray(kspace)
  img = ifft2c(kspace.astype(np.complex128, copy=False))
  if kspace.ndim == 3:
    return np.abs(img).astype(np.float32)
  if kspace.ndim == 4:
    return np.sqrt(np.sum(img.real ** 2 + img.imag ** 2, axis=1)).astype(np.float32)
  raise ValueError(f'rss_from_kspace: expected (S, H, W) or (S, C, H, W), got shape {kspace.shape}')


def list_volume_files(root, split: str) -> list[pathlib.Path]:
  """Sorted root/split/*.h5 and *.hdf5 files.

  Raises:
    DataError: the directory is missing or holds no such files.
  """
  directory = pathlib.Path(root) / split
  if not directory.is_dir():
    raise DataError(f'{directory}: no .h5 files in {directory} (the directory does not exist)')
  files = sorted(p for p in directory.iterdir()
                 if p.suffix.lower() in _SUFFIXES and p.is_file())
  if not files:
    raise DataError(f'{directory}: no .h5 files in {directory} (the directory is empty of .h5/.hdf5)')
  return files


@dataclasses.dataclass(frozen=True)
class VolumeInfo:
  """Metadata of one validated volume."""
  path: pathlib.Path
  name: str             # file stem
  num_slices: int
  max: float            # maximum of the target over the whole volume (computed from the data)
  attrs: dict           # the file's HDF5 attributes as plain Python values
  target: str           # 'reconstruction_rss' | 'reconstruction_esc' | 'kspace' (RSS computed)
  shape: tuple          # (H, W) of one target slice


def _plain(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode('utf-8', 'replace')
  if isinstance(value, np.ndarray):
    return value.tolist() if value.size <= 64 else f'<array {value.dtype} {value.shape}>'
  if isinstance(value, np.generic):
    return value.item()
  return value


def _dataset(f: h5py.File, path: pathlib.Path, key: str) -> h5py.Dataset:
  obj = f[key]
  if not isinstance(obj, h5py.Dataset):
    raise DataError(f'{path}: key {key!r} is a {type(obj).__name__}, not a dataset')
  return obj


def _choose_target(f: h5py.File, path: pathlib.Path, target_key: str) -> str:
  keys = sorted(f.keys())
  if target_key == 'auto':
    for key in TARGET_KEYS + (KSPACE_KEY,):
      if key in f:
        return key
    raise DataError(f'{path}: none of the keys {list(TARGET_KEYS + (KSPACE_KEY,))} found '
                    f'(the file has keys {keys})')
  if target_key not in f:
    raise DataError(f'{path}: key {target_key!r} (data.target_key) not found '
                    f'(the file has keys {keys})')
  return target_key


def _inspect_volume(path: pathlib.Path, target_key: str) -> VolumeInfo:
  """Opens, checks and scans one file; raises DataError naming what is wrong."""
  if not path.is_file():
    raise DataError(f'{path}: file does not exist')
  try:
    f = h5py.File(path, 'r')
  except Exception as err:  # h5py raises OSError for non-HDF5, truncated, unreadable files
    raise DataError(f'{path}: cannot open as HDF5 ({one_line(err)})') from err
  with f:
    key = _choose_target(f, path, target_key)
    try:
      ds = _dataset(f, path, key)
      shape, dtype = tuple(ds.shape), ds.dtype
    except DataError:
      raise
    except Exception as err:
      raise DataError(f'{path}: cannot read key {key!r} ({one_line(err)})') from err
    if key == KSPACE_KEY:
      if len(shape) not in (3, 4):
        raise DataError(f'{path}: key {key!r} has shape {shape} (rank {len(shape)}); expected '
                        '(slices, H, W) single-coil or (slices, coils, H, W) multi-coil')
      if dtype.kind != 'c':
        raise DataError(f'{path}: key {key!r} has dtype {dtype}; expected complex k-space')
    else:
      if len(shape) != 3:
        raise DataError(f'{path}: key {key!r} has shape {shape} (rank {len(shape)}); '
                        'expected (slices, H, W)')
      if dtype.kind not in 'fiu':
        raise DataError(f'{path}: key {key!r} has dtype {dtype}; expected real magnitudes')
    if min(shape) < 1:
      raise DataError(f'{path}: key {key!r} has an empty shape {shape}')
    num_slices = shape[0]
    # Scan the whole target: finiteness, sign and the per-volume maximum.
    per_slice_bytes = max(1, int(np.prod(shape[1:])) * dtype.itemsize)
    step = max(1, _SCAN_CHUNK_BYTES // per_slice_bytes)
    vmax, vmin = -np.inf, np.inf
    for start in range(0, num_slices, step):
      try:
        raw = ds[start:start + step]
      except Exception as err:
        raise DataError(f'{path}: cannot read key {key!r} slices {start}..'
                        f'{min(start + step, num_slices) - 1} ({one_line(err)})') from err
      if not np.all(np.isfinite(raw)):
        bad = int(np.argmax(~np.isfinite(raw).reshape(raw.shape[0], -1).all(axis=1))) + start
        raise DataError(f'{path}: key {key!r} has non-finite values (first in slice {bad})')
      target = rss_from_kspace(raw) if key == KSPACE_KEY else raw
      if not np.all(np.isfinite(target)):
        raise DataError(f'{path}: key {key!r} gives a non-finite target (overflow)')
      vmax = max(vmax, float(np.max(target)))
      vmin = min(vmin, float(np.min(target)))
    if vmin < 0:
      raise DataError(f'{path}: key {key!r} has negative values (min {vmin:g}); expected magnitudes')
    if not vmax > 0:
      raise DataError(f'{path}: key {key!r} has maximum {vmax:g}; expected > 0 (an all-zero volume)')
    try:
      attrs = {str(k): _plain(v) for k, v in f.attrs.items()}
    except Exception as err:
      raise DataError(f'{path}: cannot read the file attributes ({one_line(err)})') from err
  return VolumeInfo(path=path, name=path.stem, num_slices=num_slices, max=vmax, attrs=attrs,
                    target=key, shape=tuple(shape[-2:]))


class FastMRISliceSource:
  """Random-access source (grain `RandomAccessDataSource`) of 2-D slices of fastMRI volumes.

  Every file is validated at construction (opened, target chosen, rank/dtype checked and
  the whole target scanned for non-finite values and its maximum), so a bad file fails here
  with a one-line DataError instead of reaching training.

  Element i: {'image': float32 (H, W) in [0, 1] (target / volume max),
              'volume': str (file stem), 'slice': int}.

  HDF5 handles are opened lazily per process (and dropped when pickled), so the source can
  be sent to grain worker processes.
  """

  def __init__(self, files: Iterable, target_key: str = 'auto', skip_bad_files: bool = False):
    if target_key not in VALID_TARGET_KEYS:
      raise DataError(f'data.target_key: {target_key!r} is not one of {list(VALID_TARGET_KEYS)}')
    self.target_key = target_key
    self.skip_bad_files = bool(skip_bad_files)
    self.volumes: list[VolumeInfo] = []
    self.skipped: list[tuple[pathlib.Path, str]] = []
    files = [pathlib.Path(p) for p in files]
    if not files:
      raise DataError('FastMRISliceSource: no files given')
    for path in files:
      try:
        self.volumes.append(_inspect_volume(path, target_key))
      except DataError as err:
        if not self.skip_bad_files:
          raise
        self.skipped.append((path, str(err)))
    if self.skipped:
      logging.warning('skipped %d bad data file(s) of %d (skip_bad_files=True); first: %s',
                      len(self.skipped), len(files), self.skipped[0][1])
    if not self.volumes:
      raise DataError(f'{files[0].parent}: no usable volumes: all {len(files)} file(s) are bad '
                      f'(first: {self.skipped[0][1]})')
    counts = np.array([v.num_slices for v in self.volumes], dtype=np.int64)
    self._starts = np.concatenate([[0], np.cumsum(counts)])
    self._lock = threading.Lock()
    self._handles: dict[int, h5py.File] = {}
    self._pid = os.getpid()

  # --- grain RandomAccessDataSource protocol ---------------------------------------------
  def __len__(self) -> int:
    return int(self._starts[-1])

  def __getitem__(self, index: int) -> dict:
    i = int(index)
    n = len(self)
    if i < 0:
      i += n
    if not 0 <= i < n:
      raise IndexError(f'FastMRISliceSource: index {index} out of range for {n} slices')
    v = int(np.searchsorted(self._starts, i, side='right')) - 1
    s = i - int(self._starts[v])
    vol = self.volumes[v]
    raw = self._read(v, s)
    target = rss_from_kspace(raw[None])[0] if vol.target == KSPACE_KEY else raw
    image = (np.asarray(target, dtype=np.float64) / vol.max).astype(np.float32)
    return {'image': image, 'volume': vol.name, 'slice': s}

  def __repr__(self) -> str:
    return (f'FastMRISliceSource({len(self.volumes)} volumes, {len(self)} slices, '
            f'target_key={self.target_key!r}, skipped={len(self.skipped)})')

  # --- helpers ----------------------------------------------------------------------------
  def locate(self, index: int) -> tuple[int, int]:
    """(volume number, slice number) of flat slice index `index`."""
    v = int(np.searchsorted(self._starts, int(index), side='right')) - 1
    return v, int(index) - int(self._starts[v])

  def read_volume(self, v: int, slices: Sequence[int] | None = None) -> np.ndarray:
    """float32 (S, H, W) in [0, 1] of volume number `v` (all slices, or the given ones)."""
    vol = self.volumes[v]
    idx = range(vol.num_slices) if slices is None else slices
    return np.stack([self[int(self._starts[v]) + int(s)]['image'] for s in idx])

  def _read(self, v: int, s: int) -> np.ndarray:
    vol = self.volumes[v]
    with self._lock:
      if self._pid != os.getpid():          # forked: never share HDF5 handles across processes
        self._handles = {}
        self._pid = os.getpid()
      f = self._handles.get(v)
      if f is None:
        try:
          f = h5py.File(vol.path, 'r')
        except Exception as err:
          raise DataError(f'{vol.path}: cannot open as HDF5 ({one_line(err)})') from err
        self._handles[v] = f
      try:
        return f[vol.target][s]
      except Exception as err:
        raise DataError(f'{vol.path}: cannot read key {vol.target!r} slice {s} '
                        f'({one_line(err)})') from err

  def close(self) -> None:
    with self._lock:
      for f in self._handles.values():
        try:
          f.close()
        except Exception:  # pylint: disable=broad-except
          pass
      self._handles = {}

  def __getstate__(self):
    state = self.__dict__.copy()
    state['_handles'] = {}
    state['_lock'] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()
    self._handles = {}
    self._pid = os.getpid()
