"""Training and validation input pipelines (grain Dataset API).

Training order (all hosts build the same global order, then each takes its share):

  MapDataset.source(FastMRISliceSource)         n slices of the train split
    .shuffle(shuffle_seed)                      global shuffle; epoch e uses seed + e
    [:m]                                        m = n - n % process_count (equal shares)
    .random_map(crop+degrade+flip, seed=aug_seed)
    [process_index::process_count]              this host's share of every epoch
    .repeat(None)                               infinite, reshuffled per epoch
    .to_iter_dataset(ReadOptions)               thread prefetch
    [.mp_prefetch(num_workers)]                 optional process prefetch (per element)
    .batch(global_batch_size // process_count, drop_remainder=True)

`random_map` sits before the host split, so the RNG of an element is seeded by
(aug_seed, global position e * m + j): the crops and flips depend only on `seed`
and the position in the global stream, not on the number of hosts or workers.
`shuffle_seed` and `aug_seed` both derive from `seed` (numpy SeedSequence).
"""
from __future__ import annotations

import os
import pathlib
import threading
from typing import Any

from absl import flags
from absl import logging
import grain
import numpy as np

from mrisr_jax.data import degrade
from mrisr_jax.data import sample
from mrisr_jax.data.errors import DataError
from mrisr_jax.data.fastmri import FastMRISliceSource, list_volume_files

_DEFAULTS = {
    'root': '',
    'train_split': 'train',
    'val_split': 'val',
    'target_key': 'auto',
    'hr_patch_size': 96,
    'degradation': ('area',),
    'flips': True,
    'num_workers': 0,
    'prefetch_buffer': 8,
    'skip_bad_files': False,
    'val_max_volumes': 0,
    'val_max_slices': 0,
}


def _cfg(data_cfg, key: str):
  """data_cfg[key] for a ConfigDict / dict / attribute object, with the documented default."""
  if data_cfg is None:
    return _DEFAULTS[key]
  if hasattr(data_cfg, 'get'):
    try:
      value = data_cfg.get(key, _DEFAULTS[key])
    except (KeyError, AttributeError):
      value = _DEFAULTS[key]
  else:
    value = getattr(data_cfg, key, _DEFAULTS[key])
  return _DEFAULTS[key] if value is None else value


def _int_cfg(data_cfg, key: str, minimum: int) -> int:
  value = _cfg(data_cfg, key)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise DataError(f'data.{key}: {value!r} must be an integer >= {minimum}')
  return int(value)


# Construction validates (reads) every file; cache it so num_train_slices +
# make_train_dataset + load_validation_volumes do not scan the same files again.
_SOURCE_CACHE: dict[tuple, FastMRISliceSource] = {}
_SOURCE_CACHE_LOCK = threading.Lock()


def _split_source(data_cfg, split_key: str) -> tuple[FastMRISliceSource, pathlib.Path]:
  root, is_sample = sample.resolve_data_root(_cfg(data_cfg, 'root'))
  split = str(_cfg(data_cfg, split_key))
  files = list_volume_files(root, split)
  target_key = str(_cfg(data_cfg, 'target_key'))
  skip = bool(_cfg(data_cfg, 'skip_bad_files'))
  stamp = []
  for p in files:
    st = p.stat()
    stamp.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
  key = (tuple(stamp), target_key, skip)
  with _SOURCE_CACHE_LOCK:
    source = _SOURCE_CACHE.get(key)
  if source is None:
    if is_sample:
      logging.info('using the embedded sample data at %s', root)
    source = FastMRISliceSource(files, target_key=target_key, skip_bad_files=skip)
    with _SOURCE_CACHE_LOCK:
      _SOURCE_CACHE[key] = source
  elif is_sample:
    logging.info('using the embedded sample data at %s', root)
  return source, root / split


def clear_source_cache() -> None:
  with _SOURCE_CACHE_LOCK:
    for src in _SOURCE_CACHE.values():
      src.close()
    _SOURCE_CACHE.clear()


def derive_seeds(seed: int) -> tuple[int, int]:
  """(shuffle_seed, aug_seed), both in [0, 2**32), derived from the run seed."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise DataError(f'seed: {seed!r} must be a non-negative integer')
  shuffle_seed, aug_seed = np.random.SeedSequence(int(seed)).generate_state(2, dtype=np.uint32)
  return int(shuffle_seed), int(aug_seed)


def _process_index_count(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  process_index, process_count = int(process_index), int(process_count)
  if process_count < 1 or not 0 <= process_index < process_count:
    raise DataError(f'process_index: {process_index} is not in [0, process_count={process_count})')
  return process_index, process_count


def _global_order(ds: grain.MapDataset, num_slices: int, shuffle_seed: int,
                  process_count: int) -> grain.MapDataset:
  """Shuffled order of one epoch (reshuffled per epoch), trimmed to a multiple of the hosts."""
  usable = num_slices - num_slices % process_count
  return ds.shuffle(seed=shuffle_seed)[:usable]


def epoch_slice_order(num_slices: int, *, seed: int, epoch: int, process_index: int = 0,
                      process_count: int = 1) -> list[int]:
  """The flat slice indices (into the train FastMRISliceSource) one host reads in `epoch`.

  Uses the same index arithmetic as `make_train_dataset`, in order.
  """
  shuffle_seed, _ = derive_seeds(seed)
  process_index, process_count = _process_index_count(process_index, process_count)
  ds = _global_order(grain.MapDataset.range(num_slices), num_slices, shuffle_seed, process_count)
  ds = ds[process_index::process_count]
  per_host = len(ds)
  return [int(ds[epoch * per_host + j]) for j in range(per_host)]


class CropDegradeFlip(grain.transforms.RandomMap):
  """Random HR crop (ph x pw) -> optional random flips -> LR = the degradation steps on the HR crop.

  Output: {'lr': float32 (ph/s, pw/s, 1), 'hr': float32 (ph, pw, 1)}; with `upsampled_input` the
  'lr' entry is the LR bicubic-upsampled back to (ph, pw) and clipped to [0, 1] (the input of
  SRCNN/DRRN, as the seed's `downsample.py -k` writes it). Picklable.
  """

  def __init__(self, patch: tuple[int, int], scale: int, flips: bool, degradation=('area',),
               upsampled_input: bool = False):
    self.patch = (int(patch[0]), int(patch[1]))
    self.scale = int(scale)
    self.flips = bool(flips)
    self.degradation = tuple(degradation)
    degrade.parse_degradation(self.degradation)  # fail at construction, not in a worker
    self.upsampled_input = bool(upsampled_input)

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    image = element['image']
    ph, pw = self.patch
    h, w = image.shape
    if h < ph or w < pw:
      raise DataError(f"{element.get('volume', '?')} slice {element.get('slice', '?')}: slice shape "
                      f'{(h, w)} is smaller than the HR crop {ph}x{pw} (data.hr_patch_size)')
    y = int(rng.integers(0, h - ph + 1))
    x = int(rng.integers(0, w - pw + 1))
    hr = image[y:y + ph, x:x + pw]
    if self.flips:
      flip_lr, flip_ud = rng.random(2) < 0.5
      if flip_lr:
        hr = hr[:, ::-1]
      if flip_ud:
        hr = hr[::-1, :]
    hr = np.ascontiguousarray(hr, dtype=np.float32)
    lr = degrade.make_lr(hr, self.scale, self.degradation)
    if self.upsampled_input:
      lr = np.clip(degrade.bicubic_upsample(lr, self.scale), 0.0, 1.0).astype(np.float32)
    return {'lr': lr[..., None], 'hr': hr[..., None]}


def patch_shape(data_cfg) -> tuple[int, int]:
  """data.hr_patch_size as (height, width): an int p means p x p."""
  value = _cfg(data_cfg, 'hr_patch_size')
  sides = list(value) if isinstance(value, (tuple, list)) else [value]
  if len(sides) not in (1, 2) or any(
      isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in sides):
    raise DataError(f'data.hr_patch_size: {value!r} must be a positive integer or (height, width)')
  return (int(sides[0]), int(sides[-1]))


def num_train_slices(data_cfg) -> int:
  """Total number of slices in the train split (all hosts together)."""
  source, _ = _split_source(data_cfg, 'train_split')
  return len(source)


def make_train_dataset(data_cfg, *, scale: int, global_batch_size: int, seed: int,
                       process_index: int | None = None, process_count: int | None = None,
                       upsampled_input: bool = False) -> grain.IterDataset:
  """Infinite, host-sharded, deterministic training batches.

  Yields {'lr': float32 (b, ph/s, pw/s, 1), 'hr': float32 (b, ph, pw, 1)} with
  b = global_batch_size // process_count and (ph, pw) = data.hr_patch_size ('lr' is (b, ph, pw, 1),
  bicubic-upsampled, when `upsampled_input`: for models that take the upsampled LR).
  `iter(ds)` is a grain DatasetIterator: get_state()/set_state(), checkpointable with
  grain.checkpoint.CheckpointSave / CheckpointRestore.
  """
  if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
    raise DataError(f'scale: {scale!r} must be a positive integer')
  scale = int(scale)
  patch = patch_shape(data_cfg)
  if patch[0] % scale or patch[1] % scale:
    raise DataError(f'data.hr_patch_size: {_cfg(data_cfg, "hr_patch_size")} is not divisible by the scale {scale}')
  degradation = tuple(_cfg(data_cfg, 'degradation'))
  try:
    degrade.parse_degradation(degradation)
  except ValueError as e:
    raise DataError(str(e)) from None
  process_index, process_count = _process_index_count(process_index, process_count)
  if (isinstance(global_batch_size, bool) or not isinstance(global_batch_size, (int, np.integer))
      or global_batch_size < 1):
    raise DataError(f'global_batch_size: {global_batch_size!r} must be a positive integer')
  if global_batch_size % process_count:
    raise DataError(f'global_batch_size: {global_batch_size} is not divisible by the number of '
                    f'processes {process_count}')
  local_batch = int(global_batch_size) // process_count
  num_workers = _int_cfg(data_cfg, 'num_workers', 0)
  prefetch_buffer = _int_cfg(data_cfg, 'prefetch_buffer', 0)
  flips = bool(_cfg(data_cfg, 'flips'))
  shuffle_seed, aug_seed = derive_seeds(seed)

  source, split_dir = _split_source(data_cfg, 'train_split')
  for vol in source.volumes:
    if vol.shape[0] < patch[0] or vol.shape[1] < patch[1]:
      raise DataError(f'{vol.path}: slice shape {vol.shape} is smaller than the HR crop '
                      f'{patch[0]}x{patch[1]} (data.hr_patch_size={_cfg(data_cfg, "hr_patch_size")})')
  n = len(source)
  if n < process_count:
    raise DataError(f'{split_dir}: {n} training slices cannot be shared by {process_count} processes')
  if n % process_count:
    logging.info('train split %s: %d slices, %d processes: each epoch leaves out %d '
                 '(different) slices so hosts stay in step', split_dir, n, process_count,
                 n % process_count)

  ds = grain.MapDataset.source(source)
  ds = _global_order(ds, n, shuffle_seed, process_count)
  ds = ds.random_map(CropDegradeFlip(patch, scale, flips, degradation, upsampled_input), seed=aug_seed)
  ds = ds[process_index::process_count]
  ds = ds.repeat(None)
  if prefetch_buffer > 0:
    read_options = grain.ReadOptions(num_threads=max(1, min(4, os.cpu_count() or 1)),
                                     prefetch_buffer_size=prefetch_buffer)
  else:
    read_options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  it_ds = ds.to_iter_dataset(read_options)
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain's worker processes read absl flags; outside absl.app (tests, notebooks) they
      # are unparsed, so use their defaults rather than failing in the worker.
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=max(1, prefetch_buffer)))
  it_ds = it_ds.batch(local_batch, drop_remainder=True)
  logging.info('train pipeline: %d slices in %d volumes from %s; host %d/%d takes %d per epoch; '
               'local batch %d; HR patch %dx%d, scale %d, LR = %s%s, flips %s, workers %d',
               n, len(source.volumes), split_dir, process_index, process_count,
               (n - n % process_count) // process_count, local_batch, *patch, scale,
               ' -> '.join(degradation), ' -> bicubic x%d' % scale if upsampled_input else '', flips,
               num_workers)
  return it_ds


def _evenly_spaced(count: int, limit: int) -> list[int]:
  if limit <= 0 or limit >= count:
    return list(range(count))
  return sorted({int(round(x)) for x in np.linspace(0, count - 1, limit)})


def load_validation_volumes(data_cfg) -> list[dict[str, Any]]:
  """Whole validation slices, deterministic.

  Returns:
    [{'name': str (file stem), 'hr': float32 (S, H, W) in [0, 1], 'slices': list[int]}]
    for the first `val_max_volumes` volumes (sorted by file name; 0 = all), each with
    `val_max_slices` evenly spaced slices (0 = all).
  """
  max_volumes = _int_cfg(data_cfg, 'val_max_volumes', 0)
  max_slices = _int_cfg(data_cfg, 'val_max_slices', 0)
  source, _ = _split_source(data_cfg, 'val_split')
  volumes = source.volumes if max_volumes == 0 else source.volumes[:max_volumes]
  out = []
  for v, vol in enumerate(volumes):
    slices = _evenly_spaced(vol.num_slices, max_slices)
    out.append({'name': vol.name, 'hr': source.read_volume(v, slices), 'slices': slices})
  return out
