"""SRCNN, DRRN, EDSR, RDN: reference parameter counts and state_dict layout, shapes, structure,
gradients, and parity with plain torch.nn transcriptions of the reference modules."""
from __future__ import annotations

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrisr_jax.models import srcnn as srcnn_lib
from mrisr_jax.models.drrn import DRRN
from mrisr_jax.models.edsr import EDSR
from mrisr_jax.models.rdn import RDN
from mrisr_jax.models.srcnn import SRCNN

try:
  import torch
  torch.set_num_threads(2)
except ImportError:  # parity tests are skipped; everything else runs
  torch = None
needs_torch = pytest.mark.skipif(torch is None, reason='torch is not installed')

REFERENCE_JSON = '/work/shared/reference/reference_state_dicts.json'

# The JSON configurations, as constructors of our modules.
REFERENCE_CONFIGS = {
    'srcnn': lambda: SRCNN(),
    'drrn': lambda: DRRN(),
    'edsr_x4': lambda: EDSR(scale=4),
    'edsr_x3_baseline': lambda: EDSR(scale=3, n_resblocks=16, n_feats=64),
    'rdn_x4': lambda: RDN(scale=4),
    'rdn_x2': lambda: RDN(scale=2),
}

TINY = {
    'srcnn': lambda scale: SRCNN(scale=scale),
    'drrn': lambda scale: DRRN(scale=scale, num_recursive_blocks=2, num_units=3, features=8),
    'edsr': lambda scale: EDSR(scale=scale, n_resblocks=2, n_feats=8),
    'rdn': lambda scale: RDN(scale=scale, growth_rate0=8, growth_rate=4, num_layers=2, num_blocks=2),
}
SCALES = (2, 3, 4)


def _reference(name):
  if not os.path.exists(REFERENCE_JSON):
    pytest.skip(f'{REFERENCE_JSON} is not available')
  with open(REFERENCE_JSON) as f:
    return json.load(f)[name]


def _abstract_params(model, side=12):
  x = jnp.zeros((1, side, side, model.in_channels))
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))['params']


def _random_params(model, x, seed=0):
  """Params with PyTorch's default distribution, U(+-1/sqrt(fan_in)), drawn with numpy.

  `model.init` would draw the same distribution but compiles one threefry kernel per parameter
  shape, which costs tens of seconds on a busy 2-core CPU; the tests only need the tree.
  """
  rng = np.random.default_rng(seed)

  def fill(node):
    if 'kernel' in node:  # a Conv2d: every param here is a kernel plus maybe a bias
      bound = 1.0 / math.sqrt(math.prod(node['kernel'].shape[:-1]))
      return {k: jnp.asarray(rng.uniform(-bound, bound, v.shape), jnp.float32) for k, v in node.items()}
    return {k: fill(v) for k, v in node.items()}

  return fill(_abstract_params(model, x.shape[1]))


def _apply(model, params, x):
  return model.apply({'params': params}, x)


# --- flax param path -> reference state_dict key (the tables in the module docstrings) ----------

def _torch_prefix(model_name: str, path: tuple[str, ...], model) -> str:
  p = '/'.join(path)
  rules = {
      'srcnn': [(r'(\w+)', r'\1')],
      'drrn': [(r'block_(\d+)/entry', r'rbs.\1.conv1.1'),
               (r'block_(\d+)/residual_unit/conv_(\d+)',
                lambda m: f'rbs.{m[1]}.residule_unit.conv.{2 * int(m[2]) + 1}'),
               (r'recon', 'recon.1')],
      'edsr': [(r'head', 'model_1.0'),
               (r'body_(\d+)/conv_(\d+)', lambda m: f'model_2.{m[1]}.model.{2 * int(m[2])}'),
               (r'body_conv', lambda m: f'model_2.{model.n_resblocks}'),
               (r'upsampler/conv_(\d+)', lambda m: f'model_3.0.model.{2 * int(m[1])}'),
               (r'tail', 'model_3.1')],
      'rdn': [(r'sfe(\d)', r'SFE\1'),
              (r'rdb_(\d+)/conv_(\d+)', r'RDBs.\1.convs.\2.conv.0'),
              (r'rdb_(\d+)/lff', r'RDBs.\1.LFF'),
              (r'gff_(\d)', r'GFF.\1'),
              (r'upscale_(\d)', r'upscale.\1')],
  }[model_name]
  for pattern, repl in rules:
    if re.fullmatch(pattern, p):
      return re.sub(pattern, repl, p) if isinstance(repl, str) else repl(re.fullmatch(pattern, p))
  raise KeyError(f'{model_name}: no reference key for {p}')


def _to_torch_layout(model_name, params, model):
  """{reference key: array (or ShapeDtypeStruct) in the torch layout} from flax params."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = tuple(k.key for k in path)
    key = _torch_prefix(model_name, names[:-1], model)
    if names[-1] == 'kernel':
      out[f'{key}.weight'] = (jax.ShapeDtypeStruct(tuple(leaf.shape[i] for i in (3, 2, 0, 1)), leaf.dtype)
                              if isinstance(leaf, jax.ShapeDtypeStruct)
                              else np.array(np.transpose(leaf, (3, 2, 0, 1)), np.float32, order='C'))
    else:
      assert names[-1] == 'bias', names
      out[f'{key}.bias'] = leaf if isinstance(leaf, jax.ShapeDtypeStruct) else np.array(leaf, np.float32)
  return out


# --- reference contract ------------------------------------------------------------------------

@pytest.mark.parametrize('config', sorted(REFERENCE_CONFIGS))
def test_parameter_count_equals_the_reference(config):
  params = _abstract_params(REFERENCE_CONFIGS[config]())
  assert sum(x.size for x in jax.tree.leaves(params)) == _reference(config)['num_params']


@pytest.mark.parametrize('config', sorted(REFERENCE_CONFIGS))
def test_params_map_one_to_one_onto_the_reference_state_dict(config):
  model = REFERENCE_CONFIGS[config]()
  mapped = _to_torch_layout(config.split('_')[0], _abstract_params(model), model)
  ours = {k: (tuple(v.shape), str(v.dtype)) for k, v in mapped.items()}
  theirs = {k: (tuple(shape), dtype) for k, shape, dtype in _reference(config)['state_dict']}
  assert ours == theirs


# --- interface -------------------------------------------------------------------------------

@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('name', sorted(TINY))
def test_output_shape(name, scale):
  model = TINY[name](scale)
  assert model.size_multiple == 1 and type(model).supported_scales == SCALES
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 7, 9, 1))  # odd sides: padding k//2 must be exact
  y = _apply(model, _random_params(model, x), x)
  out_side = (7, 9) if model.upsampled_input else (7 * scale, 9 * scale)
  assert y.shape == (2, *out_side, 1) and y.dtype == jnp.float32


@pytest.mark.parametrize('name', sorted(TINY))
def test_unsupported_scale_raises_naming_model_and_scales(name):
  model = TINY[name](2).clone(scale=5)
  with pytest.raises(ValueError, match=rf'{type(model).__name__}.*\(2, 3, 4\)'):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))


@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('name', sorted(TINY))
def test_l1_gradients_reach_every_parameter(name, scale):
  model = TINY[name](scale)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 1))
  params = _random_params(model, x)
  target = jax.random.uniform(jax.random.PRNGKey(2), _apply(model, params, x).shape)
  grads = jax.grad(lambda p: jnp.mean(jnp.abs(model.apply({'params': p}, x) - target)))(params)
  dead = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]
          if not np.any(np.asarray(g) != 0)]
  assert not dead


# --- structure, checked by hand -----------------------------------------------------------------

def test_srcnn_lr_multiplier_names_the_last_layer():
  model = SRCNN()
  x = jax.random.uniform(jax.random.PRNGKey(1), (1, 11, 11, 1))
  params = _random_params(model, x)
  assert set(srcnn_lib.LR_MULTIPLIERS) == {'reconstruction'} and srcnn_lib.LR_MULTIPLIERS['reconstruction'] == 0.1
  assert params['reconstruction']['kernel'].shape == (5, 5, 32, 1)
  # the reconstruction layer is the last one: with a zero kernel the output is its bias everywhere
  params['reconstruction'] = {'kernel': jnp.zeros((5, 5, 32, 1)), 'bias': jnp.array([0.25])}
  np.testing.assert_array_equal(model.apply({'params': params}, x), np.full((1, 11, 11, 1), 0.25))


def test_drrn_units_share_one_residual_unit_and_add_the_input():
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 9, 9, 1))
  one = DRRN(num_units=1, features=8)
  seven = DRRN(num_units=7, features=8)
  params = _random_params(one, x)
  shapes = lambda p: jax.tree.map(lambda a: a.shape, p)  # noqa: E731
  assert shapes(params) == shapes(_random_params(seven, x))
  assert set(params['block_0']) == {'entry', 'residual_unit'}
  assert set(params['block_0']['residual_unit']) == {'conv_0', 'conv_1'}
  assert not np.allclose(one.apply({'params': params}, x), seven.apply({'params': params}, x))
  # global residual: a zero recon layer returns the input untouched
  params['recon'] = jax.tree.map(jnp.zeros_like, params['recon'])
  np.testing.assert_array_equal(seven.apply({'params': params}, x), x)


def test_edsr_with_res_scale_zero_makes_the_resblocks_identities():
  x = jax.random.uniform(jax.random.PRNGKey(1), (1, 6, 6, 1))
  gated = EDSR(scale=2, n_resblocks=3, n_feats=8, res_scale=0.0)
  params = _random_params(gated, x)
  without_blocks = {k: v for k, v in params.items() if not k.startswith('body_') or k == 'body_conv'}
  plain = EDSR(scale=2, n_resblocks=0, n_feats=8)
  np.testing.assert_allclose(gated.apply({'params': params}, x),
                             plain.apply({'params': without_blocks}, x), atol=1e-6)
  # and with the default res_scale the blocks do contribute
  assert not np.allclose(gated.clone(res_scale=0.1).apply({'params': params}, x),
                         plain.apply({'params': without_blocks}, x), atol=1e-6)


@pytest.mark.parametrize('scale', SCALES)
def test_rdn_dense_connectivity_and_upscale_shapes(scale):
  g0, g, c, d = 8, 4, 3, 2
  model = RDN(scale=scale, growth_rate0=g0, growth_rate=g, num_layers=c, num_blocks=d)
  params = _abstract_params(model)
  for block in range(d):
    for layer in range(c):
      assert params[f'rdb_{block}'][f'conv_{layer}']['kernel'].shape == (3, 3, g0 + layer * g, g)
    assert params[f'rdb_{block}']['lff']['kernel'].shape == (1, 1, g0 + c * g, g0)
  assert params['gff_0']['kernel'].shape == (1, 1, d * g0, g0)
  upscale = {k: v['kernel'].shape for k, v in params.items() if k.startswith('upscale')}
  if scale == 4:
    assert upscale == {'upscale_0': (3, 3, g0, 4 * g), 'upscale_2': (3, 3, g, 4 * g),
                       'upscale_4': (3, 3, g, 1)}
  else:
    assert upscale == {'upscale_0': (3, 3, g0, g * scale * scale), 'upscale_2': (3, 3, g, 1)}


# --- parity with plain torch.nn transcriptions of the reference -----------------------------------

def _torch_models():
  nn = torch.nn

  def conv(cin, cout, k, bias=True):  # the reference's default_conv
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)

  class TorchSRCNN(nn.Module):
    def __init__(self):
      super().__init__()
      self.patch_extraction = nn.Conv2d(1, 64, 9, padding=4)
      self.non_linear_mapping = nn.Conv2d(64, 32, 1)
      self.reconstruction = nn.Conv2d(32, 1, 5, padding=2)

    def forward(self, x):
      x = torch.relu(self.patch_extraction(x))
      return self.reconstruction(torch.relu(self.non_linear_mapping(x)))

  class ResidualUnit(nn.Module):
    def __init__(self, ngf, k):
      super().__init__()
      self.conv = nn.Sequential(nn.ReLU(), conv(ngf, ngf, k), nn.ReLU(), conv(ngf, ngf, k))

    def forward(self, x):
      return self.conv(x)

  class RecursiveBlock(nn.Module):
    def __init__(self, cin, ngf, units, k):
      super().__init__()
      self.units = units
      self.conv1 = nn.Sequential(nn.ReLU(), conv(cin, ngf, k))
      self.residule_unit = ResidualUnit(ngf, k)

    def forward(self, x):
      h0 = self.conv1(x)
      h = h0
      for _ in range(self.units):
        h = self.residule_unit(h) + h0
      return h

  class TorchDRRN(nn.Module):
    def __init__(self, blocks=1, units=25, ngf=128, k=3):
      super().__init__()
      self.rbs = nn.Sequential(*[RecursiveBlock(1 if b == 0 else ngf, ngf, units, k)
                                 for b in range(blocks)])
      self.recon = nn.Sequential(nn.ReLU(), conv(ngf, 1, k))

    def forward(self, x):
      return x + self.recon(self.rbs(x))

  class ResBlock(nn.Module):
    def __init__(self, f, k, res_scale):
      super().__init__()
      self.res_scale = res_scale
      self.model = nn.Sequential(conv(f, f, k), nn.ReLU(), conv(f, f, k))

    def forward(self, x):
      return self.model(x) * self.res_scale + x

  class Upsampler(nn.Module):
    def __init__(self, scale, f):
      super().__init__()
      layers = []
      if scale == 3:
        layers += [conv(f, 9 * f, 3, bias=False), nn.PixelShuffle(3)]
      else:
        for _ in range(int(math.log2(scale))):
          layers += [conv(f, 4 * f, 3, bias=False), nn.PixelShuffle(2)]
      self.model = nn.Sequential(*layers)

    def forward(self, x):
      return self.model(x)

  class TorchEDSR(nn.Module):
    def __init__(self, scale, n_resblocks=32, n_feats=256, res_scale=0.1, k=3):
      super().__init__()
      self.model_1 = nn.Sequential(conv(1, n_feats, k))
      self.model_2 = nn.Sequential(*[ResBlock(n_feats, k, res_scale) for _ in range(n_resblocks)],
                                   conv(n_feats, n_feats, k))
      self.model_3 = nn.Sequential(Upsampler(scale, n_feats), conv(n_feats, 1, k))

    def forward(self, x):
      x = self.model_1(x)
      return self.model_3(self.model_2(x) + x)

  class RDBConv(nn.Module):
    def __init__(self, cin, g):
      super().__init__()
      self.conv = nn.Sequential(nn.Conv2d(cin, g, 3, padding=1), nn.ReLU())

    def forward(self, x):
      return torch.cat((x, self.conv(x)), 1)

  class RDB(nn.Module):
    def __init__(self, g0, g, c):
      super().__init__()
      self.convs = nn.Sequential(*[RDBConv(g0 + i * g, g) for i in range(c)])
      self.LFF = nn.Conv2d(g0 + c * g, g0, 1)

    def forward(self, x):
      return self.LFF(self.convs(x)) + x

  class TorchRDN(nn.Module):
    def __init__(self, scale, g0=64, g=32, c=6, d=20, k=3):
      super().__init__()
      pad = (k - 1) // 2
      self.SFE1 = nn.Conv2d(1, g0, k, padding=pad)
      self.SFE2 = nn.Conv2d(g0, g0, k, padding=pad)
      self.RDBs = nn.ModuleList([RDB(g0, g, c) for _ in range(d)])
      self.GFF = nn.Sequential(nn.Conv2d(d * g0, g0, 1), nn.Conv2d(g0, g0, k, padding=pad))
      if scale == 4:
        self.upscale = nn.Sequential(nn.Conv2d(g0, g * 4, k, padding=pad), nn.PixelShuffle(2),
                                     nn.Conv2d(g, g * 4, k, padding=pad), nn.PixelShuffle(2),
                                     nn.Conv2d(g, 1, k, padding=pad))
      else:
        self.upscale = nn.Sequential(nn.Conv2d(g0, g * scale * scale, k, padding=pad),
                                     nn.PixelShuffle(scale), nn.Conv2d(g, 1, k, padding=pad))

    def forward(self, x):
      f1 = self.SFE1(x)
      h = self.SFE2(f1)
      outs = []
      for block in self.RDBs:
        h = block(h)
        outs.append(h)
      return self.upscale(self.GFF(torch.cat(outs, 1)) + f1)

  return {'srcnn': TorchSRCNN, 'drrn': TorchDRRN, 'edsr': TorchEDSR, 'rdn': TorchRDN}


TORCH_REFERENCE_ARGS = {
    'srcnn': {}, 'drrn': {}, 'edsr_x4': dict(scale=4), 'edsr_x3_baseline': dict(scale=3, n_resblocks=16, n_feats=64),
    'rdn_x4': dict(scale=4), 'rdn_x2': dict(scale=2),
}


@needs_torch
@pytest.mark.parametrize('config', sorted(TORCH_REFERENCE_ARGS))
def test_torch_transcription_has_the_reference_state_dict(config):
  """The transcriptions used below are faithful: same keys, order and shapes as the reference."""
  with torch.device('meta'):
    module = _torch_models()[config.split('_')[0]](**TORCH_REFERENCE_ARGS[config])
  ours = [[k, list(v.shape), str(v.dtype).removeprefix('torch.')] for k, v in module.state_dict().items()]
  assert ours == _reference(config)['state_dict']


PARITY_CASES = [
    ('srcnn', 2, {}),
    ('drrn', 3, dict(blocks=2, units=3, ngf=8)),
    *[('edsr', s, dict(scale=s, n_resblocks=2, n_feats=8)) for s in SCALES],
    *[('rdn', s, dict(scale=s, g0=8, g=4, c=2, d=2)) for s in SCALES],
]


@needs_torch
@pytest.mark.parametrize('name,scale,torch_args', PARITY_CASES,
                         ids=[f'{n}-x{s}' for n, s, _ in PARITY_CASES])
def test_matches_a_torch_transcription_of_the_reference(name, scale, torch_args):
  model = TINY[name](scale)
  x = np.random.default_rng(0).normal(0.5, 0.5, size=(2, 10, 8, 1)).astype(np.float32)
  params = _random_params(model, jnp.asarray(x))
  ours = np.asarray(_apply(model, params, jnp.asarray(x)))
  reference = _torch_models()[name](**torch_args)
  state = {k: torch.from_numpy(v) for k, v in _to_torch_layout(name, params, model).items()}
  reference.load_state_dict(state, strict=True)
  with torch.no_grad():
    theirs = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  assert ours.shape == theirs.shape
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
