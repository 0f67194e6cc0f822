"""Losses for SR GANs: pixel, perceptual/style on VGG feature tuples, and GAN losses.

Discriminators return logits; D(x) = sigmoid(logits). GAN losses are written on logits with
softplus (sp): -log D(x) = sp(-x) and -log(1 - D(x)) = sp(x), which stay finite for any logit.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from mrisr_jax import registry


def l1(x, y):
  """mean |x - y|."""
  return jnp.mean(jnp.abs(x - y))


def mse(x, y):
  """mean (x - y)^2."""
  return jnp.mean(jnp.square(x - y))


def charbonnier(x, y, eps: float = 1e-3):
  """mean sqrt((x - y)^2 + eps^2): a smooth L1 whose gradient is defined at x == y."""
  return jnp.mean(jnp.sqrt(jnp.square(x - y) + eps * eps))


PIXEL_LOSSES = {'l1': l1, 'mse': mse, 'charbonnier': charbonnier}


def pixel_loss(name: str):
  return registry.lookup(PIXEL_LOSSES, 'pixel loss', name)


def grey_to_rgb(x):
  """The reference repeats the grey channel three times before VGG (and before its L1)."""
  return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


# --- Feature losses (feature tuples as `VGGFeatures(taps=...)` returns them) ---

PERCEPTUAL_CRITERIA = {'mse': mse, 'l1': l1}


def _check_same_length(sr_feats, hr_feats, weights):
  if not len(sr_feats) == len(hr_feats) == len(weights):
    raise ValueError(
      f'need one weight per feature map: got {len(sr_feats)} SR, {len(hr_feats)} HR '
      f'feature maps and {len(weights)} weights'
    )


def perceptual(
  sr_feats: Sequence[jax.Array], hr_feats: Sequence[jax.Array], weights: Sequence[float], criterion: str = 'mse'
):
  """sum_k w_k * criterion(sr_k, hr_k), criterion 'mse' | 'l1' (each a mean over its map)."""
  fn = registry.lookup(PERCEPTUAL_CRITERIA, 'perceptual criterion', criterion)
  _check_same_length(sr_feats, hr_feats, weights)
  return sum(w * fn(s, h) for s, h, w in zip(sr_feats, hr_feats, weights))


def gram(f: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, C, C) = f^T f / (H * W * C) (Johnson et al.), accumulated in float32."""
  b, h, w, c = f.shape
  f = f.astype(jnp.float32).reshape(b, h * w, c)
  return jnp.einsum('bnc,bnd->bcd', f, f) / (h * w * c)


def style(sr_feats: Sequence[jax.Array], hr_feats: Sequence[jax.Array], weights: Sequence[float]):
  """sum_k w_k * mean((gram(sr_k) - gram(hr_k))^2)."""
  _check_same_length(sr_feats, hr_feats, weights)
  return sum(w * mse(gram(s), gram(h)) for s, h, w in zip(sr_feats, hr_feats, weights))


# --- GAN losses on logits: r = D's logits on real (HR), f = on fake (SR) ---


class GanLoss(NamedTuple):
  """g(r, f) and d(r, f) give scalars; g ignores r (callers may pass None) unless g_needs_real.
  g_sums_batch: g is a sum over the batch, not a mean (gradient accumulation scales it by the number
  of micro-batches so that it stays the whole batch's sum)."""

  g: Callable[[jax.Array | None, jax.Array], jax.Array]
  d: Callable[[jax.Array, jax.Array], jax.Array]
  g_needs_real: bool
  g_sums_batch: bool = False


def _bce_d(r, f):
  """BCE(D(r), 1) + BCE(D(f), 0) = mean sp(-r) + mean sp(f)."""
  return jnp.mean(jax.nn.softplus(-r)) + jnp.mean(jax.nn.softplus(f))


def _bce_sum_g(r, f):
  """sum_batch -log D(f) = sum sp(-f), the CASRGAN reference's sum over the batch."""
  del r
  return jnp.sum(jax.nn.softplus(-f))


def _nonsaturating_g(r, f):
  """mean -log D(f) = mean sp(-f)."""
  del r
  return jnp.mean(jax.nn.softplus(-f))


def _minimax_g(r, f):
  """mean log(1 - D(f)) = -mean sp(f) (Goodfellow et al.'s saturating form)."""
  del r
  return -jnp.mean(jax.nn.softplus(f))


def _lsgan_d(r, f):
  """0.5 mean (r - 1)^2 + 0.5 mean f^2 on the raw outputs (Mao et al.)."""
  return 0.5 * jnp.mean(jnp.square(r - 1.0)) + 0.5 * jnp.mean(jnp.square(f))


def _lsgan_g(r, f):
  """0.5 mean (f - 1)^2."""
  del r
  return 0.5 * jnp.mean(jnp.square(f - 1.0))


def _hinge_d(r, f):
  """mean relu(1 - r) + mean relu(1 + f)."""
  return jnp.mean(jax.nn.relu(1.0 - r)) + jnp.mean(jax.nn.relu(1.0 + f))


def _hinge_g(r, f):
  """-mean f."""
  del r
  return -jnp.mean(f)


def _bce_logits(logits, label: float):
  """Mean binary cross-entropy of sigmoid(logits) against a constant label."""
  return jnp.mean(label * jax.nn.softplus(-logits) + (1.0 - label) * jax.nn.softplus(logits))


def _ragan_d(r, f):
  """(BCE(r - mean f, 1) + BCE(f - mean r, 0)) / 2; gradients flow through both means."""
  return 0.5 * (_bce_logits(r - jnp.mean(f), 1.0) + _bce_logits(f - jnp.mean(r), 0.0))


def _ragan_g(r, f):
  """(BCE(r - mean f, 0) + BCE(f - mean r, 1)) / 2, r held constant (ESRGAN detaches it)."""
  r = jax.lax.stop_gradient(r)
  return 0.5 * (_bce_logits(r - jnp.mean(f), 0.0) + _bce_logits(f - jnp.mean(r), 1.0))


GAN_LOSSES: dict[str, GanLoss] = {
  'bce_sum': GanLoss(_bce_sum_g, _bce_d, g_needs_real=False, g_sums_batch=True),
  'nonsaturating': GanLoss(_nonsaturating_g, _bce_d, g_needs_real=False),
  'minimax': GanLoss(_minimax_g, _bce_d, g_needs_real=False),
  'lsgan': GanLoss(_lsgan_g, _lsgan_d, g_needs_real=False),
  'hinge': GanLoss(_hinge_g, _hinge_d, g_needs_real=False),
  'ragan': GanLoss(_ragan_g, _ragan_d, g_needs_real=True),
}


def gan_loss(name: str) -> GanLoss:
  return registry.lookup(GAN_LOSSES, 'GAN loss', name)


def generator_adversarial(fake_logits, reduction: str = 'sum'):
  """-log D(SR) = softplus(-logits); the reference sums it over the batch ('bce_sum')."""
  if reduction == 'sum':
    return _bce_sum_g(None, fake_logits)
  if reduction == 'mean':
    return _nonsaturating_g(None, fake_logits)
  raise ValueError(f'unknown adversarial_reduction {reduction!r}; known: mean, sum')


def discriminator_bce(real_logits, fake_logits):
  """BCE(D(HR), 1) + BCE(D(SR), 0), each a batch mean, in the stable logit form."""
  return _bce_d(real_logits, fake_logits)
