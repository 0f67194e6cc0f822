"""Losses of the CASRGAN recipe. Discriminators return logits; D(x) = sigmoid(logits)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def l1(x, y):
  return jnp.mean(jnp.abs(x - y))


def mse(x, y):
  return jnp.mean(jnp.square(x - y))


PIXEL_LOSSES = {'l1': l1, 'mse': mse}


def pixel_loss(name: str):
  if name not in PIXEL_LOSSES:
    raise ValueError(f'unknown pixel loss {name!r}; known: {", ".join(sorted(PIXEL_LOSSES))}')
  return PIXEL_LOSSES[name]


def grey_to_rgb(x):
  """The reference repeats the grey channel three times before VGG (and before its L1)."""
  return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def generator_adversarial(fake_logits, reduction: str = 'sum'):
  """-log D(SR) = softplus(-logits); the reference sums it over the batch."""
  per_sample = jax.nn.softplus(-fake_logits)
  if reduction == 'sum':
    return jnp.sum(per_sample)
  if reduction == 'mean':
    return jnp.mean(per_sample)
  raise ValueError(f'unknown adversarial_reduction {reduction!r}; known: mean, sum')


def discriminator_bce(real_logits, fake_logits):
  """BCE(D(HR), 1) + BCE(D(SR), 0), each a batch mean, in the stable logit form."""
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
