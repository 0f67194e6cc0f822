"""Training-input throughput: HR patches per second from fastMRI-schema files, 0/1/2 workers.

  python tools/benchmark_data.py --seconds 8 --write docs/benchmarks.md
  python tools/benchmark_data.py --seconds 8 --no_tfds     # h5 only (without the [tfds] extra)

Synthesises, in a temporary directory, (a) single-coil-knee-sized volumes with precomputed
`reconstruction_rss` targets (320 x 320) and (b) multi-coil volumes with only `kspace`
(15 coils, 640 x 368, complex64) and an ISMRMRD header asking for a 320 x 320 recon. Then it
times the real training pipeline (`pipeline.make_train_dataset`: shuffle, aligned 96 x 96 crop, area
x4 degradation, flips, batches of 16) for each worker count, and, as the baseline in the same run,
the bare reads of the same slices with h5py (no pipeline). For k-space it also times the two parts
of one target (the h5py read of the k-space slice, and the inverse FFT + RSS + crop) to name the
bottleneck.

ArrayRecord beside h5 (needs the [tfds] extra): both sets are also built into `fastmri_slices/folder`
TFDS datasets (tools/build_tfds.py's builder) and the same pipeline reads them with data.format=tfds.
Start-up: --startup_volumes (default 1,000) small volumes (4 slices of 64 x 64, fastMRI single-coil
layout) are written, then the time to open the training source is measured for the h5 source with
data.scan=full (reads every file), data.scan=header (opens every file) and the TFDS source (reads the
dataset's metadata), with the time to build that dataset.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import tempfile
import time

import h5py
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from mrisr_jax import report  # pylint: disable=g-import-not-at-top
from mrisr_jax.data import fastmri, fastmri_files, pipeline  # pylint: disable=g-import-not-at-top

BEGIN, END = '<!-- data:begin -->', '<!-- data:end -->'


def write_targets(directory: pathlib.Path, volumes: int, slices: int, size: int = 320) -> None:
  """Multi-coil-layout files whose `reconstruction_rss` target is stored (one coil of k-space beside it)."""
  rng = np.random.default_rng(0)
  for v in range(volumes):
    recon = rng.random((slices, size, size), dtype=np.float32) * 1e-4
    fastmri_files.write_volume(
      directory / f'file{v:04d}.h5', target=recon, challenge='multicoil', attrs={'acquisition': 'CORPD_FBK'}
    )


def write_kspace(directory: pathlib.Path, volumes: int, slices: int, coils: int = 15, shape=(640, 368)) -> None:
  """Multi-coil files with k-space only (the layout of fastMRI's test sets) and a 320 x 320 recon size."""
  rng = np.random.default_rng(1)
  for v in range(volumes):
    k = rng.standard_normal((slices, coils, *shape), dtype=np.float32) + 1j * rng.standard_normal(
      (slices, coils, *shape), dtype=np.float32
    )
    fastmri_files.write_volume(
      directory / f'mc{v:04d}.h5',
      kspace=k.astype(np.complex64),
      challenge='multicoil',
      recon_hw=(320, 320),
      write_target=False,
      attrs={'acquisition': 'CORPD_FBK'},
    )


def write_small(directory: pathlib.Path, volumes: int, slices: int = 4, size: int = 64) -> None:
  """Many small single-coil volumes: what start-up costs per file."""
  rng = np.random.default_rng(2)
  for v in range(volumes):
    recon = rng.random((slices, size, size), dtype=np.float32)
    fastmri_files.write_volume(directory / f'small{v:05d}.h5', target=recon, attrs={'acquisition': 'CORPD_FBK'})


def build_tfds(manual: pathlib.Path, data_dir: pathlib.Path, workers: int) -> float:
  """Seconds to build fastmri_slices/folder from manual/train (the builder tools/build_tfds.py runs)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from mrisr_jax.data import tfds_fastmri  # noqa: F401  (registers the builder)

  t0 = time.perf_counter()
  builder = tfds.builder('fastmri_slices/folder', data_dir=str(data_dir), num_workers=workers)
  builder.download_and_prepare(
    file_format='array_record',
    download_dir=data_dir / 'downloads',
    download_config=tfds.download.DownloadConfig(manual_dir=str(manual)),
  )
  return time.perf_counter() - t0


def startup_seconds(data: dict, repeats: int = 3) -> float:
  """Best of `repeats`: seconds to open the training source (the start-up of a run before the first read)."""
  from mrisr_jax.data import splits  # pylint: disable=g-import-not-at-top

  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    source, _ = splits.make_source(data, 'train')
    best = min(best, time.perf_counter() - t0)
    source.close()
  return best


def raw_read_rate(files, key: str, seconds: float) -> float:
  """Slices/s of bare h5py reads (the baseline: no pipeline, no decoding, no crops)."""
  handles = [h5py.File(p, 'r') for p in files]
  n, t0 = 0, time.perf_counter()
  rng = np.random.default_rng(0)
  while time.perf_counter() - t0 < seconds:
    f = handles[int(rng.integers(len(handles)))]
    f[key][int(rng.integers(f[key].shape[0]))]
    n += 1
  rate = n / (time.perf_counter() - t0)
  for f in handles:
    f.close()
  return rate


def pipeline_rate(data: dict, workers: int, seconds: float, batch: int) -> tuple[float, float]:
  """(patches/s in steady state, seconds to the first batch) of the training pipeline over `data`."""
  cfg = dict(
    data,
    train_split='train',
    val_split='val',
    hr_patch_size=96,
    degradation=('area',),
    flips=True,
    num_workers=workers,
    prefetch_buffer=8,
  )
  t0 = time.perf_counter()
  it = iter(
    pipeline.make_train_dataset(cfg, scale=4, global_batch_size=batch, seed=0, process_index=0, process_count=1)[0]
  )
  next(it)
  first = time.perf_counter() - t0
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    b = next(it)
    n += b['hr'].shape[0]
  rate = n / (time.perf_counter() - t0)
  del it
  return rate, first


def kspace_parts(files) -> tuple[float, float]:
  """(ms to read one k-space slice, ms to turn it into the cropped RSS target)."""
  with h5py.File(files[0], 'r') as f:
    ds = f['kspace']
    t0 = time.perf_counter()
    for s in range(ds.shape[0]):
      k = ds[s]
    read_ms = (time.perf_counter() - t0) / ds.shape[0] * 1e3
  t0 = time.perf_counter()
  reps = 5
  for _ in range(reps):
    fastmri.rss_from_kspace(k[None], crop_size=(320, 320))
  fft_ms = (time.perf_counter() - t0) / reps * 1e3
  return read_ms, fft_ms


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--seconds', type=float, default=8.0, help='timed seconds per measurement')
  parser.add_argument('--batch', type=int, default=16, help='patches per batch')
  parser.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2], help='worker counts to time')
  parser.add_argument('--volumes', type=int, default=16, help='precomputed-target volumes (x 30 slices)')
  parser.add_argument('--startup_volumes', type=int, default=1000, help='small volumes for the start-up times')
  parser.add_argument('--no_tfds', action='store_true', help='h5 only: leave out the ArrayRecord (TFDS) rows')
  parser.add_argument('--write', default='', help='replace the data section of this markdown file')
  a = parser.parse_args()
  with_tfds = not a.no_tfds
  build_workers = min(2, len(os.sched_getaffinity(0)))

  rows, startup_rows, builds = [], [], []
  with tempfile.TemporaryDirectory(prefix='mrisr_bench_data_') as tmp:
    tmp = pathlib.Path(tmp)
    write_targets(tmp / 'targets' / 'train', a.volumes, 30)
    write_kspace(tmp / 'kspace' / 'train', 2, 6)
    files_t = fastmri.list_files(tmp / 'targets' / 'train')
    files_k = fastmri.list_files(tmp / 'kspace' / 'train')
    base_t = raw_read_rate(files_t, 'reconstruction_rss', a.seconds / 2)
    base_k = raw_read_rate(files_k, 'kspace', a.seconds / 2)
    for label, name, key, base in (
      ('precomputed `reconstruction_rss` 320x320', 'targets', 'reconstruction_rss', base_t),
      ('multi-coil `kspace` 15x640x368 -> RSS -> 320x320', 'kspace', 'kspace', base_k),
    ):
      sources = [('h5', dict(root=str(tmp / name), format='fastmri', target_key=key))]
      if with_tfds:
        seconds = build_tfds(tmp / name, tmp / f'tfds_{name}', build_workers)
        builds.append(f'{label}: {seconds:.1f} s')
        tfds_data = dict(format='tfds', tfds_dir=str(tmp / f'tfds_{name}'), tfds_name='fastmri_slices/folder')
        sources.append(('ArrayRecord (`data.format=tfds`)', tfds_data))
      for kind, data in sources:
        for w in a.workers:
          rate, first = pipeline_rate(data, w, a.seconds, a.batch)
          rows.append(f'| {label} | {kind} | {w} | {rate:,.0f} | {first:.1f} | {base:,.0f} | {rate / base:.2f} |')
          print(rows[-1], flush=True)
    read_ms, fft_ms = kspace_parts(files_k)

    n = a.startup_volumes
    t0 = time.perf_counter()
    write_small(tmp / 'small' / 'train', n)
    print(f'wrote {n} small volumes in {time.perf_counter() - t0:.1f} s', flush=True)
    small = dict(root=str(tmp / 'small'), format='fastmri', hr_patch_size=64)
    full = startup_seconds(dict(small, scan='full'))
    startups = [('h5, `data.scan=full` (reads every file)', full), ('h5, `data.scan=header` (opens every file)', None)]
    startups[1] = (startups[1][0], startup_seconds(dict(small, scan='header')))
    if with_tfds:
      seconds = build_tfds(tmp / 'small', tmp / 'tfds_small', build_workers)
      builds.append(f'{n} small volumes: {seconds:.1f} s')
      tfds_small = dict(
        format='tfds', tfds_dir=str(tmp / 'tfds_small'), tfds_name='fastmri_slices/folder', hr_patch_size=64
      )
      startups.append(('ArrayRecord (`data.format=tfds`, reads the metadata)', startup_seconds(tfds_small)))
    for label, seconds in startups:
      startup_rows.append(f'| {label} | {seconds:.2f} | {seconds / full:.3f} |')
      print(startup_rows[-1], flush=True)
  import grain  # pylint: disable=g-import-not-at-top

  versions = f'numpy {np.__version__}, h5py {h5py.__version__}, grain {getattr(grain, "__version__", "?")}'
  if with_tfds:
    from importlib import metadata  # pylint: disable=g-import-not-at-top

    versions += f', tensorflow-datasets {metadata.version("tensorflow-datasets")}, array_record {metadata.version("array_record")}'
  section = '\n'.join(
    [
      BEGIN,
      f'Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; Python {platform.python_version()}, '
      f'{versions}.',
      f'Command: `python tools/benchmark_data.py --seconds {a.seconds:g} --write {a.write or "FILE"}`. '
      f'Pipeline: shuffle, aligned 96x96 HR crop, area x4, flips, batch {a.batch}.',
      '',
      '| data | source | workers | HR patches/s | s to first batch | baseline: bare h5py slice reads/s | ratio |',
      '|---|---|---|---|---|---|---|',
      *rows,
      '',
      f'k-space target, per slice: h5py read {read_ms:.1f} ms, inverse FFT of 15 coils + RSS + crop '
      f'{fft_ms:.1f} ms: the bottleneck is the '
      f'{"FFT" if fft_ms > read_ms else "read"}.',
      '',
      f'Start-up: opening the training source of {a.startup_volumes:,} volumes (4 slices of 64 x 64 each, '
      'files in the page cache); baseline `data.scan=full` in the same run.',
      '',
      '| source | seconds | ratio to scan=full |',
      '|---|---|---|',
      *startup_rows,
      *(
        [
          '',
          'Building the ArrayRecord datasets (fastmri_slices/folder, '
          f'{build_workers} reading processes): ' + '; '.join(builds) + '.',
        ]
        if builds
        else []
      ),
      END,
    ]
  )
  print(section)
  if a.write:
    report.replace_section(a.write, section, '## Data pipeline: HR patches per second')


if __name__ == '__main__':
  main()
