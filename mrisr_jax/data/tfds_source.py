"""A built `fastmri_slices` TFDS dataset (ArrayRecord) as a random-access slice source.

`data.format=tfds` reads `data.tfds_name` (e.g. 'fastmri_slices/singlecoil_knee') from `data.tfds_dir`
(TFDS's data directory; '' = TFDS's default). Start-up reads only the dataset's metadata: the volume
table of each split (names, slice counts, shapes, maxima, acquisitions, where each volume's records
start). The splits, volume filters and normalisation are those of the h5 source (`data/splits.py`):
the same volumes in the same order, each slice divided by the volume maximum computed from the data,
so a run gives the same samples from either source. Each record read is checked against the table
(volume name and slice index), so a dataset whose records are out of order stops the run instead of
feeding wrong samples.

Nothing is downloaded or built here: a dataset that is not built stops with one line saying how to
build it (tools/build_tfds.py).
"""

from __future__ import annotations

import pathlib
from typing import Iterable

import numpy as np

from mrisr_jax.data.errors import DataError, one_line
from mrisr_jax.data.slice_source import SliceSource, VolumeExcluded, VolumeInfo


def import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from mrisr_jax.data import tfds_fastmri  # pylint: disable=g-import-not-at-top  (registers the builder)
  except ImportError as err:
    raise DataError(
      f'data.format=tfds needs tensorflow-datasets and array_record ({one_line(err)}); pip install -e ".[tfds]"'
    ) from err
  return tfds, tfds_fastmri


def open_builder(tfds_dir: str, tfds_name: str):
  """The built dataset's builder; a DataError naming the directory when it is not built there."""
  tfds, _ = import_tfds()
  if not tfds_name:
    raise DataError("data.tfds_name: empty; data.format=tfds needs a dataset, e.g. 'fastmri_slices/singlecoil_knee'")
  try:
    builder = tfds.builder(tfds_name, data_dir=tfds_dir or None)
  except Exception as err:  # tfds raises its own errors for unknown names and configs
    raise DataError(f'data.tfds_name: {tfds_name!r} ({one_line(err)})') from err
  if not builder.is_prepared():
    raise DataError(
      f'{builder.data_dir}: the TFDS dataset {tfds_name!r} is not built there (build it with '
      f'python tools/build_tfds.py --config {tfds_name.split("/")[-1].split(":")[0]} --manual_dir DIR --data_dir '
      f'{tfds_dir or "~/tensorflow_datasets"})'
    )
  return builder


def volume_names(builder, split: str) -> list[str]:
  """The split's volume names in record order (the files' sorted order when built)."""
  _, tfds_fastmri = import_tfds()
  return [v['name'] for v in tfds_fastmri.split_table(builder, split)['volumes']]


class TfdsSliceSource(SliceSource):
  """The volumes `names` of `split` of a built fastmri_slices dataset; elements as every SliceSource's.

  `target_key` and `crop_to_recon_size` are fixed when the dataset is built: a config asking for another
  target than the one stored is refused (DataError), not silently given the stored one.
  """

  format_name = 'tfds'

  def __init__(
    self,
    tfds_dir: str,
    tfds_name: str,
    split: str,
    names: Iterable[str],
    *,
    target_key: str = 'auto',
    acquisitions: Iterable[str] = (),
    crop_to_recon_size: bool = True,
    skip_bad_files: bool = False,
    min_shape: tuple | None = None,
  ):
    _, tfds_fastmri = import_tfds()
    self.tfds_dir, self.tfds_name, self.split = str(tfds_dir), str(tfds_name), str(split)
    builder = open_builder(self.tfds_dir, self.tfds_name)
    self.dataset_dir = pathlib.Path(str(builder.data_dir))
    self._table = {v['name']: v for v in tfds_fastmri.split_table(builder, self.split)['volumes']}
    self.target_key = target_key
    self.crop_to_recon_size = bool(crop_to_recon_size)
    if isinstance(acquisitions, (str, bytes)):
      acquisitions = (acquisitions,)
    self.acquisitions = tuple(str(a) for a in acquisitions)
    self._handles: dict[int, object] = {}  # per process: 0 -> the ArrayRecord data source
    names = list(names)
    missing = [n for n in names if n not in self._table]
    if missing:
      raise DataError(f'{self.dataset_dir}: volume {missing[0]!r} is not in split {self.split!r} of the dataset')
    super().__init__(
      [self.dataset_dir / self.split / n for n in names], skip_bad_files=skip_bad_files, min_shape=min_shape
    )

  # --- SliceSource --------------------------------------------------------------------------
  def inspect(self, path: pathlib.Path) -> VolumeInfo:
    entry = self._table[path.name]
    if self.acquisitions and entry['acquisition'] not in self.acquisitions:
      why = 'has no acquisition attribute' if not entry['acquisition'] else f'acquisition {entry["acquisition"]!r}'
      raise VolumeExcluded(f'{why}, not one of data.acquisitions {list(self.acquisitions)}')
    if self.target_key not in ('auto', entry['target']):
      raise DataError(
        f'{path}: data.target_key={self.target_key!r} but the dataset stores {entry["target"]!r} '
        '(rebuild it, or set data.target_key=auto)'
      )
    if not self.crop_to_recon_size and entry['crop_size'] is not None:
      raise DataError(
        f'{path}: data.crop_to_recon_size=False but the dataset stores k-space targets cropped to '
        f'{tuple(entry["crop_size"])} (rebuild it, or set data.crop_to_recon_size=True)'
      )
    metadata = {
      'max': float(entry['max']),
      'max_source': 'data',
      'target': entry['target'],
      'attrs_max': entry['attrs_max'],
      'acquisition': entry['acquisition'] or None,
      'patient_id': entry['patient_id'],
      'crop_size': entry['crop_size'],
      'first_record': int(entry['first_record']),
    }
    return VolumeInfo(
      path=path, name=entry['name'], num_slices=int(entry['num_slices']), shape=tuple(entry['shape']), metadata=metadata
    )

  def read_slice(self, v: int, s: int) -> np.ndarray:
    vol = self.volumes[v]
    record = vol.metadata['first_record'] + s
    try:
      example = self._data_source()[record]
    except DataError:
      raise
    except Exception as err:
      raise DataError(f'{vol.path}: cannot read record {record} (slice {s}) ({one_line(err)})') from err
    name = example['volume'].decode() if isinstance(example['volume'], bytes) else str(example['volume'])
    if name != vol.name or int(example['slice']) != s:
      raise DataError(
        f'{self.dataset_dir}: record {record} holds {name} slice {int(example["slice"])}, expected {vol.name} '
        f'slice {s} (the records do not match the volume table; rebuild the dataset)'
      )
    image = np.asarray(example['image']) / vol.metadata['max']
    return image.astype(np.float32, copy=False)

  def close(self) -> None:
    with self._lock:
      self._handles = {}

  def _handle_attrs(self) -> tuple[str, ...]:
    return ('_handles',)

  def __repr__(self) -> str:
    return (
      f'TfdsSliceSource({self.tfds_name!r} {self.split}: {len(self.volumes)} volumes, {len(self)} slices, '
      f'excluded={len(self.excluded)})'
    )

  def _data_source(self):
    self._check_process()
    with self._lock:
      source = self._handles.get(0)
      if source is None:
        builder = open_builder(self.tfds_dir, self.tfds_name)
        source = self._handles[0] = builder.as_data_source(split=self.split)
      return source
