"""Files the programs write and the slice stacks they read: every output is written atomically.

`atomic_write` writes into a temporary file beside the destination and moves it into place with one
`os.replace`, so a reader (or a crash) sees the old file or the new one, never half of one; when the
writer raises, the destination is left as it was and the temporary file removed.

Slice stacks (`read_stack` / `write_stack`, used by `infer` and `evaluate`), by kind:
  npy  a 2-D slice or a (S, H, W) stack in [0, 1], written back with the same rank
  png  one grey slice (`data.images`), written 16-bit when the input was, else 8-bit
  h5   fastMRI: its target normalised by the volume maximum; written as `reconstruction_sr` in the
       input's intensities with the input's attrs
NIfTI volumes are streamed plane by plane in bounded memory instead (`mrisr_jax.nifti_volume`).
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
from typing import Any, Callable

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


def atomic_write(path, write_fn: Callable[[pathlib.Path], Any]) -> pathlib.Path:
  """write_fn(tmp) writes the whole content to `tmp`; it then replaces `path` in one rename.

  The folder is created when missing. If write_fn raises, `path` is untouched and `tmp` removed.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = temp_path(path)
  try:
    write_fn(tmp)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return path


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
  """(stack (S, h, w) float32 in [0, 1], info that `write_stack` needs to write its result)."""
  path = pathlib.Path(path)
  if kind == 'npy':
    x = read_npy_stack(path)
    return (x[None] if x.ndim == 2 else x), {'ndim': x.ndim}
  if kind == 'png':
    from mrisr_jax.data.images import read_image

    x, info = read_image(path)
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
  """The (S, H, W) stack in [0, 1] as `read_stack` read its input (`info`); `attrs` are stored as
  h5 attributes `sr_<key>` (the run's record)."""
  path = pathlib.Path(path)
  if kind == 'npy':
    write_npy(path, (stack[0] if info['ndim'] == 2 else stack).astype(np.float32))
  elif kind == 'png':
    from mrisr_jax.data.images import write_grey  # writes atomically itself

    write_grey(path, stack[0], bit_depth=info.get('bit_depth', 8))
  elif kind == 'h5':
    import h5py

    def save(tmp):
      with h5py.File(tmp, 'w') as f:
        f.create_dataset('reconstruction_sr', data=(stack * np.float32(info['max'])).astype(np.float32))
        for k, v in info['attrs'].items():
          try:
            f.attrs[k] = v
          except (TypeError, ValueError):
            pass  # attributes h5py cannot store back as plain values are left out
        f.attrs['max'] = float(np.max(stack) * info['max'])
        f.attrs['sr_input_max'] = info['max']
        f.attrs['sr_target'] = info['target']
        for k, v in (attrs or {}).items():
          f.attrs[f'sr_{k}'] = v

    atomic_write(path, save)
  else:
    raise FileError(f'{path}: cannot write a slice stack as {kind!r}')
