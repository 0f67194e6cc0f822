"""From the run's DataSpec to the slice source of a split: format detection, splits by volume.

Formats (data.format):
  fastmri  root/SPLIT/*.h5 (.hdf5)                  mrisr_jax.data.fastmri.FastMRISliceSource
  nifti    root/SPLIT/*.nii, *.nii.gz               mrisr_jax.data.nifti.NiftiSliceSource
  images   root/SPLIT/HR/*.png [+ LR/x{s}/*.png]    mrisr_jax.data.images.ImageFolderSource
  tfds     split SPLIT of a built `fastmri_slices` TFDS dataset (data.tfds_dir, data.tfds_name)
                                                     mrisr_jax.data.tfds_source.TfdsSliceSource
  auto     the first of these that SPLIT holds (an HR/ folder, then .h5, then NIfTI; never tfds)

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

from absl import logging

from mrisr_jax.data import sample
from mrisr_jax.data.errors import DataError
from mrisr_jax.data.images import SUFFIXES as IMAGE_SUFFIXES
from mrisr_jax.data.slice_source import SliceSource
from mrisr_jax.spec import DataSpec, data_spec

SPLITS = ('train', 'val')


def _name_hash(name: str) -> float:
  """A stable number in [0, 1) from a volume name (the same on every host and in every run)."""
  return int(hashlib.sha256(name.encode('utf-8')).hexdigest()[:12], 16) / float(1 << 48)


def volume_name(path: pathlib.Path) -> str:
  name = path.name
  for suffix in ('.nii.gz', '.nii', '.h5', '.hdf5'):
    if name.lower().endswith(suffix):
      return name[: -len(suffix)]
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
  return 'image' if name.endswith(IMAGE_SUFFIXES) else None  # what ImageFolderSource reads


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
  raise DataError(
    f'{directory}: no data found (data.format=auto looks for an HR/ folder of images, '
    '*.h5 fastMRI files or *.nii/*.nii.gz volumes)'
  )


def _list(fmt: str, directory: pathlib.Path) -> list[pathlib.Path]:
  if fmt == 'fastmri':
    from mrisr_jax.data import fastmri  # pylint: disable=g-import-not-at-top

    return fastmri.list_files(directory)
  if fmt == 'nifti':
    from mrisr_jax.data import nifti  # pylint: disable=g-import-not-at-top

    return nifti.list_files(directory)
  from mrisr_jax.data import images  # pylint: disable=g-import-not-at-top

  return images.list_files(directory)


def split_files(data, split: str) -> tuple[str, pathlib.Path, list]:
  """(format, split directory, files) of the 'train' or 'val' split, after the volume filters.

  For data.format=tfds the "files" are the volume names of the built dataset's split, in record order,
  and the directory is the dataset's split (the metadata is read; no record is).
  """
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  data = data_spec(data)
  if data.format == 'tfds':
    return _tfds_split(data, split)
  root, _ = sample.resolve_data_root(data.root)
  fmt = data.format
  train_dir, val_dir = root / data.train_split, root / data.val_split
  directory = train_dir if (split == 'train' or data.val_fraction > 0) else val_dir
  if fmt == 'auto':
    fmt = detect_format(directory)

  def other_split():
    try:
      return [volume_name(p) for p in _list(fmt, val_dir)] if val_dir.is_dir() else []
    except DataError:
      return []

  files = _select(_list(fmt, directory), volume_name, split, data, directory, other_split, (train_dir, val_dir))
  return fmt, directory, files


def _tfds_split(data, split: str) -> tuple[str, pathlib.Path, list[str]]:
  from mrisr_jax.data import tfds_source  # pylint: disable=g-import-not-at-top

  builder = tfds_source.open_builder(data.tfds_dir, data.tfds_name)
  here = pathlib.Path(str(builder.data_dir))
  name = data.train_split if (split == 'train' or data.val_fraction > 0) else data.val_split
  stored = sorted(builder.info.splits.keys())
  if name not in stored:
    key = 'train_split' if name == data.train_split else 'val_split'
    raise DataError(f'{here}: data.{key}={name!r} is not a split of the dataset (it has {stored})')

  def other_split():
    return tfds_source.volume_names(builder, data.val_split) if data.val_split in stored else []

  names = tfds_source.volume_names(builder, name)
  return (
    'tfds',
    here / name,
    _select(names, str, split, data, here / name, other_split, (here / data.train_split, here / data.val_split)),
  )


def _select(items: list, name_of, split: str, data, directory: pathlib.Path, other_split, split_dirs) -> list:
  """The items (files or volume names, in their order) of `split` after data.val_fraction, the
  train/val overlap check and data.volume_sample_rate; `other_split()` lists the val split's names."""
  val_fraction, sample_rate = data.val_fraction, data.volume_sample_rate
  if val_fraction > 0:
    kept = [p for p in items if (_name_hash(name_of(p)) < val_fraction) == (split == 'val')]
    if not kept:
      raise DataError(
        f'{directory}: data.val_fraction={val_fraction} leaves the {split} split empty ({len(items)} volumes in all)'
      )
    items = kept
  elif split == 'train':
    shared = sorted(set(other_split()) & {name_of(p) for p in items})
    if shared:
      train_dir, val_dir = split_dirs
      raise DataError(
        f'{val_dir}: volume {shared[0]!r} is in both {train_dir.name} and {val_dir.name} '
        f'({len(shared)} shared); a volume may feed only one split'
      )
  if split == 'train' and sample_rate < 1:
    keep = max(1, round(sample_rate * len(items)))
    ranked = sorted(items, key=lambda p: (_name_hash('sample:' + name_of(p)), name_of(p)))
    chosen = set(ranked[:keep])
    items = [p for p in items if p in chosen]  # in their order (the files are sorted)
    logging.info('data.volume_sample_rate=%g: training on %d volumes', sample_rate, keep)
  return items


def build_source(fmt: str, directory: pathlib.Path, files, data: DataSpec, scale: int | None, min_shape) -> SliceSource:
  data = data_spec(data)
  common = dict(skip_bad_files=data.skip_bad_files, min_shape=min_shape)
  if fmt == 'tfds':
    from mrisr_jax.data import tfds_source  # pylint: disable=g-import-not-at-top

    return tfds_source.TfdsSliceSource(
      data.tfds_dir,
      data.tfds_name,
      directory.name,
      files,
      target_key=data.target_key,
      acquisitions=data.acquisitions,
      crop_to_recon_size=data.crop_to_recon_size,
      **common,
    )
  if fmt == 'fastmri':
    from mrisr_jax.data import fastmri  # pylint: disable=g-import-not-at-top

    return fastmri.FastMRISliceSource(
      files,
      target_key=data.target_key,
      **common,
      acquisitions=data.acquisitions,
      scan=data.scan,
      crop_to_recon_size=data.crop_to_recon_size,
    )
  if fmt == 'nifti':
    from mrisr_jax.data import nifti  # pylint: disable=g-import-not-at-top

    return nifti.NiftiSliceSource(
      files,
      slice_axis=data.slice_axis,
      percentiles=data.intensity_percentiles,
      min_foreground=data.min_slice_foreground,
      **common,
    )
  from mrisr_jax.data import images  # pylint: disable=g-import-not-at-top

  return images.ImageFolderSource(directory, files=files, scale=scale, lr_from_files=data.lr_from_files, **common)


def make_source(
  data, split: str, scale: int | None = None, min_shape: tuple | None = None
) -> tuple[SliceSource, pathlib.Path]:
  """(source, split directory) of `split`, its files validated now; the caller keeps it for the run.

  `scale` selects the paired LR folder of image sources (None: no pairing); volumes whose slices are
  smaller than `min_shape` are bad files (skipped with data.skip_bad_files, else an error).
  """
  data = data_spec(data)
  fmt, directory, files = split_files(data, split)
  source = build_source(fmt, directory, files, data, scale, min_shape)
  if split == 'train' and sample.resolve_data_root(data.root)[1]:  # once per run, not once per split
    logging.info('using the embedded sample data at %s', directory.parent)
  return source, directory
