"""Safe reading and writing of PyTorch state_dicts as numpy arrays (.safetensors, .pth/.pt/.bin).

torch and safetensors are both optional. Pickle-based files are never fully unpickled: with torch we
use `torch.load(weights_only=True)`; without it, `load_state_dict_without_torch` reads the torch zip
format with an unpickler that can build only OrderedDicts and tensors. Anything else is refused with
`UnsafeCheckpointError`, so a downloaded checkpoint cannot run code.

Decisions:
- bfloat16 tensors are returned as float32 (numpy has no native bfloat16; the widening is exact).
- Wrapped checkpoints: if the top level is not itself a flat name -> tensor mapping, the first of
  WRAPPER_KEYS ('state_dict', 'model', 'generator', 'netG') holding one is used; other top-level
  entries (epoch, optimizer, ...) are ignored. Anything else is refused, listing the top-level keys.
- Plain numbers inside a state_dict become 0-d arrays.
- safetensors sorts tensors in the file, so the insertion order is kept in the metadata under
  KEY_ORDER_METADATA; `load_safetensors_metadata` returns the user's metadata without it.
"""

from __future__ import annotations

import collections
import importlib
import json
import os
import pathlib
import pickle
import re
import zipfile
from typing import Any

import numpy as np

from mrisr_jax import fileio
from mrisr_jax.errors import UserError

SAFETENSORS_SUFFIXES = ('.safetensors',)
TORCH_SAVE_SUFFIXES = ('.pth', '.pt')
TORCH_LOAD_SUFFIXES = ('.pth', '.pt', '.bin')
WRAPPER_KEYS = ('state_dict', 'model', 'generator', 'netG')
KEY_ORDER_METADATA = 'mrisr_jax.key_order'


class UnsafeCheckpointError(UserError, ValueError):
  """A checkpoint tried to build something other than tensors, dicts and plain values."""


def _one_line(text: str) -> str:
  return ' '.join(str(text).split())


def _suffix(path: pathlib.Path, supported: tuple[str, ...]) -> str:
  suffix = path.suffix.lower()
  if suffix not in supported:
    raise ValueError(f'{path}: unsupported file suffix {path.suffix!r}; supported: {", ".join(supported)}')
  return suffix


# ------------------------------------------------------------------------------------------- save


def save_state_dict(
  state_dict: dict[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
  """Writes `state_dict` atomically (mrisr_jax.fileio: temp file in the same directory, then os.replace)."""
  path = pathlib.Path(path)
  suffix = _suffix(path, SAFETENSORS_SUFFIXES + TORCH_SAVE_SUFFIXES)
  arrays = {str(k): np.ascontiguousarray(v) for k, v in state_dict.items()}
  if suffix in SAFETENSORS_SUFFIXES:
    _import_safetensors_numpy(path)  # fail before any temp file, naming the destination
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta[KEY_ORDER_METADATA] = json.dumps(list(arrays))
    write = lambda tmp: _write_safetensors(arrays, tmp, meta)
  else:
    if metadata:
      raise ValueError(f'{path}: metadata can only be stored in .safetensors files')
    write = lambda tmp: _write_torch(arrays, tmp, path)
  fileio.atomic_write(path, lambda tmp: write(str(tmp)))


def _import_safetensors_numpy(path: pathlib.Path):
  try:
    import safetensors.numpy
  except ImportError:
    raise ImportError(
      f'{path}: .safetensors files need the safetensors package, which is not installed (pip install safetensors)'
    ) from None
  return safetensors.numpy


def _write_safetensors(arrays: dict[str, np.ndarray], tmp: str, metadata: dict[str, str]) -> None:
  save_file = _import_safetensors_numpy(pathlib.Path(tmp)).save_file
  save_file(arrays, tmp, metadata=metadata)


def _write_torch(arrays: dict[str, np.ndarray], tmp: str, path: pathlib.Path) -> None:
  try:
    import torch
  except ImportError:
    raise ImportError(
      f'{path}: writing {path.suffix} files needs torch, which is not installed; save as .safetensors instead'
    ) from None
  torch.save(collections.OrderedDict((k, torch.from_numpy(v.copy())) for k, v in arrays.items()), tmp)


# ------------------------------------------------------------------------------------------- load


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a state_dict as writable numpy arrays, keys as str, in the file's order."""
  path = pathlib.Path(path)
  suffix = _suffix(path, SAFETENSORS_SUFFIXES + TORCH_LOAD_SUFFIXES)
  if suffix in SAFETENSORS_SUFFIXES:
    return _load_safetensors(path)
  try:
    import torch
  except ImportError:
    return load_state_dict_without_torch(path)
  return _load_with_torch(path, torch)


def load_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
  """The user metadata of a .safetensors file (without the key order we store)."""
  header = _safetensors_header(pathlib.Path(path))
  meta = dict(header.get('__metadata__') or {})
  meta.pop(KEY_ORDER_METADATA, None)
  return meta


def _safetensors_header(path: pathlib.Path) -> dict[str, Any]:
  # Parsed by hand (8-byte little-endian length + JSON) so it needs no safetensors install.
  try:
    with open(path, 'rb') as f:
      n = int.from_bytes(f.read(8), 'little')
      header = json.loads(f.read(n))
    if not isinstance(header, dict):
      raise ValueError('header is not a JSON object')
    return header
  except (OSError, ValueError, UnicodeDecodeError) as e:
    raise ValueError(f'{path}: not a readable .safetensors file (truncated or corrupt?): {_one_line(e)}') from None


def _load_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  load_file = _import_safetensors_numpy(path).load_file
  try:
    importlib.import_module('ml_dtypes')  # registers numpy's 'bfloat16' name, which safetensors needs
  except ImportError:
    pass  # bf16 files then fail below with a clear ValueError; other dtypes still load
  try:
    loaded = load_file(str(path))
  except Exception as e:  # safetensors raises its own SafetensorError for corrupt files.
    raise ValueError(f'{path}: not a readable .safetensors file (truncated or corrupt?): {_one_line(e)}') from None
  order = list(loaded)
  saved = _safetensors_header(path).get('__metadata__') or {}
  if KEY_ORDER_METADATA in saved:
    try:
      stored = json.loads(saved[KEY_ORDER_METADATA])
      if sorted(stored) == sorted(order):
        order = stored
    except (TypeError, ValueError):
      pass  # A foreign or damaged order entry: keep the file's order.
  return {k: _to_numpy(loaded[k]) for k in order}


def _to_numpy(a: np.ndarray) -> np.ndarray:
  if a.dtype.name == 'bfloat16':  # ml_dtypes.bfloat16 from safetensors.numpy
    a = a.astype(np.float32)
  return np.array(a, copy=True)


def _load_with_torch(path: pathlib.Path, torch) -> dict[str, np.ndarray]:
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    text = str(e)
    if 'weights only' in text.lower() or 'weights_only' in text:
      # torch's message is many lines of advice; keep the offending global or the unpickler's reason.
      match = re.search(r'(GLOBAL [\w.]+)', text) or re.search(r'WeightsUnpickler error: ([^\n]*)', text)
      what = _one_line(match.group(1) if match else text)[:200]
      raise UnsafeCheckpointError(
        f'{path}: refused to load a checkpoint that builds arbitrary objects ({what})'
      ) from None
    raise ValueError(
      f'{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {_one_line(text)[:300]}'
    ) from None
  except Exception as e:  # torch reports bad zips as RuntimeError, short files as EOFError, ...
    raise ValueError(
      f'{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {_one_line(e)[:300]}'
    ) from None
  return _extract_state_dict(_tensors_to_numpy(obj, torch), path)


def _tensors_to_numpy(obj: Any, torch) -> Any:
  if isinstance(obj, torch.Tensor):
    t = obj.detach().cpu()
    if t.dtype == torch.bfloat16:
      t = t.float()
    return np.array(t.numpy(), copy=True)
  if isinstance(obj, dict):
    return collections.OrderedDict((k, _tensors_to_numpy(v, torch)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_tensors_to_numpy(v, torch) for v in obj)
  return obj


def _is_plain_number(v: Any) -> bool:
  return isinstance(v, (bool, int, float, np.number))


def _flat_state_dict(obj: Any) -> bool:
  return (
    isinstance(obj, dict)
    and len(obj) > 0
    and all(isinstance(k, str) for k in obj)
    and all(isinstance(v, np.ndarray) or _is_plain_number(v) for v in obj.values())
    and any(isinstance(v, np.ndarray) for v in obj.values())
  )


def _extract_state_dict(obj: Any, path: pathlib.Path) -> dict[str, np.ndarray]:
  """Finds the name -> tensor mapping in a loaded checkpoint (itself, or one wrapper level)."""
  if not isinstance(obj, dict):
    raise ValueError(f'{path}: expected a state_dict (a dict of tensors), got {type(obj).__name__}')
  candidate = obj
  if not _flat_state_dict(obj):
    candidate = next((obj[k] for k in WRAPPER_KEYS if _flat_state_dict(obj.get(k))), None)
    if candidate is None:
      keys = ', '.join(repr(k) for k in list(obj)[:20]) + (', ...' if len(obj) > 20 else '')
      raise ValueError(
        f'{path}: not a flat state_dict of tensors and no wrapper key '
        f'({", ".join(WRAPPER_KEYS)}) holds one; top-level keys: {keys}'
      )
  return {k: (v if isinstance(v, np.ndarray) else np.asarray(v)) for k, v in candidate.items()}


# ------------------------------------------------------------------------- torch-free .pth reader

# torch storage type name -> (numpy dtype of the raw bytes, numpy dtype returned)
_STORAGE_DTYPES = {
  'FloatStorage': (np.float32, np.float32),
  'HalfStorage': (np.float16, np.float16),
  'BFloat16Storage': (np.uint16, np.float32),
  'DoubleStorage': (np.float64, np.float64),
  'LongStorage': (np.int64, np.int64),
  'IntStorage': (np.int32, np.int32),
  'ByteStorage': (np.uint8, np.uint8),
  'BoolStorage': (np.bool_, np.bool_),
}


class _StorageType:
  """Stands in for torch.FloatStorage & co: the pickle only names them."""

  def __init__(self, name: str):
    self.name = name


class _Storage:
  def __init__(self, array: np.ndarray):
    self.array = array  # 1-D, already in the returned dtype


def _rebuild_tensor_v2(
  storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
) -> np.ndarray:
  del requires_grad, backward_hooks, metadata  # irrelevant for weights
  if not isinstance(storage, _Storage):
    raise ValueError(f'tensor without a storage ({type(storage).__name__})')
  size, stride = tuple(size), tuple(stride)
  if (
    not isinstance(storage_offset, int)
    or len(size) != len(stride)
    or not all(isinstance(x, int) and x >= 0 for x in size + stride + (storage_offset,))
  ):
    raise ValueError(f'bad tensor geometry: offset {storage_offset}, size {size}, stride {stride}')
  base = storage.array
  if 0 in size:
    return np.empty(size, base.dtype)
  last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= base.size:
    raise ValueError(
      f'tensor (offset {storage_offset}, size {size}, stride {stride}) overruns its storage of {base.size} elements'
    )
  view = np.lib.stride_tricks.as_strided(
    base[storage_offset:], shape=size, strides=tuple(s * base.itemsize for s in stride), writeable=False
  )
  return np.array(view, copy=True)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> np.ndarray:
  del requires_grad, backward_hooks
  return data


class _RestrictedUnpickler(pickle.Unpickler):
  """Builds only OrderedDicts and tensors; every other global is refused."""

  def __init__(self, file, path: pathlib.Path, archive: zipfile.ZipFile, prefix: str, byteorder: str):
    super().__init__(file)
    self._path, self._archive, self._prefix, self._byteorder = path, archive, prefix, byteorder
    self._storages: dict[str, _Storage] = {}

  def find_class(self, module: str, name: str):
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
      return _rebuild_tensor_v2
    if (module, name) == ('torch._utils', '_rebuild_parameter'):
      return _rebuild_parameter
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise UnsafeCheckpointError(
      f'{self._path}: refused to load a checkpoint that builds arbitrary objects (GLOBAL {module}.{name})'
    )

  def persistent_load(self, pid):
    if not (
      isinstance(pid, tuple)
      and len(pid) == 5
      and pid[0] == 'storage'
      and isinstance(pid[1], _StorageType)
      and isinstance(pid[2], str)
    ):
      raise UnsafeCheckpointError(f'{self._path}: refused an unknown persistent id in the pickle')
    _, storage_type, key, _, numel = pid
    if key not in self._storages:
      raw_dtype, out_dtype = _STORAGE_DTYPES[storage_type.name]
      raw_dtype = np.dtype(raw_dtype).newbyteorder('<' if self._byteorder == 'little' else '>')
      data = self._archive.read(f'{self._prefix}data/{key}')
      if len(data) < numel * raw_dtype.itemsize:
        raise ValueError(f'storage {key} holds {len(data)} bytes, expected {numel} elements')
      raw = np.frombuffer(data, raw_dtype, count=numel)
      if storage_type.name == 'BFloat16Storage':  # bf16 is the top half of a float32
        array = (raw.astype(np.uint32) << 16).view(np.float32)
      else:
        array = raw.astype(raw_dtype.newbyteorder('='), copy=False).astype(out_dtype, copy=False)
      self._storages[key] = _Storage(array)
    return self._storages[key]


def load_state_dict_without_torch(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a torch.save zip file (torch >= 1.6 format) without torch and without running code."""
  path = pathlib.Path(path)
  try:
    archive = zipfile.ZipFile(path)
  except (OSError, zipfile.BadZipFile) as e:
    raise ValueError(
      f'{path}: not a readable PyTorch zip checkpoint (truncated, corrupt or the '
      f'legacy pre-1.6 format, which needs torch): {_one_line(e)}'
    ) from None
  with archive:
    pkls = [n for n in archive.namelist() if n.endswith('data.pkl') and n.count('/') == 1]
    if len(pkls) != 1:
      raise ValueError(f'{path}: not a PyTorch zip checkpoint (expected one <archive>/data.pkl)')
    prefix = pkls[0][: -len('data.pkl')]
    try:
      byteorder = archive.read(prefix + 'byteorder').decode().strip()
    except KeyError:
      byteorder = 'little'  # written by torch only since 1.13; earlier files are little-endian
    try:
      with archive.open(pkls[0]) as f:
        obj = _RestrictedUnpickler(f, path, archive, prefix, byteorder).load()
    except UnsafeCheckpointError:
      raise
    except Exception as e:  # bad pickle, missing storage entry, CRC error, bad tensor geometry
      raise ValueError(
        f'{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {_one_line(e)[:300]}'
      ) from None
  return _extract_state_dict(obj, path)
