"""TransMRSR interop through the library's converter (mrisr_jax.interop.convert, as export / import /
infer use it): the SR network, the StyleSwin G and D and the bare synthesis load strictly into their
torch mirrors and come back bit-exactly; a StyleSwin training checkpoint's g_ema becomes the SR
decoder; exported SR weights carry their SDT centroids in the public layout and load back."""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrisr_jax import registry
from mrisr_jax.interop import convert
from tests.helpers import REPO, random_variables

torch = pytest.importorskip('torch')
torch.set_num_threads(2)

pytestmark = pytest.mark.unit

SMALL = dict(size=16, style_dim=16, channel_base=32)
# registry name -> (flax fields, torch mirror arguments, init input)
CASES = {
  'transmrsr': (dict(**SMALL, scale=4), dict(**SMALL, in_channels=1, out_channels=1), jnp.zeros((1, 16, 16, 1))),
  'styleswin_g': (
    dict(**SMALL, n_mlp=2, out_channels=3),
    dict(**SMALL, n_mlp=2, out_channels=3),
    jnp.zeros((1, 16)),
  ),
  'styleswin_synthesis': (dict(**SMALL), dict(**SMALL), jnp.zeros((1, 6, 16))),
  'styleswin_d': (
    dict(size=16, channel_multiplier=2, channel_base=32, in_channels=1),
    dict(size=16, channel_multiplier=2, channel_base=32, in_channels=1),
    jnp.zeros((1, 16, 16, 1)),
  ),
}


def _like(name):
  fields, _, x = CASES[name]
  module = registry._import(registry.MODELS[name].module)(**fields)
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), x)


@pytest.mark.parametrize('name', sorted(CASES))
def test_state_dict_loads_strictly_into_the_mirror_and_round_trips(name):
  like = _like(name)
  variables = random_variables(like, seed=3)
  state_dict = convert.flax_to_state_dict(name, variables)
  mirror = registry.torch_mirror_class(name)(**CASES[name][1])
  mirror.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
  theirs = mirror.state_dict()
  assert list(theirs) == list(state_dict)  # keys and order
  shapes = convert.state_dict_shapes(name, like)
  assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: s for k, (s, _) in shapes.items()}
  back = convert.state_dict_to_flax(name, theirs, like)
  want = {'params': variables['params']}
  jax.tree.map(np.testing.assert_array_equal, back, want)
  # a buffer that disagrees with the generated one is named
  index_keys = [k for k in theirs if k.endswith('relative_position_index')]
  if index_keys:
    bad = dict(theirs)
    bad[index_keys[0]] = bad[index_keys[0]] + 1
    with pytest.raises(ValueError, match='buffer differs'):
      convert.state_dict_to_flax(name, bad, like)


def test_styleswin_g_ema_checkpoint_becomes_the_sr_decoder(tmp_path):
  import ml_collections

  from mrisr_jax import import_torch

  g_like = _like('styleswin_g')
  g_vars = random_variables(g_like, seed=4)
  g_ema = convert.flax_to_state_dict('styleswin_g', g_vars)
  path = tmp_path / 'styleswin_000100.pt'
  # the StyleSwin trainer's format: several networks, optimizer states and its argparse args
  torch.save(
    {
      'g': {k: torch.from_numpy(v) for k, v in g_ema.items()},
      'g_ema': {k: torch.from_numpy(v) for k, v in g_ema.items()},
      'args': argparse.Namespace(size=16),
    },
    path,
  )
  prior = ml_collections.ConfigDict(dict(**SMALL, channel_multiplier=1))
  synthesis = import_torch.styleswin_synthesis(path, prior)
  jax.tree.map(np.testing.assert_array_equal, synthesis, g_vars['params']['synthesis'])
  sr_like = _like('transmrsr')
  assert jax.tree.map(np.shape, synthesis) == jax.tree.map(lambda x: x.shape, sr_like['params']['generator'])
  used = [k for k in g_ema if not k.startswith(('style.', 'to_rgbs.'))]
  assert len(used) == len(convert.key_map('styleswin_synthesis', {'params': synthesis}))
  wrong = ml_collections.ConfigDict(dict(size=32, style_dim=16, channel_base=32, channel_multiplier=1))
  with pytest.raises(import_torch.TorchImportError, match='missing'):
    import_torch.styleswin_synthesis(path, wrong)


def test_export_writes_the_centroids_and_a_file_loads_back_with_them(tmp_path):
  sys.path.insert(0, str(REPO))
  from configs.transmrsr import get_config

  from mrisr_jax import export, network_variables, sdt_centroids

  c = get_config('quick')
  c.model.update(SMALL)
  c.data.hr_patch_size = 16
  out = tmp_path / 'transmrsr.safetensors'
  record = export.export(c, out)
  folder = tmp_path / 'transmrsr_centroids'
  assert record['centroids'] == str(folder)
  assert len(list((folder / 'pure_centroids').glob('centroid_*-8clusters.npy'))) == 8
  centers = np.arange(8 * 16, dtype=np.float32).reshape(8, 16)
  sdt_centroids.save_centroids(folder, centers)  # as if trained
  variables, _ = network_variables.load_generator(c, out)
  np.testing.assert_array_equal(variables['batch_stats']['sdt']['centroids'], centers)
  c.transmrsr.centroids = str(tmp_path / 'elsewhere.npy')
  with pytest.raises(network_variables.WeightsError, match='elsewhere.npy'):
    network_variables.load_generator(c, out)
