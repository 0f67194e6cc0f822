"""VGGFeatures vs a plain-torch torchvision-indexed VGG; weight loading from .pth and .npz."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrisr_jax.models.vgg import VGGFeatures, init_vgg_params, load_vgg_params, vgg_layers, vgg_torch_shapes

pytestmark = pytest.mark.unit

torch = pytest.importorskip('torch')
tnn = torch.nn
torch.set_num_threads(2)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVERT = os.path.join(REPO, 'tools', 'convert_vgg.py')
# The subprocess timeouts below (60 s, 120 s) guard against hangs; they are not speed tests: each run
# of the tool takes a few seconds.

# torchvision cfgs written out independently of mrisr_jax ('M' = MaxPool2d(2, 2)).
CFGS = {
  'vgg16': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'],
  'vgg19': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M'],
}


class TorchVGG(tnn.Module):
  """torchvision.models.vgg16/vgg19 layout (features + a stand-in classifier), no torchvision."""

  def __init__(self, arch):
    super().__init__()
    layers, cin = [], 3
    for v in CFGS[arch]:
      if v == 'M':
        layers.append(tnn.MaxPool2d(kernel_size=2, stride=2))
      else:
        layers += [tnn.Conv2d(cin, v, kernel_size=3, padding=1), tnn.ReLU(inplace=True)]
        cin = v
    self.features = tnn.Sequential(*layers)
    self.classifier = tnn.Sequential(tnn.Linear(8, 4), tnn.ReLU(True), tnn.Linear(4, 2))


def _randomise_biases(model, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, tnn.Conv2d):
        m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))


@pytest.fixture(scope='module')
def vgg_files(tmp_path_factory):
  d = tmp_path_factory.mktemp('vgg')
  out = {}
  for arch, seed in (('vgg19', 0), ('vgg16', 1)):
    torch.manual_seed(seed)
    m = TorchVGG(arch).eval()
    _randomise_biases(m, seed)
    path = str(d / f'{arch}.pth')
    torch.save(m.state_dict(), path)
    out[arch] = (m, path)
  return out


def _compare(model_t, path, arch, last_layer, x):
  params = load_vgg_params(path, arch, last_layer)
  want = sorted(f'features_{i}' for i, l in enumerate(vgg_layers(arch)[: last_layer + 1]) if l[0] == 'conv')
  assert sorted(params) == want
  with torch.no_grad():
    t = model_t.features[: last_layer + 1](torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  j = jax.jit(VGGFeatures(arch, last_layer).apply)({'params': params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
  j = np.asarray(j)
  assert j.shape == t.shape
  scale = float(np.abs(t).max())
  assert scale > 0
  assert float(np.abs(j - t).max()) <= 1e-4 * scale
  return params


def test_vgg19_casrgan_features_match_torch(vgg_files):
  m, path = vgg_files['vgg19']
  x = np.random.default_rng(0).random((2, 3, 32, 32)).astype(np.float32)
  params = _compare(m, path, 'vgg19', 16, x)
  assert sorted(params) == [
    'features_0',
    'features_10',
    'features_12',
    'features_14',
    'features_16',
    'features_2',
    'features_5',
    'features_7',
  ]
  assert params['features_16']['kernel'].shape == (3, 3, 256, 256)
  assert params['features_0']['kernel'].shape == (3, 3, 3, 64)
  # conv3_4 before its ReLU: negative values survive; two pools: 32 -> 8
  out = VGGFeatures('vgg19', 16).apply({'params': params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert out.shape == (2, 8, 8, 256) and float(out.min()) < 0


def test_vgg16_other_last_layer_match_torch(vgg_files):
  m, path = vgg_files['vgg16']
  x = np.random.default_rng(1).random((2, 3, 32, 32)).astype(np.float32)
  _compare(m, path, 'vgg16', 23, x)  # through conv4_3, its ReLU and pool4 -> 2x2x512
  _compare(m, path, 'vgg16', 8, x)  # relu2_2


def test_normalize_input(vgg_files):
  m, path = vgg_files['vgg19']
  params = load_vgg_params(path, 'vgg19', 3)
  x = np.random.default_rng(2).random((1, 32, 32, 3)).astype(np.float32)
  mean = np.array([0.485, 0.456, 0.406], np.float32)
  std = np.array([0.229, 0.224, 0.225], np.float32)
  a = VGGFeatures('vgg19', 3, normalize_input=True).apply({'params': params}, jnp.asarray(x))
  b = VGGFeatures('vgg19', 3).apply({'params': params}, jnp.asarray((x - mean) / std))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.integration  # subprocess
def test_npz_via_convert_tool_gives_same_params(vgg_files, tmp_path):
  for arch, last in (('vgg19', 16), ('vgg16', 23)):
    _, path = vgg_files[arch]
    npz = str(tmp_path / f'{arch}.npz')
    r = subprocess.run(
      [sys.executable, CONVERT, '--input', path, '--output', npz, '--arch', arch],
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert r.returncode == 0, r.stderr
    with np.load(npz) as data:
      assert not any(k.startswith('classifier') for k in data.files)
      assert set(data.files) == set(vgg_torch_shapes(arch, len(vgg_layers(arch)) - 1))
    a = load_vgg_params(path, arch, last)
    b = load_vgg_params(npz, arch, last)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.integration  # subprocess
def test_convert_tool_errors(vgg_files, tmp_path):
  r = subprocess.run([sys.executable, CONVERT, '--help'], capture_output=True, text=True, timeout=60)
  assert r.returncode == 0 and '--input' in r.stdout
  # missing input
  r = subprocess.run(
    [sys.executable, CONVERT, '--input', str(tmp_path / 'nope.pth'), '--output', str(tmp_path / 'o.npz')],
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert r.returncode != 0 and 'not found' in r.stderr and len(r.stderr.strip().splitlines()) == 1
  # vgg16 weights declared as vgg19
  r = subprocess.run(
    [sys.executable, CONVERT, '--input', vgg_files['vgg16'][1], '--output', str(tmp_path / 'o.npz'), '--arch', 'vgg19'],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode != 0 and 'vgg19' in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / 'o.npz')
  # not a state_dict at all
  junk = tmp_path / 'junk.pth'
  junk.write_bytes(b'not a checkpoint')
  r = subprocess.run(
    [sys.executable, CONVERT, '--input', str(junk), '--output', str(tmp_path / 'o.npz')],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode != 0 and 'could not read' in r.stderr


def test_missing_file_message(tmp_path):
  missing = str(tmp_path / 'vgg19-dcbb9e9d.pth')
  with pytest.raises(FileNotFoundError) as e:
    load_vgg_params(missing, 'vgg19', 16)
  msg = str(e.value)
  assert missing in msg and 'vgg_weights' in msg and 'vgg19-dcbb9e9d.pth' in msg
  assert '\n' not in msg


def test_wrong_shapes_and_missing_keys(vgg_files, tmp_path):
  # vgg16 file read as vgg19 through conv3_4: features.16 is a pool in vgg16 -> missing key
  with pytest.raises(ValueError, match=r'features\.16\.weight'):
    load_vgg_params(vgg_files['vgg16'][1], 'vgg19', 16)
  # a wrong shape
  m, _ = vgg_files['vgg19']
  sd = {k: v.clone() for k, v in m.state_dict().items()}
  sd['features.5.weight'] = torch.zeros(128, 32, 3, 3)
  bad = str(tmp_path / 'bad.pth')
  torch.save(sd, bad)
  with pytest.raises(ValueError, match=r'features\.5\.weight'):
    load_vgg_params(bad, 'vgg19', 16)
  # shapes beyond last_layer are not needed
  assert sorted(load_vgg_params(bad, 'vgg19', 4)) == ['features_0', 'features_2']
  # missing keys in a .npz
  npz = str(tmp_path / 'partial.npz')
  np.savez(
    npz,
    **{
      k: v.numpy() for k, v in m.state_dict().items() if k.startswith('features.') and not k.startswith('features.12.')
    },
  )
  with pytest.raises(ValueError, match=r'features\.12\.(weight|bias)'):
    load_vgg_params(npz, 'vgg19', 16)
  with pytest.raises(ValueError, match='out of range'):
    load_vgg_params(vgg_files['vgg19'][1], 'vgg19', 99)
  with pytest.raises(ValueError, match='unknown VGG arch'):
    load_vgg_params(vgg_files['vgg19'][1], 'vgg11', 3)


def test_bare_features_state_dict(vgg_files, tmp_path):
  """A state_dict of `model.features` alone (keys '0.weight', ...) loads too."""
  m, path = vgg_files['vgg19']
  p = str(tmp_path / 'features_only.pth')
  torch.save(m.features[:17].state_dict(), p)
  a, b = load_vgg_params(p, 'vgg19', 16), load_vgg_params(path, 'vgg19', 16)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_init_vgg_params_random():
  p = init_vgg_params(jax.random.PRNGKey(0), 'vgg19', 16)
  assert sorted(p) == sorted(f'features_{i}' for i in (0, 2, 5, 7, 10, 12, 14, 16))
  assert p['features_7']['kernel'].shape == (3, 3, 128, 128)
  y = VGGFeatures('vgg19', 16).apply({'params': p}, jnp.ones((1, 16, 16, 3)))
  assert y.shape == (1, 4, 4, 256)
  with pytest.raises(ValueError, match='3 channels'):
    VGGFeatures('vgg19', 16).apply({'params': p}, jnp.ones((1, 16, 16, 1)))
