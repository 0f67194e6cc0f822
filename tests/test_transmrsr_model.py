"""TransMRSR's SR network: parameter counts, the public state_dict layout, forward parity with the torch
mirror of the public TGP7, SDT and CWSS semantics, padding, ImageNet mode, state_dict round trip.

Counts and layout are checked at the public size (256) without weights (`jax.eval_shape`; the torch
mirror builds in a few seconds); forward parity runs at size 32 (channel_base 64, style_dim 32) and
the padding checks at size 8, jitted at XLA optimisation level 0 (compiles 2-3x faster, same sums).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrisr_jax.interop.transmrsr_keys import transmrsr_buffers, transmrsr_key_map
from mrisr_jax.models import transmrsr as tm
from mrisr_jax.models.styleswin import styleswin_channels
from mrisr_jax.models.transmrsr import TransMRSR, cwss, sdt_truncate
from tests.helpers import random_variables

pytestmark = pytest.mark.unit
torch = pytest.importorskip('torch')
torch.set_num_threads(2)

from mrisr_jax.interop import torch_transmrsr as ttm  # noqa: E402  (needs torch)

fast_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': '0'})
SMALL = dict(size=32, style_dim=32, channel_base=64)
TO_TORCH = {'conv': (3, 2, 0, 1), 'linear': (1, 0), 'const_nchw': (0, 3, 1, 2)}
TO_FLAX = {'conv': (2, 3, 1, 0), 'linear': (1, 0), 'const_nchw': (0, 2, 3, 1)}


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def abstract(model: TransMRSR, side: int | None = None):
  side = side or model.size
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, side, side, 3), jnp.float32))


def get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def to_state_dict(key_map, buffers, variables) -> dict[str, np.ndarray]:
  out = {}
  for key, (path, transform) in key_map.items():
    if path is None:
      out[key] = buffers[key]
      continue
    assert transform == 'copy' or transform in TO_TORCH, transform
    a = np.asarray(get(variables, path))
    out[key] = a.transpose(TO_TORCH[transform]) if transform in TO_TORCH else a
  return out


def from_state_dict(key_map, state_dict) -> dict:
  out: dict = {}
  for key, (path, transform) in key_map.items():
    if path is None:
      continue
    a = np.asarray(state_dict[key])
    node = out
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = np.ascontiguousarray(a.transpose(TO_FLAX[transform]) if transform in TO_FLAX else a)
  return out


def randomize_torch(model, seed: int) -> None:
  """Weights keep the public init; biases, LayerNorm affines, SPE alphas and bias tables get random
  values, so that no term of the forward is trivially 0 or 1."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'bias_table' in name:
        p.normal_(0, 0.5, generator=g)
      elif p.ndim == 1 and 'norm' in name and name.endswith('weight'):
        p.uniform_(0.5, 1.5, generator=g)
      elif p.ndim == 1:
        p.uniform_(-0.2, 0.2, generator=g)
    model.centers.normal_(0, 1, generator=g)


def nchw(x: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.fixture(scope='module')
def small():
  """A size-32 torch mirror with random weights, the same weights as flax variables, and an input."""
  torch.manual_seed(0)
  tmodel = ttm.TorchTransMRSR(**SMALL, sdt='farthest').eval()
  randomize_torch(tmodel, 1)
  sd = {k: v.numpy() for k, v in tmodel.state_dict().items()}
  fmodel = TransMRSR(**SMALL, in_channels=3, out_channels=3, sdt='farthest')
  like = abstract(fmodel)
  km = transmrsr_key_map(like)
  assert list(km) == list(sd)
  variables = from_state_dict(km, sd)
  variables['batch_stats'] = {'sdt': {'centroids': tmodel.centers.numpy().copy()}}
  assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(like)
  x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  return dict(torch=tmodel, flax=fmodel, variables=variables, x=x)


def test_parameter_counts_at_256():
  model = TransMRSR(size=256, in_channels=3, out_channels=3, sdt='farthest')
  v = abstract(model)
  p = v['params']
  # reference section 4.8: the modules the public forward uses
  assert count(p) == 160_842_497
  assert count(p['conv2d']) == 149_504
  assert count(p['patch_embed']) == 128
  stages = [count(p[f'layers_{i}']) for i in range(6)]
  assert stages == [177_376, 683_424, 2_703_136, 9_724_448, 9_720_848, 9_719_048]
  assert sum(stages) == 32_728_280
  assert count(p['norm']) == 1_024
  assert count(p['final_layers']) == 58_727_424
  assert sum(count(p[f'condition_scale_{i}']) for i in range(6)) == 15_265_344
  assert sum(count(p[f'condition_shift_{i}']) for i in range(6)) == 15_265_344
  assert [count(p[f'condition_scale_{i}']) for i in range(6)] == [221_376, 885_120] + [3_539_712] * 4
  assert count(p['generator']) == 38_520_614
  assert count(p['conv_deep']) == 184_640
  assert count(p['conv_last']) == 195
  # Trainable with the decoder frozen (--fix_decoder): the reference's 145,038,174 is 183,558,788 (the
  # public model as instantiated, with its unused MAB and fusion_convs) minus the decoder; without
  # those modules the same freeze leaves the encoder side's 122,321,883.
  assert count(p) - count(p['generator']) == 122_321_883 == 145_038_174 - 2_364_931 - 20_351_360
  # the SDT centroids are state, not params
  assert jax.tree_util.tree_map(lambda a: a.shape, v['batch_stats']) == {'sdt': {'centroids': (8, 512)}}
  assert 'sdt' not in p


def test_encoder_heads_and_geometry():
  channels = styleswin_channels(256)
  assert tm.encoder_heads(256, channels, 'public') == [16, 16, 16, 16, 8, 4]
  assert tm.encoder_heads(256, channels, 'by_resolution') == [4, 4, 8, 16, 16, 16]
  assert [tm.stage_geometry(r) for r in (256, 16, 8)] == [(8, 4), (8, 4), (8, 0)]
  assert tm.pad_amounts(181, 256) == (38, 37) and tm.pad_amounts(182, 256) == (37, 37)


APPENDIX_B = [
  r'conv2d\.conv_L1\.(weight|bias)',
  r'conv2d\.blk_L1\.[01]\.conv[12]\.(weight|bias)',
  r'patch_embed\.norm\.(weight|bias)',
  r'layers\.[0-5]\.residual_group\.blocks\.[01]\.norm[12]\.(weight|bias)',
  r'layers\.[0-5]\.residual_group\.blocks\.[01]\.attn\.relative_position_(bias_table|index)',
  r'layers\.[0-4]\.residual_group\.blocks\.1\.attn_mask',
  r'layers\.[0-5]\.residual_group\.blocks\.[01]\.attn\.(qkv|proj)\.(weight|bias)',
  r'layers\.[0-5]\.residual_group\.blocks\.[01]\.mlp\.fc[12]\.(weight|bias)',
  r'layers\.[0-5]\.conv\.(weight|bias)',
  r'layers\.[0-5]\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)',
  r'norm\.(weight|bias)',
  r'final_layers\.(weight|bias)',
  r'condition_(scale|shift)\.[0-5]\.[02]\.(weight|bias)',
  r'generator\.input\.input',
  r'generator\.layers\.[0-6]\.blocks\.[01]\.norm[12]\.style\.(weight|bias)',
  r'generator\.layers\.[0-6]\.blocks\.[01]\.(qkv|proj)\.(weight|bias)',
  r'generator\.layers\.[0-6]\.blocks\.[01]\.attn\.[01]\.relative_position_(bias_table|index)',
  r'generator\.layers\.[2-6]\.blocks\.[01]\.attn_mask2',
  r'generator\.layers\.[0-6]\.blocks\.[01]\.mlp\.fc[12]\.(weight|bias)',
  r'generator\.layers\.[0-5]\.upsample\.(alpha|norm\.weight|norm\.bias|reduction\.weight|sin_pos_embed\._float_tensor)',
  r'conv_deep\.conv_L1\.(weight|bias)',
  r'conv_deep\.blk_L1\.[01]\.conv[12]\.(weight|bias)',
  r'conv_last\.(weight|bias)',
]


def test_state_dict_layout_at_256():
  torch.manual_seed(0)
  tmodel = ttm.TorchTransMRSR(256)
  sd = tmodel.state_dict()
  assert sum(p.numel() for p in tmodel.parameters()) == 160_842_497
  params = dict(tmodel.named_parameters())
  buffer_keys = [k for k in sd if k not in params]
  assert len(sd) == 544 and len(buffer_keys) == 61  # the public 680 / 61 minus MAB and fusion_convs
  assert 'centers' not in sd
  for key in sd:
    assert any(re.fullmatch(p, key) for p in APPENDIX_B), key
  for p in APPENDIX_B:
    assert any(re.fullmatch(p, key) for key in sd), p

  like = abstract(TransMRSR(size=256, in_channels=3, out_channels=3, sdt='farthest'))
  km = transmrsr_key_map(like)
  assert list(km) == list(sd)
  assert sorted(k for k, (path, _) in km.items() if path is None) == sorted(buffer_keys)
  for key, (path, transform) in km.items():
    if path is not None:
      shape = get(like, path).shape
      expect = tuple(np.empty(shape, np.bool_).transpose(TO_TORCH[transform]).shape) if transform in TO_TORCH else shape
      assert tuple(sd[key].shape) == expect, key
  buffers = transmrsr_buffers(like)
  assert sorted(buffers) == sorted(buffer_keys)
  for key in buffer_keys:
    if key.endswith('_float_tensor'):  # uninitialised in torch; only the shape is fixed
      assert buffers[key].shape == tuple(sd[key].shape)
      continue
    assert buffers[key].dtype == sd[key].numpy().dtype, key
    np.testing.assert_array_equal(buffers[key], sd[key].numpy(), err_msg=key)

  # shapes named in the reference (Appendix B, section 4.3)
  assert tuple(sd['conv2d.conv_L1.weight'].shape) == (64, 3, 3, 3)
  assert tuple(sd['final_layers.weight'].shape) == (7168, 8192)
  assert [
    tuple(sd[f'layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table'].shape) for i in range(6)
  ] == [(225, h) for h in (16, 16, 16, 16, 8, 4)]
  masks = [k for k in sd if k.endswith('.attn_mask')]
  assert masks == [f'layers.{i}.residual_group.blocks.1.attn_mask' for i in range(5)]
  assert [tuple(sd[k].shape) for k in masks] == [((256 // 2**i // 8) ** 2, 64, 64) for i in range(5)]
  assert tuple(sd['layers.0.downsample.reduction.weight'].shape) == (128, 256)
  assert tuple(sd['condition_scale.0.2.weight'].shape) == (64, 128, 3, 3)
  assert tuple(sd['generator.input.input'].shape) == (1, 512, 4, 4)
  assert tuple(sd['conv_last.weight'].shape) == (3, 64, 1, 1)


def max_err(a, b) -> tuple[float, float]:
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), float(np.max(np.abs(np.asarray(b))))


def test_forward_parity_per_module_farthest(small):
  """Every encoder block, PatchMerging, CWSS head, the latent head and SDT, and the whole network."""
  tmodel, fmodel, variables, x = small['torch'], small['flax'], small['variables'], small['x']
  outs, handles = {}, []

  def hook(name):
    return lambda m, i, o: outs.__setitem__(name, o.detach().numpy())

  for i, layer in enumerate(tmodel.layers):
    handles.append(layer.residual_group.blocks[0].register_forward_hook(hook(f'blocks_0.{i}')))
    handles.append(layer.residual_group.blocks[1].register_forward_hook(hook(f'blocks_1.{i}')))
    handles.append(layer.downsample.register_forward_hook(hook(f'downsample.{i}')))
    handles.append(tmodel.condition_scale[i].register_forward_hook(hook(f'scale.{i}')))
    handles.append(tmodel.condition_shift[i].register_forward_hook(hook(f'shift.{i}')))
  handles.append(tmodel.final_layers.register_forward_hook(hook('final_layers')))
  with torch.no_grad():
    y_torch = tmodel(nchw(x)).numpy().transpose(0, 2, 3, 1)
    _, _, latent_torch = tmodel.encode(nchw(x))
  for h in handles:
    h.remove()

  apply = fast_jit(lambda v, x: fmodel.apply(v, x, capture_intermediates=True, mutable=['intermediates']))
  y, state = apply(variables, x)
  inter = state['intermediates']
  b = x.shape[0]
  for i in range(3):
    r = 32 // 2**i
    for j in range(2):
      ours = inter[f'layers_{i}'][f'blocks_{j}']['__call__'][0]
      err, ref = max_err(ours, outs[f'blocks_{j}.{i}'].reshape(b, r, r, -1))
      assert err <= 1e-5 * max(1.0, ref), (i, j, err, ref)
    err, ref = max_err(
      inter[f'layers_{i}']['downsample']['__call__'][0], outs[f'downsample.{i}'].reshape(b, r // 2, r // 2, -1)
    )
    assert err <= 1e-5 * max(1.0, ref), (i, err, ref)
    for head in ('scale', 'shift'):
      ours = inter[f'condition_{head}_{i}']['__call__'][0]
      err, ref = max_err(ours, outs[f'{head}.{i}'].transpose(0, 2, 3, 1))
      assert err <= 1e-5 * max(1.0, ref), (head, i, err, ref)
  err, ref = max_err(inter['final_layers']['__call__'][0], outs['final_layers'])
  assert err <= 1e-5 * max(1.0, ref), (err, ref)
  err, ref = max_err(inter['sdt']['__call__'][0], latent_torch.numpy())
  assert err <= 1e-5 * max(1.0, ref), (err, ref)
  err, ref = max_err(y, y_torch)
  assert err <= 1e-4 * ref, (err, ref)


def test_forward_parity_nearest_and_modes_differ(small):
  tmodel, variables, x = small['torch'], small['variables'], small['x']
  fmodel = TransMRSR(**SMALL, in_channels=3, out_channels=3, sdt='nearest')
  tmodel.sdt = 'nearest'
  try:
    with torch.no_grad():
      y_torch = tmodel(nchw(x)).numpy().transpose(0, 2, 3, 1)
      _, _, near = tmodel.encode(nchw(x))
    tmodel.sdt = 'farthest'
    with torch.no_grad():
      _, _, far = tmodel.encode(nchw(x))
  finally:
    tmodel.sdt = 'farthest'
  assert not np.allclose(near.numpy(), far.numpy())  # the two modes pick different centroids here
  y = fast_jit(fmodel.apply)(variables, x)
  err, ref = max_err(y, y_torch)
  assert err <= 1e-4 * ref, (err, ref)


def test_encoder_block_with_q_scale_matches_torch():
  """The `encoder_q_scale` option (standard Swin) against the mirror, on a shifted 16 px block."""
  torch.manual_seed(3)
  block = ttm._SwinBlock(32, 16, 4, 8, 4, 4.0, q_scale=True).eval()
  randomize_torch_block(block)
  sd = {k: v.numpy() for k, v in block.state_dict().items()}
  v = {'params': {}}
  for n in ('norm1', 'norm2'):
    v['params'][n] = {'scale': sd[f'{n}.weight'], 'bias': sd[f'{n}.bias']}
  v['params']['attn'] = {
    'relative_position_bias_table': sd['attn.relative_position_bias_table'],
    'qkv': {'kernel': sd['attn.qkv.weight'].T, 'bias': sd['attn.qkv.bias']},
    'proj': {'kernel': sd['attn.proj.weight'].T, 'bias': sd['attn.proj.bias']},
  }
  v['params']['mlp'] = {f: {'kernel': sd[f'mlp.{f}.weight'].T, 'bias': sd[f'mlp.{f}.bias']} for f in ('fc1', 'fc2')}
  x = np.random.default_rng(1).normal(size=(2, 16, 16, 32)).astype(np.float32)
  ours = tm.EncoderSwinBlock(4, 8, 4, 4.0, q_scale=True).apply(v, x)
  with torch.no_grad():
    ref = block(torch.from_numpy(x.reshape(2, 256, 32))).numpy().reshape(2, 16, 16, 32)
  err, mag = max_err(ours, ref)
  assert err <= 1e-5 * max(1.0, mag), (err, mag)


def randomize_torch_block(block) -> None:
  g = torch.Generator().manual_seed(4)
  with torch.no_grad():
    for name, p in block.named_parameters():
      if 'bias_table' in name:
        p.normal_(0, 0.5, generator=g)
      elif p.ndim == 1:
        p.uniform_(0.5, 1.5, generator=g) if 'norm' in name else p.uniform_(-0.2, 0.2, generator=g)
      else:
        p.normal_(0, 0.2, generator=g)


def test_sdt_semantics():
  centroids = jnp.asarray(
    [[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, -4.0, 0.0], [0.0, 0.0, 1.0]],
    jnp.float32,
  )
  # slot 0 sits near centroid 3, farthest from 1; slot 1 near 2, farthest from 1; slot 2 near 1, farthest from 2
  w = jnp.asarray([[[0.1, 0.2, 1.2], [0.5, -3.0, 0.0], [9.0, 1.0, 0.0]]], jnp.float32)
  psi = 0.9
  for mode, picks in (('nearest', [3, 2, 1]), ('farthest', [1, 1, 2])):
    c = centroids[jnp.asarray(picks)][None]
    np.testing.assert_allclose(sdt_truncate(w, centroids, psi, mode), c + psi * (w - c), rtol=0, atol=1e-6)
    grad_c = jax.grad(lambda cen, mode=mode: jnp.sum(sdt_truncate(w, cen, psi, mode) ** 2))(centroids)
    np.testing.assert_array_equal(grad_c, np.zeros_like(centroids))
    grad_w = jax.grad(lambda ww, mode=mode: jnp.sum(sdt_truncate(ww, centroids, psi, mode)))(w)
    np.testing.assert_allclose(grad_w, np.full(w.shape, psi), rtol=1e-6)
  np.testing.assert_array_equal(sdt_truncate(w, centroids, psi, 'off'), w)
  # a batch of one keeps its batch dimension (the public get_nearest squeezes it)
  assert sdt_truncate(w, centroids, psi, 'nearest').shape == (1, 3, 3)
  # the torch mirror's SDT picks the same
  for mode in ('nearest', 'farthest'):
    ref = ttm.sdt_truncate_torch(torch.from_numpy(np.array(w)), torch.from_numpy(np.array(centroids)), psi, mode)
    np.testing.assert_allclose(sdt_truncate(w, centroids, psi, mode), ref.numpy(), rtol=0, atol=1e-6)


def test_cwss_changes_only_the_first_half():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 4, 4, 8)).astype(np.float32)
  scale = rng.normal(size=(2, 4, 4, 4)).astype(np.float32)
  shift = rng.normal(size=(2, 4, 4, 4)).astype(np.float32)
  y = np.asarray(cwss(x, scale, shift))
  np.testing.assert_array_equal(y[..., 4:], x[..., 4:])
  np.testing.assert_allclose(y[..., :4], x[..., :4] * scale + shift, rtol=1e-6)  # no "1 +"


def test_padding_imagenet_mode_and_size_errors():
  """A 5x7 input at size 8 comes back 5x7: zero-padded (odd pixel top/left), run, cropped; ImageNet mode
  replicates grey to RGB, normalises, un-normalises and averages back."""
  base = TransMRSR(size=8, style_dim=16, channel_base=32, in_channels=3, out_channels=3, sdt='nearest')
  grey = TransMRSR(
    size=8, style_dim=16, channel_base=32, in_channels=1, out_channels=1, sdt='nearest', imagenet_input=True
  )
  variables = random_variables(abstract(base))
  variables['batch_stats']['sdt']['centroids'] = np.random.default_rng(2).normal(size=(8, 16)).astype(np.float32)
  rng = np.random.default_rng(3)
  x = rng.uniform(size=(2, 5, 7, 1)).astype(np.float32)
  padded = np.pad(x, ((0, 0), (2, 1), (1, 0), (0, 0)))
  mean, std = np.asarray(tm.IMAGENET_MEAN, np.float32), np.asarray(tm.IMAGENET_STD, np.float32)
  run_base = fast_jit(base.apply)
  full = np.asarray(run_base(variables, (np.tile(padded, (1, 1, 1, 3)) - mean) / std))
  expect = np.mean(full * std + mean, axis=-1, keepdims=True)[:, 2:7, 1:8]
  y = np.asarray(fast_jit(grey.apply)(variables, x))
  assert y.shape == x.shape
  np.testing.assert_allclose(y, expect, rtol=0, atol=1e-5)

  x3 = rng.uniform(size=(2, 5, 7, 3)).astype(np.float32)
  y3 = np.asarray(run_base(variables, x3))
  assert y3.shape == x3.shape
  full3 = np.asarray(run_base(variables, np.pad(x3, ((0, 0), (2, 1), (1, 0), (0, 0)))))
  np.testing.assert_allclose(y3, full3[:, 2:7, 1:8], rtol=0, atol=1e-5)

  with pytest.raises(ValueError, match='model.size=8'):
    jax.eval_shape(base.apply, variables, jnp.zeros((1, 9, 8, 3)))
  with pytest.raises(ValueError, match='model.sdt'):
    jax.eval_shape(TransMRSR(size=8, sdt='argmax').init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  off = abstract(TransMRSR(size=8, style_dim=16, channel_base=32, in_channels=3, out_channels=3, sdt='off'))
  assert 'batch_stats' not in off


def test_state_dict_round_trip_bit_exact():
  fmodel = TransMRSR(**SMALL, in_channels=3, out_channels=3)
  like = abstract(fmodel)
  variables = random_variables(like, seed=5)
  km = transmrsr_key_map(variables)
  sd = to_state_dict(km, transmrsr_buffers(variables), variables)
  tmodel = ttm.TorchTransMRSR(**SMALL)
  tmodel.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=True)
  back_sd = {k: v.numpy() for k, v in tmodel.state_dict().items()}
  assert list(back_sd) == list(km)
  back = from_state_dict(km, back_sd)
  flat = dict(jax.tree_util.tree_leaves_with_path(variables['params']))
  back_flat = dict(jax.tree_util.tree_leaves_with_path(back['params']))
  assert flat.keys() == back_flat.keys()
  for path, leaf in flat.items():
    assert back_flat[path].dtype == leaf.dtype and back_flat[path].shape == leaf.shape, path
    np.testing.assert_array_equal(back_flat[path], leaf, err_msg=str(path))
