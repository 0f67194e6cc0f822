"""Training and validation input pipelines (grain Dataset API).

Training order: one global stream of slices, the same for any number of hosts, from which each host
takes its share:

  MapDataset.source(SliceSource)                n slices of the train split (data/splits.py)
    .shuffle(shuffle_seed)                      global shuffle of one epoch
    .repeat(None)                               infinite; epoch e is reshuffled with shuffle_seed + e
    .random_map(MakeTrainingPair, seed=aug_seed)  aligned crop, degradation, flips
    HostShare(start, local_batch, p, P)          this host's block of every global batch (below)
    .to_iter_dataset(ReadOptions)               thread prefetch
    [.mp_prefetch(num_workers)]                 optional process prefetch (per element)
    .batch(global_batch_size // process_count, drop_remainder=True)

Global batch b is the stream's positions [start + b*B, start + (b+1)*B); host p reads the block
p*B/P ... (p+1)*B/P - 1 of it, so the hosts' batches side by side are exactly the 1-host global
batch, with the same crops, for any process count P dividing B. `random_map` sits before the host
split, so the RNG of an element is seeded by (aug_seed, global position): crops and flips depend
only on `seed` and the position, not on the number of hosts or workers. Resuming needs only the
global position `start` (samples consumed so far): a checkpoint written by P processes resumes on
P' processes at the same place in the stream, even with another global batch size.
`shuffle_seed` and `aug_seed` both derive from `seed` (numpy SeedSequence).
"""

from __future__ import annotations

import os
import sys
from typing import Any
import zlib

from absl import flags
from absl import logging
import grain
import numpy as np

from mrisr_jax.data import degrade
from mrisr_jax.data import splits
from mrisr_jax.data.errors import DataError
from mrisr_jax.spec import data_spec


def check_degradation_fits(steps, scale: int, upsampled_input: bool) -> tuple[int, int]:
  """The per-axis reduction of `steps`; models that upsample both axes need (scale, scale)."""
  factors = degrade.lr_factors(steps, scale)
  if not upsampled_input and factors != (scale, scale):
    raise DataError(
      f'data.degradation: {tuple(steps)} reduces (rows, columns) by {factors}, but the '
      f'model upsamples both by {scale}; anisotropic degradations (thick slices) need a '
      'model that takes the upsampled input (srcnn, drrn)'
    )
  return factors


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


class HostShare(grain.MapDataset):
  """One host's elements of an infinite global stream, from global position `start` on.

  Global batch b is the stream's positions [start + b*B, start + (b+1)*B); host p holds the
  contiguous block p*Bl ... (p+1)*Bl - 1 of it (Bl = B / P), so the processes' local batches,
  concatenated in process order (as `jax.make_array_from_process_local_data` places them), are
  exactly the 1-process global batch, for any process count.
  """

  def __init__(self, parent: grain.MapDataset, *, start: int, local_batch: int, process_index: int, process_count: int):
    super().__init__(parent)
    self._start, self._local = int(start), int(local_batch)
    self._index, self._count = int(process_index), int(process_count)

  def __len__(self) -> int:
    return sys.maxsize

  def global_position(self, index: int) -> int:
    b, k = divmod(index, self._local)
    return self._start + (b * self._count + self._index) * self._local + k

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self.global_position(index)]

  def __str__(self) -> str:
    return f'HostShare(start={self._start}, host {self._index}/{self._count}, local batch {self._local})'


def host_slice_order(
  num_slices: int,
  *,
  seed: int,
  start: int,
  count: int,
  local_batch: int,
  process_index: int = 0,
  process_count: int = 1,
) -> list[int]:
  """The slice indices (into the train source) of one host's first `count` elements of the stream
  resumed at global position `start`. Same index arithmetic as `make_train_dataset`."""
  shuffle_seed, _ = derive_seeds(seed)
  process_index, process_count = _process_index_count(process_index, process_count)
  ds = grain.MapDataset.range(num_slices).shuffle(seed=shuffle_seed).repeat(None)
  ds = HostShare(ds, start=start, local_batch=local_batch, process_index=process_index, process_count=process_count)
  return [int(ds[j]) for j in range(count)]


def crop_to_multiple(image: np.ndarray, factors: tuple[int, int]) -> np.ndarray:
  """Centre-crop the last two axes to multiples of (fy, fx)."""
  h, w = image.shape[-2:]
  nh, nw = h - h % factors[0], w - w % factors[1]
  top, left = (h - nh) // 2, (w - nw) // 2
  return image[..., top : top + nh, left : left + nw]


def pad_to(image: np.ndarray, h: int, w: int) -> np.ndarray:
  """Zero-pad (H, W) to at least (h, w), centred with the extra pixel top/left (TransMRSR's Crop)."""
  dh, dw = max(0, h - image.shape[0]), max(0, w - image.shape[1])
  if not dh and not dw:
    return image
  return np.pad(image, [((dh + 1) // 2, dh // 2), ((dw + 1) // 2, dw // 2)])


class MakeTrainingPair(grain.transforms.RandomMap):
  """A random aligned (HR, LR) patch pair from one slice.

  1. HR crop (ph x pw) at a random position on the grid of the degradation's factors, so the LR crop
     covers exactly the HR crop.
  2. LR: the paired LR file's matching crop (image folders), or the degradation steps applied to the
     crop; steps that need the whole slice (k-space truncation) run on the slice first.
  3. The same random flips (and transposes, if enabled) of both.
  4. Models that take the upsampled input get the LR bicubic-resized to (ph, pw) and clipped to [0, 1]
     (the input of SRCNN/DRRN, as the seed's `downsample.py -k` writes it).

  Output: {'lr': float32 (ph/fy, pw/fx, 1) or (ph, pw, 1), 'hr': float32 (ph, pw, 1)}. Picklable; all
  randomness comes from the per-element `rng` grain derives from the seed and the element position.
  """

  def __init__(
    self,
    patch: tuple[int, int],
    scale: int,
    flips: bool,
    degradation=('area',),
    upsampled_input: bool = False,
    transposes: bool = False,
    pad_to_patch: bool = False,
  ):
    self.patch = (int(patch[0]), int(patch[1]))
    self.pad_to_patch = bool(pad_to_patch)
    self.scale = int(scale)
    self.flips = bool(flips)
    self.transposes = bool(transposes)
    self.degradation = tuple(degradation)
    degrade.parse_degradation(self.degradation)  # fail at construction, not in a worker
    self.factors = degrade.lr_factors(self.degradation, self.scale)
    self.whole_slice = degrade.is_global(self.degradation)
    self.upsampled_input = bool(upsampled_input)
    # an anisotropic LR (thick slices) transposes with its HR when the model takes the upsampled input:
    # the square crop's LR is then brought to the HR grid along the transposed axis (TransMRSR's augmentation)
    anisotropic = self.factors[0] != self.factors[1] and not self.upsampled_input
    if self.transposes and (self.patch[0] != self.patch[1] or anisotropic):
      raise DataError(
        f'data.transposes: needs a square patch and an isotropic degradation or an upsampled-input model (patch '
        f'{self.patch}, reduction {self.factors})'
      )

  def _crop_origin(self, shape, grid, rng, element) -> tuple[int, int]:
    ph, pw = self.patch
    h, w = shape
    if h < ph or w < pw:
      raise DataError(
        f'{element.get("volume", "?")} slice {element.get("slice", "?")}: slice shape '
        f'{(h, w)} is smaller than the HR crop {ph}x{pw} (data.hr_patch_size)'
      )
    y = int(rng.integers(0, (h - ph) // grid[0] + 1)) * grid[0]
    x = int(rng.integers(0, (w - pw) // grid[1] + 1)) * grid[1]
    return y, x

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    ph, pw = self.patch
    image = element['image']
    if self.pad_to_patch and 'lr' not in element:
      image = pad_to(image, ph, pw)
    if 'lr' in element:  # paired LR files
      lr_full = element['lr']
      grid = (1, 1) if lr_full.shape == image.shape else (self.scale, self.scale)
      y, x = self._crop_origin(image.shape, grid, rng, element)
      hr = image[y : y + ph, x : x + pw]
      lr = lr_full[y // grid[0] : (y + ph) // grid[0], x // grid[1] : (x + pw) // grid[1]]
    elif self.whole_slice:
      image = crop_to_multiple(image, self.factors)
      lr_full = degrade.make_lr(image, self.scale, self.degradation, rng=rng)
      y, x = self._crop_origin(image.shape, self.factors, rng, element)
      hr = image[y : y + ph, x : x + pw]
      fy, fx = self.factors
      lr = lr_full[y // fy : (y + ph) // fy, x // fx : (x + pw) // fx]
    else:
      y, x = self._crop_origin(image.shape, self.factors, rng, element)
      hr = image[y : y + ph, x : x + pw]
      lr = degrade.make_lr(hr, self.scale, self.degradation, rng=rng)
    if self.flips:
      flip_lr, flip_ud = rng.random(2) < 0.5
      if flip_lr:
        hr, lr = hr[:, ::-1], lr[:, ::-1]
      if flip_ud:
        hr, lr = hr[::-1, :], lr[::-1, :]
    if self.transposes and rng.random() < 0.5:
      hr, lr = hr.T, lr.T
    hr = np.ascontiguousarray(hr, dtype=np.float32)
    lr = np.ascontiguousarray(lr, dtype=np.float32)
    if self.upsampled_input and lr.shape != hr.shape:
      lr = np.clip(degrade.bicubic_resize(lr, ph, pw), 0.0, 1.0).astype(np.float32)
    return {'lr': lr[..., None], 'hr': hr[..., None]}


def train_source(data, scale: int | None = None):
  """(source, split directory) of the training split; volumes smaller than the crop are bad files."""
  data = data_spec(data)
  return splits.make_source(data, 'train', scale, min_shape=None if data.pad_to_patch else data.hr_patch_size)


def num_train_slices(data, scale: int | None = None) -> int:
  """Total number of slices in the train split (all hosts together)."""
  source, _ = train_source(data, scale)
  return len(source)


def make_train_dataset(
  data,
  *,
  scale: int,
  global_batch_size: int,
  seed: int,
  process_index: int | None = None,
  process_count: int | None = None,
  upsampled_input: bool = False,
  start: int = 0,
  split=None,
) -> tuple[grain.IterDataset, int]:
  """(Infinite, host-sharded, deterministic training batches, number of training slices).

  `data`: the run's DataSpec (or a config.data section, resolved here); `split`: the train split's
  (source, directory) when the caller built it already (`train_source`), so it is read once per run.
  Yields {'lr': float32 (b, ph/s, pw/s, 1), 'hr': float32 (b, ph, pw, 1)} with
  b = global_batch_size // process_count and (ph, pw) = data.hr_patch_size ('lr' is (b, ph, pw, 1),
  bicubic-upsampled, when `upsampled_input`: for models that take the upsampled LR).
  `start` is the global stream position to begin at (samples already consumed by all hosts
  together: a multiple of the process count); training resumes with it, on any process count.
  """
  if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
    raise DataError(f'scale: {scale!r} must be a positive integer')
  scale = int(scale)
  data = data_spec(data)
  patch, degradation = data.hr_patch_size, data.degradation
  factors = check_degradation_fits(degradation, scale, upsampled_input)
  if patch[0] % factors[0] or patch[1] % factors[1]:
    raise DataError(
      f'data.hr_patch_size: {patch[0] if patch[0] == patch[1] else patch} is not divisible by the scale {scale}'
    )
  process_index, process_count = _process_index_count(process_index, process_count)
  if (
    isinstance(global_batch_size, bool) or not isinstance(global_batch_size, (int, np.integer)) or global_batch_size < 1
  ):
    raise DataError(f'global_batch_size: {global_batch_size!r} must be a positive integer')
  if global_batch_size % process_count:
    raise DataError(
      f'global_batch_size: {global_batch_size} is not divisible by the number of processes {process_count}'
    )
  local_batch = int(global_batch_size) // process_count
  num_workers, prefetch_buffer = data.num_workers, data.prefetch_buffer
  flips, transposes = data.flips, data.transposes
  shuffle_seed, aug_seed = derive_seeds(seed)

  source, split_dir = split if split is not None else train_source(data, scale)
  if source.has_lr and not upsampled_input and any(v.metadata.get('lr_keepdims') for v in source.volumes):
    raise DataError(
      f'{split_dir}: the LR files are HR-sized (downsample.py -k), which only models that '
      'take the upsampled input can use; set data.lr_source=degrade or use srcnn/drrn'
    )
  n = len(source)
  if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
    raise DataError(f'data position: {start!r} must be a non-negative integer')
  pair = MakeTrainingPair(patch, scale, flips, degradation, upsampled_input, transposes, data.pad_to_patch)
  ds = grain.MapDataset.source(source).shuffle(seed=shuffle_seed).repeat(None)
  ds = ds.random_map(pair, seed=aug_seed)
  ds = HostShare(
    ds, start=int(start), local_batch=local_batch, process_index=process_index, process_count=process_count
  )
  if prefetch_buffer > 0:
    read_options = grain.ReadOptions(
      num_threads=max(1, min(4, os.cpu_count() or 1)), prefetch_buffer_size=prefetch_buffer
    )
  else:
    read_options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  it_ds = ds.to_iter_dataset(read_options)
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain's worker processes read absl flags; outside absl.app (tests, notebooks) they
      # are unparsed, so use their defaults rather than failing in the worker.
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=max(1, prefetch_buffer))
    )
  it_ds = it_ds.batch(local_batch, drop_remainder=True)
  lr_desc = 'LR files' if source.has_lr else ' -> '.join(degradation)
  logging.info(
    'train pipeline: %d slices in %d volumes (%s) from %s; host %d/%d from global position %d; '
    'local batch %d; HR patch %dx%d, scale %d, LR = %s%s, flips %s, transposes %s, workers %d',
    n,
    len(source.volumes),
    source.format_name,
    split_dir,
    process_index,
    process_count,
    start,
    local_batch,
    *patch,
    scale,
    lr_desc,
    ' -> bicubic to HR size' if upsampled_input else '',
    flips,
    transposes,
    num_workers,
  )
  return it_ds, n


def next_batch(iterator) -> dict:
  """next(iterator), with a one-line DataError when a grain worker process died of a bad sample.

  In a worker, a slice that fails its read checks (data.scan=header) raises DataError there; grain
  then reports only that the worker stopped, and the DataError naming the file is in the log.
  """
  try:
    return next(iterator)
  except RuntimeError as err:
    if 'Worker process' not in str(err):
      raise
    raise DataError(
      f'the input pipeline stopped: {err} (with data.num_workers > 0 the worker logs the '
      'DataError naming the file and slice above; rerun with data.num_workers=0 to see it '
      'here)'
    ) from err


def _evenly_spaced(count: int, limit: int) -> list[int]:
  if limit <= 0 or limit >= count:
    return list(range(count))
  return sorted({int(round(x)) for x in np.linspace(0, count - 1, limit)})


def slice_rng(seed: int, volume: str, slice_index: int) -> np.random.Generator:
  """The generator of a validation slice's degradation: fixed by (seed, volume name, slice)."""
  return np.random.default_rng([int(seed), zlib.crc32(volume.encode('utf-8')), int(slice_index)])


def load_validation_volumes(data, scale: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
  """Whole validation slices with their LR inputs, deterministic.

  Returns, for the first `val_max_volumes` volumes (sorted by name; 0 = all), each with
  `val_max_slices` evenly spaced slices (0 = all):
    {'name': str, 'slices': list[int], 'metadata': dict,
     'hr': float32 (S, H, W) in [0, 1], centre-cropped to multiples of the degradation's factors,
     'lr': float32 (S, H/fy, W/fx) (only when `scale` is given): the paired LR files, or the
           degradation of the HR with a generator fixed per (seed, volume, slice)}.
  """
  data = data_spec(data)
  max_volumes, max_slices = data.val_max_volumes, data.val_max_slices
  source, _ = splits.make_source(data, 'val', scale)
  degradation = data.degradation
  volumes = source.volumes if max_volumes == 0 else source.volumes[:max_volumes]
  out = []
  for v, vol in enumerate(volumes):
    slices = _evenly_spaced(vol.num_slices, max_slices)
    hr = source.read_volume(v, slices)
    entry = {'name': vol.name, 'slices': slices, 'metadata': vol.metadata}
    if scale is None:
      entry['hr'] = hr
    elif source.has_lr:
      entry['hr'], entry['lr'] = hr, source.read_lr_volume(v, slices)
    else:
      entry['hr'], entry['lr'] = degrade_volume(hr, vol.name, slices, scale, degradation, seed)
    out.append(entry)
  return out


def degrade_volume(
  hr: np.ndarray, name: str, slices, scale: int, degradation: tuple, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """(HR centre-cropped to multiples of the degradation's factors, its LR): each slice degraded with
  the generator fixed per (seed, volume name, slice index), as validation does."""
  hr = crop_to_multiple(np.asarray(hr, np.float32), degrade.lr_factors(degradation, scale))
  lr = np.stack(
    [degrade.make_lr(hr[k], scale, degradation, rng=slice_rng(seed, name, s)) for k, s in enumerate(slices)]
  )
  return hr, lr
