"""From `config.data` to the slice source of a split: format detection, splits by volume, caching.

Formats (data.format):
  fastmri  root/SPLIT/*.h5 (.hdf5)                  mrisr_jax.data.fastmri.FastMRISliceSource
  nifti    root/SPLIT/*.nii, *.nii.gz               mrisr_jax.data.nifti.NiftiSliceSource
  images   root/SPLIT/HR/*.png [+ LR/x{s}/*.png]    mrisr_jax.data.images.ImageFolderSource
  auto     the first of these that SPLIT holds (an HR/ folder, then .h5, then NIfTI)

Splits are by volume, so no volume feeds both training and validation:
  * data.val_fraction == 0: train = root/train_split, validation = root/val_split; a volume name found
    in both stops the run.
  * data.val_fraction > 0: both come from root/train_split; a volume is in validation when the hash
    of its name falls below the fraction, so the assignment depends only on the name (adding files
    never moves a volume from one side to the other).
  * data.volume_sample_rate < 1 keeps that fraction of the training volumes (at least one), ranked by
    the hash of their names: deterministic, and the same on every host.
"""
from __future__ import annotations

import hashlib
import pathlib
import threading

from absl import logging

from mrisr_jax.data import sample
from mrisr_jax.data.errors import DataError
from mrisr_jax.data.images import SUFFIXES as IMAGE_SUFFIXES
from mrisr_jax.data.source import SliceSource

FORMATS = ('auto', 'fastmri', 'nifti', 'images')
SPLITS = ('train', 'val')
LR_SOURCES = {'auto': 'auto', 'files': True, 'degrade': False}  # data.lr_source -> lr_from_files

_CACHE: dict[tuple, SliceSource] = {}
_CACHE_LOCK = threading.Lock()


def cfg(data_cfg, key: str, default):
  """data_cfg[key] for a ConfigDict / dict / attribute object, or `default` when absent or None."""
  if data_cfg is None:
    return default
  if hasattr(data_cfg, 'get'):
    try:
      value = data_cfg.get(key, default)
    except (KeyError, AttributeError):
      value = default
  else:
    value = getattr(data_cfg, key, default)
  return default if value is None else value


def _fraction(data_cfg, key: str, default: float, allow_zero: bool) -> float:
  value = cfg(data_cfg, key, default)
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  if not ok or not ((0 <= value if allow_zero else 0 < value) and value <= 1):
    raise DataError(f'data.{key}: {value!r} must be a number in {"[0" if allow_zero else "(0"}, 1]')
  return float(value)


def _name_hash(name: str) -> float:
  """A stable number in [0, 1) from a volume name (the same on every host and in every run)."""
  return int(hashlib.sha256(name.encode('utf-8')).hexdigest()[:12], 16) / float(1 << 48)


def volume_name(path: pathlib.Path) -> str:
  name = path.name
  for suffix in ('.nii.gz', '.nii', '.h5', '.hdf5'):
    if name.lower().endswith(suffix):
      return name[:-len(suffix)]
  return path.stem


def file_format(path) -> str | None:
  """'fastmri' | 'nifti' | 'npy' | 'image' from a single file's suffix, or None."""
  name = pathlib.Path(path).name.lower()
  if name.endswith(('.nii', '.nii.gz')):
    return 'nifti'
  if name.endswith(('.h5', '.hdf5')):
    return 'fastmri'
  if name.endswith('.npy'):
    return 'npy'
  return 'image' if name.endswith(IMAGE_SUFFIXES) else None   # what ImageFolderSource reads


def detect_format(directory: pathlib.Path) -> str:
  if (directory / 'HR').is_dir():
    return 'images'
  if not directory.is_dir():
    raise DataError(f'{directory}: the split directory does not exist')
  names = [p.name.lower() for p in directory.iterdir() if p.is_file()]
  if any(n.endswith(('.h5', '.hdf5')) for n in names):
    return 'fastmri'
  if any(n.endswith(('.nii', '.nii.gz')) for n in names):
    return 'nifti'
  raise DataError(f'{directory}: no data found (data.format=auto looks for an HR/ folder of images, '
                  '*.h5 fastMRI files or *.nii/*.nii.gz volumes)')


def _list(fmt: str, directory: pathlib.Path) -> list[pathlib.Path]:
  if fmt == 'fastmri':
    from mrisr_jax.data import fastmri  # pylint: disable=g-import-not-at-top
    return fastmri.list_files(directory)
  if fmt == 'nifti':
    from mrisr_jax.data import nifti  # pylint: disable=g-import-not-at-top
    return nifti.list_files(directory)
  from mrisr_jax.data import images  # pylint: disable=g-import-not-at-top
  return images.list_files(directory)


def split_files(data_cfg, split: str) -> tuple[str, pathlib.Path, list[pathlib.Path]]:
  """(format, split directory, files) of the 'train' or 'val' split, after the volume filters."""
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  root, _ = sample.resolve_data_root(cfg(data_cfg, 'root', ''))
  fmt = str(cfg(data_cfg, 'format', 'auto'))
  if fmt not in FORMATS:
    raise DataError(f'data.format: {fmt!r} is not one of {list(FORMATS)}')
  val_fraction = _fraction(data_cfg, 'val_fraction', 0.0, allow_zero=True)
  sample_rate = _fraction(data_cfg, 'volume_sample_rate', 1.0, allow_zero=False)
  train_dir = root / str(cfg(data_cfg, 'train_split', 'train'))
  val_dir = root / str(cfg(data_cfg, 'val_split', 'val'))
  directory = train_dir if (split == 'train' or val_fraction > 0) else val_dir
  if fmt == 'auto':
    fmt = detect_format(directory)
  files = _list(fmt, directory)
  if val_fraction > 0:
    files = [p for p in files if (_name_hash(volume_name(p)) < val_fraction) == (split == 'val')]
    if not files:
      raise DataError(f'{directory}: data.val_fraction={val_fraction} leaves the {split} split empty '
                      f'({len(_list(fmt, directory))} volumes in all)')
  elif split == 'train' and val_dir.is_dir():
    try:
      val_names = {volume_name(p) for p in _list(fmt, val_dir)}
    except DataError:
      val_names = set()
    shared = sorted(val_names & {volume_name(p) for p in files})
    if shared:
      raise DataError(f'{val_dir}: volume {shared[0]!r} is in both {train_dir.name} and {val_dir.name} '
                      f'({len(shared)} shared); a volume may feed only one split')
  if split == 'train' and sample_rate < 1:
    keep = max(1, round(sample_rate * len(files)))
    ranked = sorted(files, key=lambda p: (_name_hash('sample:' + volume_name(p)), p.name))
    files = sorted(ranked[:keep])
    logging.info('data.volume_sample_rate=%g: training on %d volumes', sample_rate, keep)
  return fmt, directory, files


def _stamp(files) -> tuple:
  out = []
  for p in files:
    st = p.stat()
    out.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
  return tuple(out)


def build_source(fmt: str, directory: pathlib.Path, files, data_cfg, scale: int | None,
           min_shape) -> SliceSource:
  common = dict(skip_bad_files=bool(cfg(data_cfg, 'skip_bad_files', False)), min_shape=min_shape)
  if fmt == 'fastmri':
    from mrisr_jax.data import fastmri  # pylint: disable=g-import-not-at-top
    return fastmri.FastMRISliceSource(
        files, target_key=str(cfg(data_cfg, 'target_key', 'auto')), **common,
        acquisitions=tuple(cfg(data_cfg, 'acquisitions', ())), scan=str(cfg(data_cfg, 'scan', 'full')),
        crop_to_recon_size=bool(cfg(data_cfg, 'crop_to_recon_size', True)))
  if fmt == 'nifti':
    from mrisr_jax.data import nifti  # pylint: disable=g-import-not-at-top
    return nifti.NiftiSliceSource(
        files, slice_axis=int(cfg(data_cfg, 'slice_axis', 2)),
        percentiles=tuple(cfg(data_cfg, 'intensity_percentiles', (0.0, 99.5))),
        min_foreground=float(cfg(data_cfg, 'min_slice_foreground', 0.01)), **common)
  from mrisr_jax.data import images  # pylint: disable=g-import-not-at-top
  return images.ImageFolderSource(directory, files=files, scale=scale,
                                  lr_from_files=_lr_from_files(data_cfg), **common)


def _lr_from_files(data_cfg):
  value = cfg(data_cfg, 'lr_source', 'auto')
  if value not in LR_SOURCES:
    raise DataError(f'data.lr_source: {value!r} is not one of {list(LR_SOURCES)}')
  return LR_SOURCES[value]


def make_source(data_cfg, split: str, scale: int | None = None,
                min_shape: tuple | None = None) -> tuple[SliceSource, pathlib.Path]:
  """(source, split directory) of `split`; sources are validated once per process and cached.

  `scale` selects the paired LR folder of image sources (None: no pairing); volumes whose slices are
  smaller than `min_shape` are bad files (skipped with data.skip_bad_files, else an error).
  """
  fmt, directory, files = split_files(data_cfg, split)
  keys = ('skip_bad_files', 'target_key', 'acquisitions', 'scan', 'crop_to_recon_size', 'slice_axis',
          'intensity_percentiles', 'min_slice_foreground', 'lr_source')
  params = tuple(repr(cfg(data_cfg, k, None)) for k in keys)
  key = (fmt, _stamp(files), params, scale if fmt == 'images' else None, min_shape)
  with _CACHE_LOCK:
    source = _CACHE.get(key)
  if source is None:
    source = build_source(fmt, directory, files, data_cfg, scale, min_shape)
    with _CACHE_LOCK:
      _CACHE[key] = source
  if sample.resolve_data_root(cfg(data_cfg, 'root', ''))[1]:
    logging.info('using the embedded sample data at %s', directory.parent)
  return source, directory


def clear_cache() -> None:
  with _CACHE_LOCK:
    for src in _CACHE.values():
      src.close()
    _CACHE.clear()
