"""Safe state_dict files: round trips, the torch-free .pth reader, refusal of code, atomic writes."""

from __future__ import annotations

import collections
import os
import pickle
import zipfile

import numpy as np
import pytest

from mrisr_jax.interop import state_dict_io as sdio

pytestmark = pytest.mark.unit

torch = pytest.importorskip('torch')
pytest.importorskip('safetensors')


def _sample() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {
    'zeta.weight': rng.standard_normal((3, 2)).astype(np.float32),
    'alpha.half': rng.standard_normal(5).astype(np.float16),
    'mid.count': np.array([1, -2, 2**40], np.int64),
    'beta.mask': np.array([[True, False], [False, True]]),
  }


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
  assert list(got) == list(want)
  for k in want:
    assert got[k].dtype == want[k].dtype, k
    assert got[k].shape == want[k].shape, k
    assert got[k].tobytes() == want[k].tobytes(), k  # bit-exact
    assert got[k].flags.writeable, k


def _torch_reference(path) -> dict[str, np.ndarray]:
  sd = torch.load(path, map_location='cpu', weights_only=True)
  sd = sd.get('state_dict', sd)
  return {k: (v.float() if v.dtype == torch.bfloat16 else v).detach().numpy() for k, v in sd.items()}


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth', '.pt'])
def test_round_trip_is_bit_exact_and_keeps_order(tmp_path, suffix):
  path = tmp_path / f'w{suffix}'
  sdio.save_state_dict(_sample(), path)
  _assert_same(sdio.load_state_dict(path), _sample())
  if suffix != '.safetensors':
    _assert_same(sdio.load_state_dict_without_torch(path), _sample())
  assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left


def test_safetensors_metadata_is_readable(tmp_path):
  path = tmp_path / 'w.safetensors'
  sdio.save_state_dict(_sample(), path, metadata={'model': 'casr', 'scale': '4'})
  assert sdio.load_safetensors_metadata(path) == {'model': 'casr', 'scale': '4'}
  from safetensors import safe_open

  with safe_open(str(path), 'np') as f:
    assert f.metadata()['model'] == 'casr'


def test_safetensors_bfloat16_reads_as_float32(tmp_path):
  from safetensors.torch import save_file

  t = torch.tensor([1.5, -2.25, 3e30], dtype=torch.bfloat16)
  save_file({'b': t}, str(tmp_path / 'b.safetensors'))
  got = sdio.load_state_dict(tmp_path / 'b.safetensors')['b']
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, t.float().numpy())


def test_torch_free_reader_matches_torch_load(tmp_path):
  big = torch.arange(40, dtype=torch.float32).reshape(5, 8)
  cases = {
    'plain': {'w': torch.randn(2, 3), 'n': torch.tensor(7), 'm': torch.tensor([True, False])},
    'ordered': collections.OrderedDict([('z', torch.randn(3)), ('a', torch.ones(2, 2))]),
    'transposed': {'t': big.t(), 'p': big.permute(1, 0)[::2]},  # non-contiguous views
    'offset': {'s': big[2:4, 3:7], 'row': big[4], 'shared': big},  # slices of one storage
    'bfloat16': {'b': torch.randn(4, 3).to(torch.bfloat16).t()},
    'types': {
      'h': torch.randn(3).half(),
      'd': torch.randn(2).double(),
      'i': torch.arange(3).int(),
      'u': torch.arange(4, dtype=torch.uint8),
      'e': torch.zeros(0, 3),
    },
    'wrapped': {'state_dict': {'w': torch.randn(3, 2)}, 'epoch': 3, 'optimizer': {'lr': 0.1}},
    'parameter': {'p': torch.nn.Parameter(torch.randn(2, 2))},
  }
  for name, obj in cases.items():
    path = tmp_path / f'{name}.pth'
    torch.save(obj, path)
    want = _torch_reference(path)
    for got in (sdio.load_state_dict_without_torch(path), sdio.load_state_dict(path)):
      _assert_same(got, want)


def test_nested_dicts_without_a_wrapper_key_are_refused(tmp_path):
  path = tmp_path / 'nested.pth'
  torch.save({'encoder': {'w': torch.ones(1)}, 'decoder': {'w': torch.ones(1)}}, path)
  for load in (sdio.load_state_dict, sdio.load_state_dict_without_torch):
    with pytest.raises(ValueError, match=r"top-level keys: 'encoder', 'decoder'"):
      load(path)


class _Custom:
  pass


class _Evil:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (os.system, (f'echo pwned > {self.target}',))


def _assert_refused(path):
  for load in (sdio.load_state_dict, sdio.load_state_dict_without_torch):
    with pytest.raises(sdio.UnsafeCheckpointError) as info:
      load(path)
    message = str(info.value)
    assert '\n' not in message and str(path) in message and 'GLOBAL' in message, message


def test_custom_object_is_refused_by_both_readers(tmp_path):
  path = tmp_path / 'custom.pth'
  torch.save({'w': torch.ones(2), 'extra': _Custom()}, path)
  _assert_refused(path)


def test_os_system_pickle_is_refused_and_never_runs(tmp_path):
  target = tmp_path / 'PWNED'
  path = tmp_path / 'evil.pth'
  # Take a genuine torch zip and swap in a data.pkl whose GLOBAL opcode names os.system.
  torch.save({'w': torch.ones(2)}, tmp_path / 'good.pth')
  with zipfile.ZipFile(tmp_path / 'good.pth') as src, zipfile.ZipFile(path, 'w') as dst:
    for info in src.infolist():
      data = src.read(info)
      if info.filename.endswith('/data.pkl'):
        data = pickle.dumps({'w': _Evil(target)}, protocol=2)
        assert b'system' in data
      dst.writestr(info, data)
  _assert_refused(path)
  assert not target.exists()


def test_truncated_files_raise_value_error_naming_the_file(tmp_path):
  sdio.save_state_dict(_sample(), tmp_path / 'w.pth')
  sdio.save_state_dict(_sample(), tmp_path / 'w.safetensors')
  for name in ('w.pth', 'w.safetensors'):
    data = (tmp_path / name).read_bytes()
    for cut in (len(data) // 2, 5):
      bad = tmp_path / f'cut{cut}_{name}'
      bad.write_bytes(data[:cut])
      loads = [sdio.load_state_dict]
      if name.endswith('.pth'):
        loads.append(sdio.load_state_dict_without_torch)
      for load in loads:
        with pytest.raises(ValueError, match=str(bad.name)) as info:
          load(bad)
        assert not isinstance(info.value, sdio.UnsafeCheckpointError)
        assert '\n' not in str(info.value)


def test_unknown_suffix_is_refused(tmp_path):
  with pytest.raises(ValueError, match=r'w\.npz.*\.safetensors'):
    sdio.save_state_dict(_sample(), tmp_path / 'w.npz')
  (tmp_path / 'w.ckpt').write_bytes(b'x')
  with pytest.raises(ValueError, match=r'w\.ckpt'):
    sdio.load_state_dict(tmp_path / 'w.ckpt')


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
def test_failed_save_leaves_the_destination_untouched(tmp_path, monkeypatch, suffix):
  path = tmp_path / f'w{suffix}'
  sdio.save_state_dict(_sample(), path)
  before = path.read_bytes()

  def broken_writer(*args):
    tmp = next(a for a in args if isinstance(a, str))
    with open(tmp, 'wb') as f:
      f.write(b'partial')
    raise OSError('disk full')

  name = '_write_safetensors' if suffix == '.safetensors' else '_write_torch'
  monkeypatch.setattr(sdio, name, broken_writer)
  with pytest.raises(OSError, match='disk full'):
    sdio.save_state_dict({'other': np.zeros(3, np.float32)}, path)
  assert path.read_bytes() == before
  assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_pth_save_without_torch_names_the_suffix(tmp_path, monkeypatch):
  import builtins

  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == 'torch' or name.startswith('torch.'):
      raise ImportError('no torch here')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_torch)
  with pytest.raises(ImportError, match=r'\.pth.*\.safetensors'):
    sdio.save_state_dict(_sample(), tmp_path / 'w.pth')
  assert list(tmp_path.iterdir()) == []
  # Reading falls back to the restricted reader.
  monkeypatch.setattr(builtins, '__import__', real_import)
  sdio.save_state_dict(_sample(), tmp_path / 'w.pth')
  monkeypatch.setattr(builtins, '__import__', no_torch)
  _assert_same(sdio.load_state_dict(tmp_path / 'w.pth'), _sample())
