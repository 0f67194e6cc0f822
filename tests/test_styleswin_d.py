"""StyleSwin wavelet discriminator: parameter counts, torch-mirror parity, key map round trip, Haar, R1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrisr_jax import prior_steps
from mrisr_jax.interop.styleswin_d_keys import styleswin_d_buffers, styleswin_d_key_map
from mrisr_jax.models import styleswin_d as sd

pytestmark = pytest.mark.unit


def _torch():
  torch = pytest.importorskip('torch')
  torch.set_num_threads(2)
  return torch


def _abstract(model, batch=2, dtype=jnp.float32):
  x = jax.ShapeDtypeStruct((batch, model.size, model.size, model.in_channels), dtype)
  return jax.eval_shape(model.init, jax.random.key(0), x)


def _count(tree) -> int:
  return int(sum(np.prod(v.shape) for v in jax.tree.leaves(tree)))


def _fill(abstract, seed=0, dtype=np.float32):
  """Equalised weights N(0,1) (their init), SN weights U(+-1/sqrt(fan_in)), biases N(0, 0.2), u/v unit."""
  rng = np.random.default_rng(seed)

  def fill(path, v):
    name = path[-1].key
    if name == 'weight' and path[0].key == 'params':
      if 'final_linear_2' in abstract['params'] or 'batch_stats' in abstract:  # sn
        bound = 1 / np.sqrt(np.prod(v.shape[1:]))
        return rng.uniform(-bound, bound, v.shape).astype(dtype)
      return rng.normal(size=v.shape).astype(dtype)
    if name in ('u', 'v'):
      a = rng.normal(size=v.shape)
      return (a / np.linalg.norm(a)).astype(dtype)
    return (0.2 * rng.normal(size=v.shape)).astype(dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def to_state_dict(key_map, buffers, variables):
  return {k: (np.asarray(_get(variables, path)) if path else buffers[k]) for k, (path, _) in key_map.items()}


def from_state_dict(key_map, state_dict):
  out: dict = {}
  for k, (path, _) in key_map.items():
    if path is None:
      continue
    node = out
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = np.asarray(state_dict[k])
  return out


@pytest.mark.parametrize('cm, sn, expected', [(2, False, 26_211_073), (1, False, 22_704_257), (2, True, 26_211_585)])
def test_param_count_256(cm, sn, expected):
  v = _abstract(sd.StyleSwinDiscriminator(256, cm, sn=sn))
  assert _count(v['params']) == expected
  p = v['params']
  assert p['from_rgbs_0']['conv']['weight'].shape == (64 * cm, 12, 1, 1)
  assert p['final_conv']['weight'].shape == (512, 513, 3, 3)
  assert p['final_linear_0']['weight'].shape == (512, 8192)
  assert ('batch_stats' in v) == sn


@pytest.mark.parametrize('sn', [False, True])
def test_key_map_matches_mirror_at_256(sn):
  torch = _torch()
  from mrisr_jax.interop.torch_styleswin_d import TorchStyleSwinDiscriminator

  v = _abstract(sd.StyleSwinDiscriminator(256, 2, sn=sn))
  km = styleswin_d_key_map(v)
  with torch.device('meta'):
    mirror = TorchStyleSwinDiscriminator(256, 2, sn=sn)
  ref = {k: tuple(t.shape) for k, t in mirror.state_dict().items()}
  assert list(km) == list(ref)
  bufs = styleswin_d_buffers(v)
  for k, (path, transform) in km.items():
    shape = bufs[k].shape if path is None else _get(v, path).shape
    assert shape == ref[k], k
    assert transform == ('buffer' if path is None else 'copy'), k
  leaves = {tuple(p.key for p in path) for path, _ in jax.tree_util.tree_leaves_with_path(v)}
  assert leaves == {path for path, _ in km.values() if path is not None}


def test_haar_roundtrip_and_filters():
  x = jax.random.normal(jax.random.key(1), (2, 16, 12, 5))
  w = sd.haar_transform(x)
  assert w.shape == (2, 8, 6, 20)
  np.testing.assert_allclose(sd.inverse_haar_transform(w), x, atol=2e-6)
  # ll is the 2x2 block mean times 2
  np.testing.assert_allclose(w[..., :5], 2 * x.reshape(2, 8, 2, 6, 2, 5).mean((2, 4)), atol=2e-6)


@pytest.mark.parametrize(
  'up, down, pad', [(1, 2, (0, 0)), (2, 1, (1, 0, 1, 0)), (1, 1, (2, 2)), (2, 2, (-1, 2, 3, -2)), (1, 2, (1, 1))]
)
def test_upfirdn2d_matches_native(up, down, pad):
  torch = _torch()
  from mrisr_jax.interop.torch_styleswin_d import upfirdn2d_native

  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 9, 10, 3)).astype(np.float32)
  k = rng.normal(size=(4, 3)).astype(np.float32)
  p = pad if len(pad) == 4 else (pad[0], pad[1], pad[0], pad[1])
  ref = upfirdn2d_native(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(k), up, up, down, down, *p)
  out = sd.upfirdn2d(jnp.asarray(x), k, up, down, pad)
  np.testing.assert_allclose(np.asarray(out), ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def _mirror(model, variables, torch):
  from mrisr_jax.interop.torch_styleswin_d import TorchStyleSwinDiscriminator

  net = TorchStyleSwinDiscriminator(
    model.size, model.channel_multiplier, model.channel_base, model.in_channels, model.sn
  )
  km = styleswin_d_key_map(variables)
  state = to_state_dict(km, styleswin_d_buffers(variables), variables)
  net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
  return net, km


@pytest.mark.parametrize('sn', [False, True])
def test_forward_parity_and_round_trip(sn):
  torch = _torch()
  model = sd.StyleSwinDiscriminator(32, 2, channel_base=64, in_channels=3, sn=sn)
  variables = _fill(_abstract(model))
  net, km = _mirror(model, variables, torch)
  # state_dict round trip: flax -> torch -> flax, bit-exact; buffers equal the mirror's own
  back = from_state_dict(km, {k: t.numpy() for k, t in net.state_dict().items()})
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), variables, back)
  bufs = styleswin_d_buffers(variables)
  for k, b in bufs.items():
    np.testing.assert_array_equal(net.state_dict()[k].numpy(), b)

  apply = jax.jit(model.apply, static_argnames='train')
  rng = np.random.default_rng(3)
  for batch in (4, 2):
    x = rng.normal(size=(batch, 32, 32, 3)).astype(np.float32)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    net.eval()
    with torch.no_grad():
      ref = net(xt).numpy()
    out = np.asarray(apply(variables, x))
    assert out.shape == (batch, 1)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
  if sn:  # train mode: one power iteration per call, u and v updated as torch's
    net.train()
    x = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    state = variables
    train_apply = jax.jit(lambda v, im: model.apply(v, im, train=True, mutable=['batch_stats']))
    for _ in range(2):
      with torch.no_grad():
        ref = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
      out, upd = train_apply(state, x)
      state = {**state, **upd}
      np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    sd_t = net.state_dict()
    for k, (path, _) in km.items():
      if path is not None and path[0] == 'batch_stats':
        np.testing.assert_allclose(np.asarray(_get(state, path)), sd_t[k].numpy(), atol=1e-6)


def test_bad_batch_and_size():
  model = sd.StyleSwinDiscriminator(16, 1, channel_base=32)
  with pytest.raises(ValueError, match='divisible'):
    _abstract(model, batch=6)
  with pytest.raises(ValueError, match='>= 16'):
    _abstract(sd.StyleSwinDiscriminator(8))


def test_r1_penalty_matches_finite_difference():
  with jax.enable_x64(True):
    model = sd.StyleSwinDiscriminator(16, 2, channel_base=32, in_channels=1)
    variables = jax.tree.map(jnp.asarray, _fill(_abstract(model, dtype=jnp.float64), seed=5, dtype=np.float64))
    x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 16, 16, 1)))

    def r1(v, img):
      return prior_steps.r1_penalty(lambda im: model.apply(v, im), img)

    r1 = jax.jit(r1)
    got = float(r1(variables, x))
    # central differences of sum(D(x)) in every input element -> the gradient -> R1
    h = 1e-5
    eye = jnp.eye(x.size, dtype=x.dtype).reshape((x.size,) + x.shape)
    f = jax.jit(
      jax.vmap(lambda e: jnp.sum(model.apply(variables, x + h * e)) - jnp.sum(model.apply(variables, x - h * e)))
    )
    g = (f(eye) / (2 * h)).reshape(x.shape)
    want = float(jnp.mean(jnp.sum(jnp.square(g).reshape(2, -1), axis=1)))
    assert got > 0
    np.testing.assert_allclose(got, want, rtol=1e-7)

    # its gradient in the params (what the lazy R1 step uses) against a directional difference
    d = jax.tree.map(lambda a: jnp.asarray(np.random.default_rng(9).normal(size=a.shape)), variables)
    grad = jax.jit(jax.grad(r1))(variables, x)
    dot = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(d)))
    eps = 1e-5
    shift = lambda s: jax.tree.map(lambda a, b: a + s * eps * b, variables, d)  # noqa: E731
    fd = (float(r1(shift(1.0), x)) - float(r1(shift(-1.0), x))) / (2 * eps)
    np.testing.assert_allclose(dot, fd, rtol=1e-6)
