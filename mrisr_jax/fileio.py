"""Files the programs write and the slice stacks they read: every output is written atomically.

`atomic_write` writes into a temporary file beside the destination and moves it into place with one
`os.replace`, so a reader (or a crash) sees the old file or the new one, never half of one; when the
writer raises, the destination is left as it was and the temporary file removed. Every output is
created with mode 0o666 & ~umask (`new_file_mode`), as `open` creates files, whatever the writer used.

Temporary files are tracked (`track_temporary`) while they exist; `exit_on_signals()` makes SIGINT
(Ctrl-C) and SIGTERM remove them, print one line (`mrisr_jax: interrupted by SIGINT; ...`) and end
the process at once with 128 + the signal number (130, 143), wherever the program is (an XLA
compile included: no exception is raised inside it).

Slice stacks (`read_stack` / `write_stack`, used by `infer` and `evaluate`), by kind:
  npy  a 2-D slice or a (S, H, W) stack in its own units (callers map it to the model's [0, 1]),
       written back with the same rank
  png  one grey slice (`data.images`; a colour or alpha image is converted with a warning naming
       the file), written 16-bit when the input was, else 8-bit
  h5   fastMRI: its target normalised by the volume maximum; written as fastMRI's own
       `save_reconstructions` writes a submission (fastmri/utils.py): dataset `reconstruction`, float32
       (S, H, W), in the input's intensities, so fastMRI's evaluate.py scores it against the input
       file; the input's attrs are kept (max set to the output's maximum), plus `sr_*` attrs
NIfTI volumes are streamed plane by plane in bounded memory instead (`mrisr_jax.nifti_volume`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import signal
import sys
import threading
from typing import Any, Callable

from absl import logging
import numpy as np

from mrisr_jax.errors import UserError


class FileError(UserError, ValueError):
  """One line naming the file that cannot be read as the stack it should hold."""


# ------------------------------------------------------------------------------------ atomic writes


def temp_path(path) -> pathlib.Path:
  """An unused hidden name in `path`'s folder that ends with `path`'s name: writers that pick the
  format by suffix (.nii.gz, .npy) see the real one, and the rename stays on one file system."""
  path = pathlib.Path(path)
  return path.with_name(f'.tmp{os.getpid()}-{secrets.token_hex(4)}.{path.name}')


def umask() -> int:
  """The process's umask, read without changing it where /proc tells it (os.umask sets it, which
  would race with threads creating files)."""
  try:
    with open('/proc/self/status', encoding='ascii') as f:
      for line in f:
        if line.startswith('Umask:'):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def new_file_mode() -> int:
  """The mode `open` gives a new file: 0o666 without the umask's bits (0o644 under umask 022)."""
  return 0o666 & ~umask()


# temporary files that exist now (str paths, insertion-ordered); see exit_on_signals
_TEMPORARIES: dict[str, None] = {}


def track_temporary(path) -> None:
  """`path` is a temporary file until `forget_temporary`: an interrupt (exit_on_signals) removes it."""
  _TEMPORARIES[str(path)] = None


def forget_temporary(path) -> None:
  _TEMPORARIES.pop(str(path), None)


def remove_temporaries() -> int:
  """Removes every tracked temporary file that still exists; returns how many it removed."""
  removed = 0
  for name in list(_TEMPORARIES):
    try:
      os.unlink(name)
      removed += 1
    except OSError:
      pass
    _TEMPORARIES.pop(name, None)
  return removed


def atomic_write(path, write_fn: Callable[[pathlib.Path], Any]) -> pathlib.Path:
  """write_fn(tmp) writes the whole content to `tmp`; it then replaces `path` in one rename.

  The folder is created when missing. If write_fn raises, `path` is untouched and `tmp` removed.
  The file gets mode 0o666 & ~umask (a writer that creates `tmp` privately does not leak its mode).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = temp_path(path)
  track_temporary(tmp)
  try:
    write_fn(tmp)
    if tmp.is_file():
      os.chmod(tmp, new_file_mode())
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
    forget_temporary(tmp)
  return path


# ------------------------------------------------------------------------------------- interrupts

_EXIT_LOCK = threading.Lock()


def _interrupted(signum: int, prog: str) -> None:
  """Removes the temporaries, prints one line and ends the process with 128 + signum, at once."""
  if not _EXIT_LOCK.acquire(blocking=False):
    return  # the other path (handler or watcher) is already exiting
  try:
    removed = remove_temporaries()
    name = signal.Signals(signum).name
    what = f'; removed {removed} temporary file(s)' if removed else ''
    newline = '\n' if sys.stderr.isatty() else ''  # after a progress bar's unfinished line
    sys.stderr.write(f'{newline}{prog}: interrupted by {name}{what}\n')
    sys.stderr.flush()
  finally:
    os._exit(128 + signum)


@contextlib.contextmanager
def exit_on_signals(prog: str = 'mrisr_jax', signals=(signal.SIGINT, signal.SIGTERM)):
  """Within the block, SIGINT/SIGTERM remove the tracked temporary files, print one line and exit
  128 + signum (130 for Ctrl-C, 143 for SIGTERM) with os._exit: no exception is raised, so none
  can surface inside an XLA compile's callbacks (where a KeyboardInterrupt crashes the process).

  The signal is seen twice: by a watcher thread woken through `signal.set_wakeup_fd` (it runs as
  soon as the main thread releases the GIL, e.g. during a compile or a forward pass), and by the
  Python handler in the main thread (between bytecodes); whichever comes first exits. Outside the
  main thread (where handlers cannot be set) it does nothing.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  r, w = os.pipe()
  os.set_blocking(w, False)
  previous = {}
  try:
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
  except ValueError:  # not allowed here
    os.close(r)
    os.close(w)
    yield
    return

  def watch():
    while True:
      try:
        data = os.read(r, 64)
      except OSError:
        return
      if not data or 0 in data:  # closed, or the block ended (a 0 byte)
        return
      for signum in data:
        if signum in signals:
          _interrupted(signum, prog)

  watcher = threading.Thread(target=watch, name='exit_on_signals', daemon=True)
  try:
    for sig in signals:
      previous[sig] = signal.signal(sig, lambda signum, frame: _interrupted(signum, prog))
    watcher.start()
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    signal.set_wakeup_fd(old_fd)
    try:
      os.write(w, b'\0')
    except OSError:
      pass
    if watcher.is_alive():
      watcher.join(timeout=5)
    os.close(w)
    os.close(r)


def write_text(path, text: str) -> pathlib.Path:
  return atomic_write(path, lambda tmp: tmp.write_text(text, encoding='utf-8'))


def write_json(path, payload, indent: int | None = 2, **kwargs) -> pathlib.Path:
  """`payload` as JSON with a trailing newline; kwargs go to json.dumps (sort_keys, ...)."""
  return write_text(path, json.dumps(payload, indent=indent, **kwargs) + '\n')


def write_npy(path, array) -> pathlib.Path:
  def save(tmp):
    with open(tmp, 'wb') as f:  # a file object: np.save would append .npy to a name without it
      np.save(f, np.asarray(array))

  return atomic_write(path, save)


def write_png(path, array) -> pathlib.Path:
  """A uint8 (H, W) or (H, W, 3|4) array as a PNG."""
  from PIL import Image

  return atomic_write(path, lambda tmp: Image.fromarray(np.asarray(array)).save(tmp, format='PNG'))


# ------------------------------------------------------------------------------------ slice stacks


def stack_kind(path) -> str | None:
  """'npy', 'png', 'nii' or 'h5' by suffix (None for anything else)."""
  from mrisr_jax.data.splits import file_format

  path = pathlib.Path(path)
  fmt = file_format(path)
  if fmt == 'image':
    return 'png' if path.suffix.lower() == '.png' else None
  return {'nifti': 'nii', 'fastmri': 'h5', 'npy': 'npy'}.get(fmt)


def read_npy_stack(path) -> np.ndarray:
  """A real, finite 2-D slice or (S, H, W) stack as float32, with its rank."""
  path = pathlib.Path(path)
  try:
    x = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise FileError(f'{path}: cannot read as .npy ({e})') from None
  if x.ndim not in (2, 3) or x.size == 0 or x.dtype.kind not in 'biuf':
    raise FileError(f'{path}: expected a real 2-D slice or (S, H, W) stack, got {x.dtype} {x.shape}')
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise FileError(f'{path}: has non-finite values')
  return x


def read_stack(path, kind: str) -> tuple[np.ndarray, dict]:
  """(stack (S, h, w) float32, info that `write_stack` needs to write its result).

  png and h5 stacks are in [0, 1]; an npy stack is as stored (`infer` maps it to the model's range).
  """
  path = pathlib.Path(path)
  if kind == 'npy':
    x = read_npy_stack(path)
    return (x[None] if x.ndim == 2 else x), {'ndim': x.ndim}
  if kind == 'png':
    from mrisr_jax.data.images import read_image

    x, info = read_image(path)
    if info['colour'] or info.get('alpha'):
      dropped = ' and its alpha channel dropped' if info.get('alpha') else ''
      what = 'colour' if info['colour'] else info['mode']
      logging.warning('%s: %s image converted to greyscale (ITU-R 601 luma)%s', path, what, dropped)
    return x[None], {'ndim': 2, 'bit_depth': 16 if info['bit_depth'] == 16 else 8}
  if kind != 'h5':
    raise FileError(f'{path}: cannot read a {kind!r} file as a slice stack')
  from mrisr_jax.data.fastmri import FastMRISliceSource

  src = FastMRISliceSource([path])
  try:
    vol = src.volumes[0]
    stack = np.stack([src.read_slice(0, s) for s in range(vol.num_slices)])
  finally:
    src.close()
  return np.clip(stack, 0.0, 1.0), {
    'ndim': 3,
    'max': float(vol.metadata['max']),
    'target': vol.metadata['target'],
    'attrs': vol.metadata['attrs'],
  }


def write_stack(path, kind: str, stack: np.ndarray, info: dict, attrs: dict | None = None) -> None:
  """The (S, H, W) stack as `read_stack` read its input (`info`): in the npy's units, [0, 1] for a png
  (clipped) or an h5 (scaled by its maximum; dataset `reconstruction`, as fastMRI's save_reconstructions);
  `attrs` are stored as h5 attributes `sr_<key>` (the run's record)."""
  path = pathlib.Path(path)
  if kind == 'npy':
    write_npy(path, (stack[0] if info['ndim'] == 2 else stack).astype(np.float32))
  elif kind == 'png':
    from mrisr_jax.data.images import write_grey  # writes atomically (atomic_write) itself

    write_grey(path, stack[0], bit_depth=info.get('bit_depth', 8))
  elif kind == 'h5':
    import h5py

    def save(tmp):
      with h5py.File(tmp, 'w') as f:
        # fastMRI's save_reconstructions: hf.create_dataset('reconstruction', data=recons)
        recon = (stack * np.float32(info['max'])).astype(np.float32)
        f.create_dataset('reconstruction', data=recon)
        for k, v in info['attrs'].items():
          try:
            f.attrs[k] = v
          except (TypeError, ValueError):
            pass  # attributes h5py cannot store back as plain values are left out
        f.attrs['max'] = float(np.max(stack) * info['max'])
        f.attrs['norm'] = float(np.linalg.norm(recon.astype(np.float64)))  # of this output, as max (fastMRI's attrs)
        f.attrs['sr_input_max'] = info['max']
        f.attrs['sr_target'] = info['target']
        for k, v in (attrs or {}).items():
          f.attrs[f'sr_{k}'] = v

    atomic_write(path, save)
  else:
    raise FileError(f'{path}: cannot write a slice stack as {kind!r}')
