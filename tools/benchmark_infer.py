"""Whole-volume NIfTI inference: peak resident memory against an in-memory baseline, and wall time.

  python tools/benchmark_infer.py --write docs/benchmarks.md

Synthesises, in a temporary directory, int16 NIfTI volumes of smooth random structure (a few
Gaussian blobs on a background), exports freshly initialised SRCNN weights (`mrisr_jax.export`; the
weights do not change the cost) and runs `python -m mrisr_jax.infer ... --noprogress` on them, each
in its own subprocess, recording that subprocess's peak RSS (`os.wait4`'s ru_maxrss) and wall time.
While it runs, /proc/PID/status is polled to split the peak into anonymous memory (arrays, XLA
buffers) and file-backed pages (the memory-mapped input and output).

Cases:
  floor     SRCNN x2 on a 64x64x4 volume: the fixed cost (Python, JAX/XLA, the model, a compile).
  A         in-plane SRCNN x2 (quick): 512x512xS -> 1024x1024xS float32 (S = --slices, default 400);
            with --scaling also at S/4 slices, to show whether memory grows with the slice count.
  B         through-plane SRCNN x4 with `thick:axis=0` (lr_factors (4, 1)): 512x512x(S/4) with voxel
            sizes (0.5, 0.5, 2.0) -> 512x512xS.
  A .nii.gz the case-A input and output gzipped (with --gz).

Baseline, in the same run: the least an in-memory implementation needs, the input and the output
as float32 arrays (bytes computed), and the measured peak RSS of a subprocess that imports numpy,
allocates both arrays and touches every page. The ratio is peak RSS / baseline bytes.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
BEGIN, END = '<!-- infer:begin -->', '<!-- infer:end -->'
HEADING = '## Whole-volume inference: peak memory'


# ------------------------------------------------------------------------------------------ inputs


def write_volume(path: pathlib.Path, shape, zooms, seed: int = 0, blobs: int = 8) -> None:
  """An int16 NIfTI of `shape`: a background plus `blobs` anisotropic Gaussian blobs, written with
  nibabel (built one chunk of axis-2 planes at a time, so the float temporaries stay small)."""
  import nibabel as nib

  rng = np.random.default_rng(seed)
  axes = [np.arange(n, dtype=np.float32) for n in shape]
  profiles = []
  for _ in range(blobs):
    prof = []
    for n, ax in zip(shape, axes):
      centre, sigma = rng.uniform(0.1, 0.9) * n, rng.uniform(0.08, 0.3) * n
      prof.append(np.exp(-0.5 * ((ax - centre) / sigma) ** 2).astype(np.float32))
    profiles.append((float(rng.uniform(300, 1500)), prof))
  data = np.empty(shape, dtype=np.int16, order='F')
  for z0 in range(0, shape[2], 16):
    z1 = min(shape[2], z0 + 16)
    block = np.full((shape[0], shape[1], z1 - z0), 100.0, np.float32)
    for amp, (gx, gy, gz) in profiles:
      block += amp * gx[:, None, None] * gy[None, :, None] * gz[None, None, z0:z1]
    data[:, :, z0:z1] = np.clip(block, 0, 32767).astype(np.int16)
  affine = np.diag([*zooms, 1.0])
  img = nib.Nifti1Image(data, affine)
  img.header.set_zooms(zooms)
  img.to_filename(str(path))


# -------------------------------------------------------------------------------------- measuring


def _status_kb(pid: int) -> dict:
  out = {}
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        key, _, rest = line.partition(':')
        if key in ('VmRSS', 'RssAnon', 'RssFile', 'RssShmem', 'VmHWM'):
          out[key] = int(rest.split()[0])
  except (OSError, ValueError, IndexError):
    pass
  return out


def run_measured(cmd, env=None, poll: float = 0.1) -> dict:
  """Runs `cmd`; returns {'rss': peak RSS bytes (ru_maxrss), 'anon', 'file': peaks of the sampled
  RssAnon / RssFile (bytes), 'seconds', 'output'}; raises on a non-zero exit."""
  log = tempfile.TemporaryFile()
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
  peaks = {'RssAnon': 0, 'RssFile': 0}
  done = threading.Event()

  def sample():
    while not done.is_set():
      s = _status_kb(proc.pid)
      for k in peaks:
        peaks[k] = max(peaks[k], s.get(k, 0))
      done.wait(poll)

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the max over all children
  seconds = time.perf_counter() - start
  done.set()
  sampler.join()
  proc.returncode = os.waitstatus_to_exitcode(status)
  log.seek(0)
  output = log.read().decode(errors='replace')
  log.close()
  if proc.returncode != 0:
    raise RuntimeError(f'{" ".join(map(str, cmd))} exited {proc.returncode}:\n{output[-3000:]}')
  return {
    'rss': usage.ru_maxrss * 1024,
    'anon': peaks['RssAnon'] * 1024,
    'file': peaks['RssFile'] * 1024,
    'seconds': seconds,
    'output': output.strip(),
  }


BASELINE_SNIPPET = """
import sys, numpy as np
a = np.empty({in_shape}, np.float32); a.fill(1.0)
b = np.empty({out_shape}, np.float32); b.fill(1.0)
print(a.nbytes + b.nbytes)
"""


def baseline(in_shape, out_shape) -> dict:
  """The in-memory floor: bytes of input + output as float32, and a measured numpy process holding both."""
  nbytes = 4 * (int(np.prod(in_shape)) + int(np.prod(out_shape)))
  code = BASELINE_SNIPPET.format(in_shape=tuple(in_shape), out_shape=tuple(out_shape))
  m = run_measured([sys.executable, '-c', code])
  return {'bytes': nbytes, 'rss': m['rss']}


# ------------------------------------------------------------------------------------------ driver


def show(cmd, tmp, py) -> str:
  """The command as a shell line, `$TMP` for the temporary directory, `python` for the interpreter."""
  words = []
  for w in map(str, cmd):
    w = w.replace(str(tmp), '$TMP').replace(py, 'python')
    quoted = shlex.quote(w)
    if quoted != w and "'" in w and not any(c in w for c in '"$`\\!'):
      quoted = f'"{w}"'
    words.append(
      w
      if w.startswith('--weights=$TMP')
      or w.startswith('--input=$TMP')
      or w.startswith('--output=$TMP')
      or w.startswith('--out=$TMP')
      else quoted
    )
  return ' '.join(words)


def gb(n: float) -> str:
  return f'{n / 1e9:.2f} GB'


def shape_str(shape) -> str:
  return 'x'.join(str(n) for n in shape)


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or '?'


def versions() -> str:
  import flax
  import jax
  import nibabel

  return (
    f'Python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, '
    f'numpy {np.__version__}, nibabel {nibabel.__version__}'
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--size', type=int, default=512, help='in-plane side of the volumes (default 512)')
  parser.add_argument(
    '--slices', type=int, default=400, help='HR slices S: case A input is SIZE x SIZE x S, case B output (default 400)'
  )
  parser.add_argument(
    '--batch', type=int, default=0, help="infer --batch (planes per forward pass; 0: infer's size-based default)"
  )
  parser.add_argument('--tile', type=int, default=0, help='infer --tile (0: whole planes)')
  parser.add_argument(
    '--cases',
    nargs='+',
    default=['floor', 'A', 'B'],
    choices=['floor', 'A', 'B'],
    help='cases to run (default: floor A B)',
  )
  parser.add_argument(
    '--scaling', action='store_true', help='also run case A at S/4 slices (memory must not grow with the slice count)'
  )
  parser.add_argument(
    '--compare_batch',
    type=int,
    default=8,
    help='also run case A at S/4 slices with this infer --batch (0: no); 8 was the '
    'fixed default before the size-based one',
  )
  parser.add_argument('--gz', action='store_true', help='also run case A with .nii.gz input and output')
  parser.add_argument('--tmp', default=None, help='directory for the temporary files (GBs; default: system temp)')
  parser.add_argument('--keep', action='store_true', help='keep the temporary directory (volumes, weights)')
  parser.add_argument('--write', default='', help='replace the infer section of this markdown file')
  a = parser.parse_args()

  tmp = pathlib.Path(tempfile.mkdtemp(prefix='mrisr_bench_infer_', dir=a.tmp))
  py = sys.executable
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  rows, commands, notes = [], [], []
  thick = "--config.data.degradation=('thick:axis=0',)"
  configs = {'x2': ['--config=configs/srcnn.py:x2,quick'], 'thick4': ['--config=configs/srcnn.py:x4,quick', thick]}

  def weights(key):
    path = tmp / f'srcnn_{key}.safetensors'
    if not path.exists():
      cmd = [py, '-m', 'mrisr_jax.export', *configs[key], f'--out={path}']
      run_measured(cmd, env=env)
      commands.append(show(cmd, tmp, py))
    return path

  def case(label, key, in_shape, zooms, out_shape, suffix='.nii', batch=None):
    src = tmp / f'in_{shape_str(in_shape)}_{shape_str(f"{z:g}" for z in zooms)}mm{suffix}'
    if not src.exists():
      write_volume(src, in_shape, zooms)
    dst = tmp / f'out_{label.split()[0]}_{shape_str(in_shape)}{suffix}'
    cmd = [
      py,
      '-m',
      'mrisr_jax.infer',
      *configs[key],
      f'--weights={weights(key)}',
      f'--input={src}',
      f'--output={dst}',
      f'--batch={a.batch if batch is None else batch}',
      f'--tile={a.tile}',
      '--overwrite',
      '--noprogress',
    ]
    print(f'[{label}] {" ".join(cmd)}', flush=True)
    m = run_measured(cmd, env=env)
    import nibabel as nib

    got = tuple(int(n) for n in nib.load(str(dst)).shape)
    if got != tuple(out_shape):
      raise RuntimeError(f'{label}: output shape {got}, expected {out_shape}')
    dst.unlink()
    base = baseline(in_shape, out_shape)
    out_bytes = 4 * int(np.prod(out_shape))
    # the floor's baseline is a few MB: its ratio would say nothing
    ratio = f'{m["rss"] / base["bytes"]:.2f}' if base['bytes'] >= 1e8 else '-'
    row = (
      f'| {label} | {shape_str(in_shape)} int16 | {shape_str(out_shape)} float32 | {gb(out_bytes)} | '
      f'{gb(m["rss"])} | {gb(m["anon"])} / {gb(m["file"])} | {gb(base["bytes"])} '
      f'({gb(base["rss"])}) | {ratio} | {m["seconds"]:.0f} |'
    )
    rows.append(row)
    commands.append(show(cmd, tmp, py))
    m['base'] = base
    print(row, '\n  ', m['output'].splitlines()[-1] if m['output'] else '', flush=True)
    return m

  s, n = a.slices, a.size
  results = {}
  try:
    if 'floor' in a.cases:
      results['floor'] = case('floor (SRCNN x2)', 'x2', (64, 64, 4), (1.0, 1.0, 1.0), (128, 128, 4))
    if 'A' in a.cases:
      if a.scaling:
        q = max(1, s // 4)
        results['A4'] = case(f'A in-plane SRCNN x2, {q} slices', 'x2', (n, n, q), (1.0, 1.0, 1.0), (2 * n, 2 * n, q))
      results['A'] = case(f'A in-plane SRCNN x2, {s} slices', 'x2', (n, n, s), (1.0, 1.0, 1.0), (2 * n, 2 * n, s))
      if a.compare_batch:
        q = max(1, s // 4)
        results['Ab'] = case(
          f'A in-plane SRCNN x2, {q} slices, --batch {a.compare_batch}',
          'x2',
          (n, n, q),
          (1.0, 1.0, 1.0),
          (2 * n, 2 * n, q),
          batch=a.compare_batch,
        )
      if a.gz:
        results['Agz'] = case(
          f'A .nii.gz in-plane SRCNN x2, {s} slices',
          'x2',
          (n, n, s),
          (1.0, 1.0, 1.0),
          (2 * n, 2 * n, s),
          suffix='.nii.gz',
        )
    if 'B' in a.cases:
      t = max(1, s // 4)
      results['B'] = case(
        f'B through-plane SRCNN x4 thick:axis=0, {t} -> {4 * t} slices',
        'thick4',
        (n, n, t),
        (0.5, 0.5, 2.0),
        (n, n, 4 * t),
      )
  finally:
    if a.keep:
      print(f'kept {tmp}')
    else:
      shutil.rmtree(tmp, ignore_errors=True)

  if 'A' in results and 'A4' in results:
    d = results['A']['rss'] - results['A4']['rss']
    notes.append(
      f'Slice-count scaling (case A): {max(1, s // 4)} slices peak {gb(results["A4"]["rss"])}, '
      f'{s} slices peak {gb(results["A"]["rss"])} ({d / 1e6:+,.0f} MB); '
      f'per slice {results["A"]["seconds"] / s:.2f} s at {s} slices.'
    )
  if 'A' in results and 'floor' in results:
    r, f = results['A'], results['floor']
    line = (
      f'At {n}x{n}x{s} the whole in-plane run peaks at {gb(r["rss"])}, {r["rss"] / r["base"]["bytes"]:.2f}x '
      f'the {gb(r["base"]["bytes"])} an in-memory implementation needs for its input and output alone, '
      f'of which {gb(f["rss"])} is the fixed floor (Python, JAX/XLA, model, compile) and the rest '
      f'mostly anonymous memory ({gb(r["anon"])} sampled peak): XLA buffers of one forward pass '
      f'({a.batch or "the size-based default of"} {2 * n}x{2 * n} plane(s)), not the volume (the '
      f'memory-mapped input and output add {gb(r["file"] - f["file"])} of file-backed pages over '
      'the floor).'
    )
    if 'Ab' in results:
      line += (
        f' With `--batch {a.compare_batch}` the same planes peak at {gb(results["Ab"]["rss"])} '
        f'({results["Ab"]["rss"] / r["base"]["bytes"]:.2f}x the {s}-slice baseline), so the '
        'forward batch, not the volume size, sets the memory: the default `--batch 0` picks the '
        'planes per pass from their size, and `--tile` bounds it further for larger planes.'
      )
    notes.append(line)
  section = '\n'.join(
    [
      BEGIN,
      f'Machine: {platform.machine()}, {cpu_model()}, {len(os.sched_getaffinity(0))} cores; {versions()}.',
      f'Command: `python tools/benchmark_infer.py --size {n} --slices {s} --batch {a.batch} --tile {a.tile}'
      f' --compare_batch {a.compare_batch}{" --scaling" if a.scaling else ""}{" --gz" if a.gz else ""} --cases {" ".join(a.cases)}'
      f'{" --write " + a.write if a.write else ""}`. It runs (weights: fresh init, `$TMP` a temporary directory):',
      '',
      *[f'    {c}' for c in commands],
      '',
      '| case | input | output | output bytes | peak RSS | of which anon / file-backed (sampled) | '
      'baseline: in + out float32 (measured numpy process) | ratio peak RSS / baseline | wall (s) |',
      '|---|---|---|---|---|---|---|---|---|',
      *rows,
      '',
      *notes,
      END,
    ]
  )
  print(section)
  if a.write:
    sys.path.insert(0, str(ROOT))
    from mrisr_jax import report

    report.replace_section(a.write, section, HEADING)


if __name__ == '__main__':
  main()
