"""The random-access slice source that every data format implements.

A source is a list of volumes (a fastMRI file, a NIfTI file, one PNG image), each a stack of 2-D
slices, flattened into one index space. It is a grain `RandomAccessDataSource`: `len(source)`,
`source[i]`, and it pickles (open file handles are dropped and reopened per process).

Element i: {'image': float32 (H, W) in [0, 1], 'volume': str, 'slice': int}, plus
'lr': float32 (h, w) for sources that hold a paired low-resolution image (image folders).

Subclasses implement two methods:
  inspect(path) -> VolumeInfo     open and validate one file; raise DataError naming the file and
                                  the problem, or VolumeExcluded when a filter leaves it out
  read_slice(v, s) -> (H, W)      slice s of volume v, normalised to [0, 1]
and may implement read_lr_slice(v, s) and close().

Every slice read is checked (shape, finiteness, range), so a slice that is wrong for any reason the
file scan could not see stops with a DataError naming the file and slice instead of reaching
training.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import pathlib
import threading
from typing import Iterable, Sequence

from absl import logging
import numpy as np

from mrisr_jax.data.errors import DataError

# Normalised slices may exceed 1 by rounding (a maximum read from file attributes, float32 RSS).
_RANGE_TOLERANCE = 1e-3


class VolumeExcluded(Exception):
  """A file that is valid but left out by a filter (e.g. its acquisition); counted, not an error."""


@dataclasses.dataclass(frozen=True)
class VolumeInfo:
  """One validated volume."""

  path: pathlib.Path
  name: str  # unique within a source: the file stem
  num_slices: int
  shape: tuple  # (H, W) of one slice, as read_slice returns it
  metadata: dict = dataclasses.field(default_factory=dict)  # format-specific (attrs, voxel sizes)


class SliceSource(abc.ABC):
  """Base class: validation of every file at construction, flat indexing, read checks, pickling."""

  format_name = 'slices'
  has_lr = False  # True when elements carry a paired 'lr' image

  def __init__(self, files: Iterable, skip_bad_files: bool = False, min_shape: tuple | None = None):
    self.skip_bad_files = bool(skip_bad_files)
    self.min_shape = None if min_shape is None else (int(min_shape[0]), int(min_shape[1]))
    self.volumes: list[VolumeInfo] = []
    self.skipped: list[tuple[pathlib.Path, str]] = []
    self.excluded: list[tuple[pathlib.Path, str]] = []
    files = [pathlib.Path(p) for p in files]
    if not files:
      raise DataError(f'{type(self).__name__}: no files given')
    self._lock = threading.Lock()
    self._pid = os.getpid()
    for path in files:
      try:
        self.volumes.append(self._fits(self.inspect(path)))
      except VolumeExcluded as why:
        self.excluded.append((path, str(why)))
      except DataError as err:
        if not self.skip_bad_files:
          raise
        self.skipped.append((path, str(err)))
    if self.skipped:
      logging.warning(
        'skipped %d bad data file(s) of %d (skip_bad_files=True); first: %s',
        len(self.skipped),
        len(files),
        self.skipped[0][1],
      )
    if self.excluded:
      logging.info(
        'left out %d of %d file(s) by the data filters; first: %s: %s',
        len(self.excluded),
        len(files),
        *self.excluded[0],
      )
    if not self.volumes:
      if self.skipped:
        raise DataError(
          f'{files[0].parent}: no usable volumes: all {len(files)} file(s) are bad '
          f'or filtered (first bad: {self.skipped[0][1]})'
        )
      raise DataError(
        f'{files[0].parent}: no usable volumes: the filters leave out all '
        f'{len(files)} file(s) (first: {self.excluded[0][0]}: {self.excluded[0][1]})'
      )
    names = [v.name for v in self.volumes]
    if len(set(names)) != len(names):
      dup = sorted({n for n in names if names.count(n) > 1})[0]
      raise DataError(f'{files[0].parent}: two files are both named {dup!r}; volume names must be unique')
    counts = np.array([v.num_slices for v in self.volumes], dtype=np.int64)
    self._starts = np.concatenate([[0], np.cumsum(counts)])

  def _fits(self, info: VolumeInfo) -> VolumeInfo:
    if self.min_shape and (info.shape[0] < self.min_shape[0] or info.shape[1] < self.min_shape[1]):
      h, w = self.min_shape
      raise DataError(
        f'{info.path}: slice shape {tuple(info.shape)} is smaller than the HR crop '
        f'{h}x{w} (data.hr_patch_size={h if h == w else (h, w)})'
      )
    return info

  # --- to implement -------------------------------------------------------------------------
  @abc.abstractmethod
  def inspect(self, path: pathlib.Path) -> VolumeInfo:
    """Open and validate one file (DataError naming it), or VolumeExcluded by a filter."""

  @abc.abstractmethod
  def read_slice(self, v: int, s: int) -> np.ndarray:
    """Slice s of volume v, normalised to [0, 1]."""

  def read_lr_slice(self, v: int, s: int) -> np.ndarray:
    """The paired LR slice; only sources with `has_lr` (image folders) hold one."""
    raise DataError(f'{type(self).__name__} has no paired low-resolution images')

  def close(self) -> None:
    """Drops open file handles (they reopen on the next read)."""

  # --- grain RandomAccessDataSource protocol -------------------------------------------------
  def __len__(self) -> int:
    return int(self._starts[-1])

  def __getitem__(self, index: int) -> dict:
    v, s = self.locate(index)
    vol = self.volumes[v]
    self._check_process()
    image = self._checked(self.read_slice(v, s), vol, s, vol.shape, 'slice')
    element = {'image': image, 'volume': vol.name, 'slice': s}
    if self.has_lr:
      lr = self.read_lr_slice(v, s)
      element['lr'] = self._checked(lr, vol, s, np.shape(lr), 'LR slice')
    return element

  def __repr__(self) -> str:
    return (
      f'{type(self).__name__}({len(self.volumes)} volumes, {len(self)} slices, '
      f'skipped={len(self.skipped)}, excluded={len(self.excluded)})'
    )

  # --- helpers ------------------------------------------------------------------------------
  def locate(self, index: int) -> tuple[int, int]:
    """(volume number, slice number) of flat slice index `index` (negative counts from the end)."""
    i, n = int(index), len(self)
    if i < 0:
      i += n
    if not 0 <= i < n:
      raise IndexError(f'{type(self).__name__}: index {index} out of range for {n} slices')
    v = int(np.searchsorted(self._starts, i, side='right')) - 1
    return v, i - int(self._starts[v])

  def read_volume(self, v: int, slices: Sequence[int] | None = None) -> np.ndarray:
    """float32 (S, H, W) in [0, 1] of volume number `v` (all slices, or the given ones)."""
    idx = range(self.volumes[v].num_slices) if slices is None else slices
    return np.stack([self[int(self._starts[v]) + int(s)]['image'] for s in idx])

  def read_lr_volume(self, v: int, slices: Sequence[int] | None = None) -> np.ndarray:
    """The paired LR slices of volume `v` (sources with `has_lr` only)."""
    idx = range(self.volumes[v].num_slices) if slices is None else slices
    return np.stack([self[int(self._starts[v]) + int(s)]['lr'] for s in idx])

  @staticmethod
  def _checked(x, vol: VolumeInfo, s: int, shape: tuple, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.shape != tuple(shape):
      raise DataError(f'{vol.path}: {what} {s} has shape {x.shape}, expected {tuple(shape)}')
    if not np.all(np.isfinite(x)):
      raise DataError(f'{vol.path}: {what} {s} has non-finite values')
    lo, hi = float(x.min()), float(x.max())
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
      raise DataError(
        f'{vol.path}: {what} {s} normalises to [{lo:.4g}, {hi:.4g}], outside [0, 1] '
        '(is the volume maximum in the file attributes wrong? use data.scan=full)'
      )
    return np.clip(x, 0.0, 1.0) if (lo < 0 or hi > 1) else x

  def _check_process(self) -> None:
    """Forked children (grain workers) must not share the parent's open file handles."""
    if self._pid != os.getpid():
      with self._lock:
        if self._pid != os.getpid():
          for key in self._handle_attrs():  # drop, never close: the parent still uses them
            setattr(self, key, {})
          self._pid = os.getpid()

  def __getstate__(self):
    state = self.__dict__.copy()
    state['_lock'] = None
    for key in self._handle_attrs():
      state[key] = {}
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()
    self._pid = os.getpid()

  def _handle_attrs(self) -> tuple[str, ...]:
    """Names of dict attributes holding per-process open handles / caches (emptied on pickling)."""
    return ()
