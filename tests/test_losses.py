"""Losses against numpy written out by hand; VGG taps, layer names and vgg16 weight loading."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrisr_jax import losses
from mrisr_jax.models.vgg import VGGFeatures, init_vgg_params, load_vgg_params, vgg_layer_index, vgg_layer_names
from mrisr_jax.registry import UnknownNameError

pytestmark = pytest.mark.unit

R = np.array([-2.0, 0.5, 3.0])  # real logits
F = np.array([1.5, -1.0, 0.25])  # fake logits


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def log_sigmoid(x):
  return np.log(1.0 / (1.0 + np.exp(-x)))


def close(a, b, tol=1e-5):
  np.testing.assert_allclose(float(a), float(b), rtol=tol, atol=tol)


# --- pixel ---


def test_pixel_losses_by_hand():
  x = np.array([[0.0, 0.5], [1.0, 0.2]], np.float32)
  y = np.array([[0.1, 0.5], [0.7, 0.6]], np.float32)
  d = [-0.1, 0.0, 0.3, -0.4]
  close(losses.l1(x, y), (0.1 + 0.0 + 0.3 + 0.4) / 4)
  close(losses.mse(x, y), (0.01 + 0.0 + 0.09 + 0.16) / 4)
  close(losses.charbonnier(x, y), sum(math.sqrt(v * v + 1e-6) for v in d) / 4)
  close(losses.charbonnier(x, y, eps=0.5), sum(math.sqrt(v * v + 0.25) for v in d) / 4)
  # identical inputs: charbonnier bottoms out at eps, with a finite zero gradient
  close(losses.charbonnier(x, x), 1e-3)
  g = jax.grad(losses.charbonnier)(jnp.asarray(x), jnp.asarray(x))
  assert np.all(np.asarray(g) == 0)
  for name, fn in (('l1', losses.l1), ('mse', losses.mse), ('charbonnier', losses.charbonnier)):
    assert losses.pixel_loss(name) is fn
    assert losses.PIXEL_LOSSES[name] is fn


def test_unknown_names_list_the_known_ones():
  with pytest.raises(UnknownNameError) as e:
    losses.pixel_loss('l2')
  for name in ('l1', 'mse', 'charbonnier', "'l2'"):
    assert name in str(e.value)
  with pytest.raises(UnknownNameError) as e:
    losses.gan_loss('wgan')
  for name in ('bce_sum', 'nonsaturating', 'minimax', 'lsgan', 'hinge', 'ragan', "'wgan'"):
    assert name in str(e.value)
  assert issubclass(UnknownNameError, ValueError)  # old callers catch ValueError
  with pytest.raises(UnknownNameError, match='l1'):
    losses.perceptual([np.zeros(2)], [np.zeros(2)], [1.0], criterion='huber')


# --- perceptual / gram / style ---


def test_perceptual_two_layers_by_hand():
  rng = np.random.default_rng(0)
  s1, h1 = rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 4, 4, 3))
  s2, h2 = rng.normal(size=(2, 2, 2, 5)), rng.normal(size=(2, 2, 2, 5))
  w = (0.3, 2.0)
  want_mse = w[0] * ((s1 - h1) ** 2).sum() / s1.size + w[1] * ((s2 - h2) ** 2).sum() / s2.size
  want_l1 = w[0] * np.abs(s1 - h1).sum() / s1.size + w[1] * np.abs(s2 - h2).sum() / s2.size
  f32 = lambda *a: tuple(jnp.asarray(v, jnp.float32) for v in a)
  close(losses.perceptual(f32(s1, s2), f32(h1, h2), w), want_mse)
  close(losses.perceptual(f32(s1, s2), f32(h1, h2), w, criterion='l1'), want_l1)
  with pytest.raises(ValueError, match='one weight per feature map'):
    losses.perceptual(f32(s1, s2), f32(h1, h2), (1.0,))


def _gram_loops(f):
  b, h, w, c = f.shape
  g = np.zeros((b, c, c))
  for n in range(b):
    for i in range(c):
      for j in range(c):
        g[n, i, j] = sum(f[n, y, x, i] * f[n, y, x, j] for y in range(h) for x in range(w))
  return g / (h * w * c)


def test_gram_by_hand():
  # one 1x2 map, 2 channels: pixels (1, 2) and (3, 4); f^T f = [[1+9, 2+12], [2+12, 4+16]]
  f = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
  np.testing.assert_allclose(
    np.asarray(losses.gram(jnp.asarray(f, jnp.float32))), np.array([[[10.0, 14.0], [14.0, 20.0]]]) / 4, rtol=1e-6
  )
  f = np.random.default_rng(1).normal(size=(2, 3, 4, 5))
  g = np.asarray(losses.gram(jnp.asarray(f, jnp.float32)))
  assert g.shape == (2, 5, 5) and g.dtype == np.float32
  np.testing.assert_allclose(g, _gram_loops(f), rtol=1e-5, atol=1e-6)
  # bf16 features still give a float32 gram
  assert losses.gram(jnp.asarray(f, jnp.bfloat16)).dtype == jnp.float32


def test_style_by_hand():
  rng = np.random.default_rng(2)
  s1, h1 = rng.normal(size=(2, 3, 3, 2)), rng.normal(size=(2, 3, 3, 2))
  s2, h2 = rng.normal(size=(2, 2, 2, 4)), rng.normal(size=(2, 2, 2, 4))
  w = (1.5, 0.25)
  d1, d2 = _gram_loops(s1) - _gram_loops(h1), _gram_loops(s2) - _gram_loops(h2)
  want = w[0] * (d1**2).sum() / d1.size + w[1] * (d2**2).sum() / d2.size
  f32 = lambda *a: tuple(jnp.asarray(v, jnp.float32) for v in a)
  close(losses.style(f32(s1, s2), f32(h1, h2), w), want)
  close(losses.style(f32(s1, s2), f32(s1, s2), w), 0.0)


# --- GAN ---


def _bce_loops(logits, label):
  """Mean binary cross-entropy, term by term."""
  terms = [-(label * math.log(sigmoid(z)) + (1 - label) * math.log(1 - sigmoid(z))) for z in logits]
  return sum(terms) / len(terms)


def test_gan_losses_by_hand():
  bce_d = -np.mean(log_sigmoid(R)) - np.mean(np.log(1 - sigmoid(F)))
  want = {  # name: (G, D)
    'bce_sum': (-np.sum(np.log(sigmoid(F))), bce_d),
    'nonsaturating': (-np.mean(np.log(sigmoid(F))), bce_d),
    'minimax': (np.mean(np.log(1 - sigmoid(F))), bce_d),
    'lsgan': (0.5 * np.mean((F - 1) ** 2), 0.5 * np.mean((R - 1) ** 2) + 0.5 * np.mean(F**2)),
    'hinge': (-np.mean(F), np.mean(np.maximum(0, 1 - R)) + np.mean(np.maximum(0, 1 + F))),
  }
  assert set(losses.GAN_LOSSES) == set(want) | {'ragan'}
  r, f = jnp.asarray(R, jnp.float32), jnp.asarray(F, jnp.float32)
  for name, (g_want, d_want) in want.items():
    loss = losses.gan_loss(name)
    assert loss.g_needs_real is False, name
    close(loss.g(None, f), g_want)
    close(loss.g(r, f), g_want)
    close(loss.d(r, f), d_want)
  # the old names are the bce variants
  close(losses.generator_adversarial(f), want['bce_sum'][0])
  close(losses.generator_adversarial(f, 'mean'), want['nonsaturating'][0])
  close(losses.discriminator_bce(r, f), bce_d)
  with pytest.raises(ValueError, match='adversarial_reduction'):
    losses.generator_adversarial(f, 'max')


def test_ragan_element_by_element():
  mean_r, mean_f = sum(R) / 3, sum(F) / 3
  real_rel = [x - mean_f for x in R]  # how much more real than the average fake
  fake_rel = [x - mean_r for x in F]
  d_want = (_bce_loops(real_rel, 1) + _bce_loops(fake_rel, 0)) / 2
  g_want = (_bce_loops(real_rel, 0) + _bce_loops(fake_rel, 1)) / 2
  loss = losses.gan_loss('ragan')
  assert loss.g_needs_real is True
  r, f = jnp.asarray(R, jnp.float32), jnp.asarray(F, jnp.float32)
  close(loss.d(r, f), d_want)
  close(loss.g(r, f), g_want)
  # G treats the real logits as constants (ESRGAN detaches them)
  assert np.all(np.asarray(jax.grad(loss.g, argnums=0)(r, f)) == 0)
  # D's gradient, derived by hand with d sp(x)/dx = sigmoid(x), includes the paths through the means
  n = 3
  grad_r = [0.5 * (-sigmoid(mean_f - x) / n - sum(sigmoid(y - mean_r) for y in F) / n / n) for x in R]
  grad_f = [0.5 * (sum(sigmoid(mean_f - x) for x in R) / n / n + sigmoid(y - mean_r) / n) for y in F]
  got_r, got_f = jax.grad(loss.d, argnums=(0, 1))(r, f)
  np.testing.assert_allclose(np.asarray(got_r), grad_r, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got_f), grad_f, rtol=1e-5, atol=1e-6)


def test_gan_losses_move_the_right_way_and_stay_finite():
  r = jnp.asarray([-1.0, 0.0, 0.5])  # below the LSGAN/hinge real target
  f = jnp.asarray([0.2, 0.5, 0.9])  # above the LSGAN fake target, below 1
  step = 0.1
  for name, loss in losses.GAN_LOSSES.items():
    assert float(loss.d(r + step, f - step)) < float(loss.d(r, f)), name
    assert float(loss.g(r, f + step)) < float(loss.g(r, f)), name
  big = jnp.asarray([-200.0, 0.0, 200.0])
  for name, loss in losses.GAN_LOSSES.items():
    for fn in (loss.g, loss.d):
      value, grads = jax.value_and_grad(fn, argnums=(0, 1))(big, -big)
      assert np.isfinite(float(value)), name
      assert all(np.all(np.isfinite(np.asarray(g))) for g in grads), name


# --- VGG ---


def test_vgg_layer_index():
  assert vgg_layer_index('vgg19', 'conv3_4') == 16
  assert vgg_layer_index('vgg19', 'relu3_4') == 17
  assert vgg_layer_index('vgg19', 'conv1_1') == 0
  assert vgg_layer_index('vgg19', 'pool1') == 4
  assert vgg_layer_index('vgg19', 'relu5_4') == 35
  assert vgg_layer_index('vgg19', 'pool5') == 36
  assert vgg_layer_index('vgg16', 'relu2_2') == 8
  assert vgg_layer_index('vgg16', 'relu5_3') == 29
  assert vgg_layer_index('vgg16', 'pool4') == 23
  assert len(vgg_layer_names('vgg19')) == 37 and len(vgg_layer_names('vgg16')) == 31
  with pytest.raises(UnknownNameError) as e:
    vgg_layer_index('vgg16', 'conv3_4')  # vgg16 has three convs per block from block 3
  assert 'conv3_3' in str(e.value) and 'vgg16' in str(e.value)
  with pytest.raises(UnknownNameError):
    vgg_layer_index('vgg19', 'relu3')
  with pytest.raises(ValueError, match='unknown VGG arch'):
    vgg_layer_index('vgg11', 'conv1_1')


def test_vgg_taps_equal_single_depth_runs():
  taps = (17, 4, 16, 0, 9)  # out of order; relu, pool, conv, conv, pool
  params = init_vgg_params(jax.random.PRNGKey(0), 'vgg19', max(taps))
  model = VGGFeatures('vgg19', taps=taps)
  assert model.depth == 17 and VGGFeatures('vgg19', 5).depth == 5
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3))
  feats = model.apply({'params': params}, x)
  assert isinstance(feats, tuple) and len(feats) == len(taps)
  for t, got in zip(taps, feats):
    sub = {k: v for k, v in params.items() if int(k.split('_')[1]) <= t}
    want = VGGFeatures('vgg19', last_layer=t).apply({'params': sub}, x)
    assert got.shape == want.shape, t
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  assert float(feats[2].min()) < 0 <= float(feats[0].min())  # conv3_4 before, relu3_4 after ReLU
  # the tapped model's params are exactly those of features[:max(taps) + 1]
  init = model.init(jax.random.PRNGKey(2), x)['params']
  assert jax.tree.map(jnp.shape, init) == jax.tree.map(jnp.shape, params)
  with pytest.raises(ValueError, match='out of range'):
    VGGFeatures('vgg16', taps=(3, 31)).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match='out of range'):
    VGGFeatures('vgg16', taps=(-1,)).init(jax.random.PRNGKey(0), x)


VGG16_CFG = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M']


def _conv3x3_numpy(x, w, b):
  """torch Conv2d(k=3, padding=1) on NHWC x with an OIHW weight, as a sum over the 9 offsets."""
  _, h, wd, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros(x.shape[:3] + (w.shape[0],))
  for dy in range(3):
    for dx in range(3):
      out += xp[:, dy : dy + h, dx : dx + wd, :] @ w[:, :, dy, dx].T
  return out + b


def test_vgg16_loads_from_torchvision_layout_npz(tmp_path):
  """A fake torchvision vgg16 state_dict (shapes written out here) loads; convs match numpy."""
  rng = np.random.default_rng(3)
  sd, cin, i = {}, 3, 0
  for v in VGG16_CFG:
    if v == 'M':
      i += 1
      continue
    sd[f'features.{i}.weight'] = (rng.normal(size=(v, cin, 3, 3)) * math.sqrt(2 / (9 * v))).astype(np.float32)
    sd[f'features.{i}.bias'] = (0.1 * rng.normal(size=(v,))).astype(np.float32)
    cin, i = v, i + 2
  assert i == 31
  sd['classifier.0.weight'] = np.zeros((4, 8), np.float32)
  path = str(tmp_path / 'vgg16.npz')
  np.savez(path, **sd)

  taps = tuple(vgg_layer_index('vgg16', n) for n in ('conv1_1', 'relu3_2', 'conv3_3', 'relu5_2', 'conv5_3', 'relu5_3'))
  assert taps == (0, 13, 14, 27, 28, 29)
  model = VGGFeatures('vgg16', taps=taps)
  params = load_vgg_params(path, 'vgg16', model.depth)
  assert len(params) == 13
  x = rng.random((1, 32, 32, 3)).astype(np.float32)
  c11, r32, c33, r52, c53, r53 = (np.asarray(a, np.float64) for a in model.apply({'params': params}, jnp.asarray(x)))
  assert c11.shape == (1, 32, 32, 64) and c33.shape == (1, 8, 8, 256) and c53.shape == (1, 2, 2, 512)
  for got, inp, idx in ((c11, x, 0), (c33, r32, 14), (c53, r52, 28)):
    want = _conv3x3_numpy(inp.astype(np.float64), sd[f'features.{idx}.weight'], sd[f'features.{idx}.bias'])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  np.testing.assert_allclose(r53, np.maximum(c53, 0), atol=1e-6)
