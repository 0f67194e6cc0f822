"""Training-input throughput: HR patches per second from fastMRI-schema files, 0/1/2 workers.

  python tools/benchmark_data.py --seconds 8 --write docs/benchmarks.md

Synthesises, in a temporary directory, (a) single-coil-knee-sized volumes with precomputed
`reconstruction_rss` targets (320 x 320) and (b) multi-coil volumes with only `kspace`
(15 coils, 640 x 368, complex64) and an ISMRMRD header asking for a 320 x 320 recon. Then it
times the real training pipeline (`pipeline.make_train_dataset`: shuffle, aligned 96 x 96 crop, area
x4 degradation, flips, batches of 16) for each worker count, and, as the baseline in the same run,
the bare reads of the same slices with h5py (no pipeline). For k-space it also times the two parts
of one target (the h5py read of the k-space slice, and the inverse FFT + RSS + crop) to name the
bottleneck.
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
from mrisr_jax.data import fastmri, pipeline  # pylint: disable=g-import-not-at-top

BEGIN, END = '<!-- data:begin -->', '<!-- data:end -->'
HEADER = (
  '<?xml version="1.0" encoding="utf-8"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">'
  '<encoding><encodedSpace><matrixSize><x>{ex}</x><y>{ey}</y><z>1</z></matrixSize></encodedSpace>'
  '<reconSpace><matrixSize><x>{rx}</x><y>{ry}</y><z>1</z></matrixSize></reconSpace>'
  '</encoding></ismrmrdHeader>'
)


def write_targets(directory: pathlib.Path, volumes: int, slices: int, size: int = 320) -> None:
  rng = np.random.default_rng(0)
  directory.mkdir(parents=True, exist_ok=True)
  for v in range(volumes):
    recon = rng.random((slices, size, size), dtype=np.float32) * 1e-4
    with h5py.File(directory / f'file{v:04d}.h5', 'w') as f:
      f.create_dataset('reconstruction_rss', data=recon)
      f.attrs['max'] = float(recon.max())
      f.attrs['acquisition'] = 'CORPD_FBK'


def write_kspace(directory: pathlib.Path, volumes: int, slices: int, coils: int = 15, shape=(640, 368)) -> None:
  rng = np.random.default_rng(1)
  directory.mkdir(parents=True, exist_ok=True)
  for v in range(volumes):
    with h5py.File(directory / f'mc{v:04d}.h5', 'w') as f:
      ds = f.create_dataset('kspace', shape=(slices, coils, *shape), dtype=np.complex64)
      for s in range(slices):
        k = rng.standard_normal((coils, *shape), dtype=np.float32) + 1j * rng.standard_normal(
          (coils, *shape), dtype=np.float32
        )
        ds[s] = k.astype(np.complex64)
      f.create_dataset('ismrmrd_header', data=HEADER.format(ex=shape[0], ey=shape[1], rx=320, ry=320))
      f.attrs['acquisition'] = 'CORPD_FBK'


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


def pipeline_rate(root: pathlib.Path, workers: int, seconds: float, batch: int, target_key: str) -> tuple[float, float]:
  """(patches/s in steady state, seconds to the first batch)."""
  cfg = dict(
    root=str(root),
    train_split='train',
    val_split='val',
    format='fastmri',
    target_key=target_key,
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
  parser.add_argument('--write', default='', help='replace the data section of this markdown file')
  a = parser.parse_args()

  rows = []
  with tempfile.TemporaryDirectory(prefix='mrisr_bench_data_') as tmp:
    tmp = pathlib.Path(tmp)
    write_targets(tmp / 'targets' / 'train', a.volumes, 30)
    write_kspace(tmp / 'kspace' / 'train', 2, 6)
    files_t = fastmri.list_files(tmp / 'targets' / 'train')
    files_k = fastmri.list_files(tmp / 'kspace' / 'train')
    base_t = raw_read_rate(files_t, 'reconstruction_rss', a.seconds / 2)
    base_k = raw_read_rate(files_k, 'kspace', a.seconds / 2)
    for label, root, key, base in (
      ('precomputed `reconstruction_rss` 320x320', tmp / 'targets', 'reconstruction_rss', base_t),
      ('multi-coil `kspace` 15x640x368 -> RSS -> 320x320', tmp / 'kspace', 'kspace', base_k),
    ):
      for w in a.workers:
        rate, first = pipeline_rate(root, w, a.seconds, a.batch, key)
        rows.append(f'| {label} | {w} | {rate:,.0f} | {first:.1f} | {base:,.0f} | {rate / base:.2f} |')
        print(rows[-1], flush=True)
    read_ms, fft_ms = kspace_parts(files_k)
  import grain  # pylint: disable=g-import-not-at-top

  section = '\n'.join(
    [
      BEGIN,
      f'Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; Python {platform.python_version()}, '
      f'numpy {np.__version__}, h5py {h5py.__version__}, grain {getattr(grain, "__version__", "?")}.',
      f'Command: `python tools/benchmark_data.py --seconds {a.seconds:g} --write {a.write or "FILE"}`. '
      f'Pipeline: shuffle, aligned 96x96 HR crop, area x4, flips, batch {a.batch}.',
      '',
      '| source | workers | HR patches/s | s to first batch | baseline: bare h5py slice reads/s | ratio |',
      '|---|---|---|---|---|---|',
      *rows,
      '',
      f'k-space target, per slice: h5py read {read_ms:.1f} ms, inverse FFT of 15 coils + RSS + crop '
      f'{fft_ms:.1f} ms: the bottleneck is the '
      f'{"FFT" if fft_ms > read_ms else "read"}.',
      END,
    ]
  )
  print(section)
  if a.write:
    report.replace_section(a.write, section, '## Data pipeline: HR patches per second')


if __name__ == '__main__':
  main()
