"""`fastmri_slices`: a TFDS dataset of fastMRI slices, written as ArrayRecord for grain's random access.

Importing this module registers the builder with TFDS (`tfds.builder('fastmri_slices/...')`).

Configs (the folders are looked for under the manual directory, the user's fastMRI download):
  singlecoil_knee   knee_singlecoil_train/ or singlecoil_train/ (and *_val/)    target reconstruction_esc
  multicoil_knee    knee_multicoil_train/ or multicoil_train/ (and *_val/)      target reconstruction_rss
  multicoil_brain   brain_multicoil_train/ or multicoil_train/ (and *_val/)     target reconstruction_rss
  folder            train/ (and val/): any folder of fastMRI-schema files      target as data.target_key=auto
The validation folder is optional; the training folder is required.

Each example is one slice:
  image         float32 (H, W), zlib-encoded: the HR target before normalisation (the stored
                reconstruction, or for k-space-only files the centre-cropped RSS, as
                `FastMRISliceSource.read_target` gives it)
  volume        the file stem
  slice         the slice index in the volume
  volume_max    the volume's maximum, computed from the data (what `data.scan=full` divides by)
  acquisition   attrs['acquisition'] ('' when missing)
Examples keep the file order (sorted names) and the slice order (`disable_shuffling`), and the split's
volume table (name, slices, shape, maximum, acquisition, first record, target key) is stored in the
dataset's metadata, so a reader finds any volume's slices without scanning the records.

Building reads each file once through `FastMRISliceSource` (its checks: keys, ranks, finiteness),
in worker processes when `num_workers > 1`, and keeps each volume's extracted targets in a cache
under the download directory. An interrupted build run again reuses the cached volumes (the cache is
keyed by the file's path, size and modification time), so only the ArrayRecord writing is redone.
A bad file stops the build with one line naming it, or is skipped and counted with
`skip_bad_files=True`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import multiprocessing
import pathlib
from typing import Any

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from mrisr_jax.data.errors import DataError

NAME = 'fastmri_slices'
SPLITS = ('train', 'val')
CACHE_FOLDER = 'fastmri_slices_extracted'


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a config finds its files and which target it stores."""

  folders: tuple[str, ...]  # candidate folder name patterns, '{split}' filled in
  target_key: str
  description: str


LAYOUTS = {
  'singlecoil_knee': Layout(
    ('knee_singlecoil_{split}', 'singlecoil_{split}'), 'reconstruction_esc', 'fastMRI knee, single-coil'
  ),
  'multicoil_knee': Layout(
    ('knee_multicoil_{split}', 'multicoil_{split}'), 'reconstruction_rss', 'fastMRI knee, multi-coil'
  ),
  'multicoil_brain': Layout(
    ('brain_multicoil_{split}', 'multicoil_{split}'), 'reconstruction_rss', 'fastMRI brain, multi-coil'
  ),
  'folder': Layout(('{split}',), 'auto', 'any folder of fastMRI-schema files (train/, val/)'),
}


def split_folders(manual_dir, config_name: str) -> dict[str, pathlib.Path]:
  """{split: folder} of the manual directory for a config; the training folder must hold .h5 files.

  Raises:
    DataError naming the directory and what was expected: it is missing, has no training folder, or
    a folder it has holds no .h5/.hdf5 files.
  """
  from mrisr_jax.data import fastmri  # pylint: disable=g-import-not-at-top

  layout = LAYOUTS[config_name]
  manual_dir = pathlib.Path(manual_dir)
  if not manual_dir.is_dir():
    expected = ', '.join(f + '/' for f in layout.folders).format(split='train')
    raise DataError(f'{manual_dir}: the manual directory does not exist (expected a folder holding {expected})')
  found = {}
  for split in SPLITS:
    names = [f.format(split=split) for f in layout.folders]
    folder = next((manual_dir / n for n in names if (manual_dir / n).is_dir()), None)
    if folder is None:
      if split == 'train':
        raise DataError(
          f'{manual_dir}: no training folder for {NAME}/{config_name} (expected one of '
          f'{", ".join(n + "/" for n in names)} holding fastMRI .h5 files)'
        )
      logging.info('%s: no validation folder (%s); building the train split only', manual_dir, ', '.join(names))
      continue
    fastmri.list_files(folder)  # an empty folder is an error naming it
    found[split] = folder
  return found


# ---------------------------------------------------------------------------------------------- extraction
def _stamp(path: pathlib.Path) -> dict:
  st = path.stat()
  return {'path': str(path.resolve()), 'size': st.st_size, 'mtime_ns': st.st_mtime_ns}


def extract_volume(path, cache_dir, target_key: str) -> dict:
  """Reads one file's targets into cache_dir/<stem>.npy; returns its volume entry ({'error': ...} when bad).

  A cache entry whose stamp (path, size, mtime, target key) matches is reused without reading the file.
  """
  from mrisr_jax.data import fastmri  # pylint: disable=g-import-not-at-top
  from mrisr_jax.fileio import atomic_write  # pylint: disable=g-import-not-at-top

  path, cache_dir = pathlib.Path(path), pathlib.Path(cache_dir)
  stamp = dict(_stamp(path), target_key=target_key)
  entry_file = cache_dir / f'{path.name}.json'
  if entry_file.is_file():
    entry = json.loads(entry_file.read_text())
    if entry.get('stamp') == stamp and (cache_dir / entry['array']).is_file():
      return entry
  try:
    source = fastmri.FastMRISliceSource([path], target_key=target_key, scan='full')
    try:
      vol = source.volumes[0]
      targets = np.stack([np.asarray(source.read_target(0, s), dtype=np.float32) for s in range(vol.num_slices)])
    finally:
      source.close()
    entry = {
      'stamp': stamp,
      'name': vol.name,
      'array': f'{path.name}.npy',
      'num_slices': vol.num_slices,
      'shape': list(vol.shape),
      'max': vol.metadata['max'],
      'attrs_max': vol.metadata['attrs_max'],
      'acquisition': vol.metadata['acquisition'] or '',
      'patient_id': vol.metadata['patient_id'],
      'target': vol.metadata['target'],
      'crop_size': None if vol.metadata['crop_size'] is None else list(vol.metadata['crop_size']),
    }

    def save(tmp):
      with open(tmp, 'wb') as fh:  # a file object: np.save would append .npy to the temporary's name
        np.save(fh, targets, allow_pickle=False)

    atomic_write(cache_dir / entry['array'], save)
  except DataError as err:
    return {'error': str(err)}  # not cached: a file that failed (perhaps only for now) is read again next time
  atomic_write(entry_file, lambda tmp: pathlib.Path(tmp).write_text(json.dumps(entry)))
  return entry


def extract_split(files, cache_dir, target_key: str, num_workers: int, skip_bad_files: bool, desc: str) -> dict:
  """{'volumes': [entry, ...] in file order, 'skipped': [[path, reason], ...]} of one split's files."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  cache_dir = pathlib.Path(cache_dir)
  cache_dir.mkdir(parents=True, exist_ok=True)
  bar = tqdm(total=len(files), desc=desc, unit='file', disable=None)
  entries = []
  with contextlib.ExitStack() as stack:
    if num_workers > 1:
      # spawn, not fork: the caller may hold JAX's (or grain's) threads, which a forked child would inherit locked
      spawn = multiprocessing.get_context('spawn')
      pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(max_workers=num_workers, mp_context=spawn))
      results = pool.map(extract_volume, files, [cache_dir] * len(files), [target_key] * len(files))
    else:
      results = (extract_volume(f, cache_dir, target_key) for f in files)
    for entry in results:
      entries.append(entry)
      bar.update()
  bar.close()
  volumes, skipped = [], []
  for path, entry in zip(files, entries):
    if 'error' not in entry:
      volumes.append(entry)
    elif skip_bad_files:
      skipped.append([str(path), entry['error']])
    else:
      raise DataError(entry['error'])
  if skipped:
    logging.warning('skipped %d bad file(s) of %d (skip_bad_files); first: %s', len(skipped), len(files), skipped[0][1])
  if not volumes:
    raise DataError(f'{pathlib.Path(files[0]).parent}: no usable volumes: all {len(files)} file(s) are bad')
  first = 0
  for entry in volumes:
    entry['first_record'] = first
    first += entry['num_slices']
  return {'volumes': volumes, 'skipped': skipped}


# ---------------------------------------------------------------------------------------------- the builder
class FastmriSlicesConfig(tfds.core.BuilderConfig):
  """A challenge x anatomy layout of the manual directory (see LAYOUTS)."""


class FastmriSlices(tfds.core.GeneratorBasedBuilder):
  """fastMRI slices (HR targets with their volume metadata), one example per slice."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release: targets, volume name, slice, volume maximum, acquisition.'}
  BUILDER_CONFIGS = [FastmriSlicesConfig(name=k, description=v.description) for k, v in LAYOUTS.items()]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download fastMRI from https://fastmri.med.nyu.edu/ (a licence agreement is required) and extract the
  archives into one directory, keeping the official folder names, e.g. singlecoil_train/ and
  singlecoil_val/ (knee), multicoil_train/ and multicoil_val/ (knee or brain: keep knee and brain in
  separate directories, or rename the folders knee_multicoil_train/, brain_multicoil_train/, ...).
  The `folder` config reads train/ and val/ of any directory of fastMRI-schema .h5 files.
  Pass that directory as --manual_dir to tools/build_tfds.py."""

  def __init__(self, *, num_workers: int = 1, skip_bad_files: bool = False, **kwargs):
    self._num_workers = int(num_workers)
    self._skip_bad_files = bool(skip_bad_files)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding='zlib'),
          'volume': tfds.features.Text(),
          'slice': tfds.features.Scalar(dtype=np.int32),
          'volume_max': tfds.features.Scalar(dtype=np.float64),
          'acquisition': tfds.features.Text(),
        }
      ),
      metadata=tfds.core.MetadataDict(),
      disable_shuffling=True,  # records in file order, then slice order: the table's first_record indexes them
      homepage='https://fastmri.med.nyu.edu/',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    from mrisr_jax.data import fastmri  # pylint: disable=g-import-not-at-top

    name = self.builder_config.name
    layout = LAYOUTS[name]
    folders = split_folders(dl_manager.manual_dir, name)
    cache_root = cache_dir(dl_manager.download_dir, name)
    tables = {}
    for split, folder in folders.items():
      tables[split] = extract_split(
        fastmri.list_files(folder),
        cache_root / split,
        layout.target_key,
        self._num_workers,
        self._skip_bad_files,
        desc=f'{NAME}/{name} {split}: reading {folder}',
      )
      tables[split]['folder'] = str(folder)
    self.info.metadata['splits'] = tables
    self.info.metadata['target_key'] = layout.target_key
    self.info.metadata['crop_to_recon_size'] = True
    return {split: self._generate_examples(cache_root / split, table) for split, table in tables.items()}

  def _generate_examples(self, cache_dir: pathlib.Path, table: dict):
    for entry in table['volumes']:
      targets = np.load(cache_dir / entry['array'], mmap_mode='r')
      for s in range(entry['num_slices']):
        yield (
          f'{entry["first_record"] + s:09d}',
          {
            'image': np.asarray(targets[s], dtype=np.float32),
            'volume': entry['name'],
            'slice': s,
            'volume_max': entry['max'],
            'acquisition': entry['acquisition'],
          },
        )


def cache_dir(download_dir, config_name: str) -> pathlib.Path:
  """The extracted-volume cache of a config under a build's download directory."""
  return pathlib.Path(download_dir) / CACHE_FOLDER / config_name


def split_table(builder, split: str) -> dict[str, Any]:
  """The stored volume table of `split` of a built dataset ({'volumes': [...], 'skipped': [...]})."""
  tables = builder.info.metadata.get('splits') if builder.info.metadata else None
  if not tables:
    raise DataError(f'{builder.data_dir}: the dataset has no volume table in its metadata (not built by {NAME}?)')
  if split not in tables:
    raise DataError(f'{builder.data_dir}: split {split!r} not in the dataset (it has {sorted(tables)})')
  return tables[split]
