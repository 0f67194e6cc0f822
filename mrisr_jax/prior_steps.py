"""TransMRSR stage 1: the pure StyleSwin GAN step that trains the generative prior.

One step is StyleSwin's iteration (its train_styleswin.py, default flags):

  D:  softplus(-D(x)) + softplus(D(G(z))), both batch means; D's gradient clipped to global norm 5
  R1: every `r1_every` steps, a second D update on r1_gamma / 2 * mean_b |grad_x D(x)|^2 * r1_every
      (lazy regularisation; D's Adam is set up for it: lr * c, beta2 ** c with c = r1_every / (r1_every + 1))
  G:  softplus(-D(G(z))) with a fresh z; then g_ema <- decay * g_ema + (1 - decay) * g

z ~ N(0, I) per step from fold_in(state.rng, step), so a resumed run draws the same latents. The real
images are in the prior's image space (`to_prior_space`). There is no style mixing and no path-length
penalty (StyleSwin sets g_reg_every to 1e7).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from mrisr_jax.train_state import TrainState

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class PriorHparams:
  """The stage-1 recipe (static: part of the jitted step)."""

  style_dim: int = 512
  r1_gamma: float = 10.0
  r1_every: int = 16
  d_clip: float = 5.0
  ema_decay: float = 0.5 ** (32 / 10000)


def to_prior_space(x: jax.Array, channels: int) -> jax.Array:
  """[0, 1] grey (B, H, W, 1) -> the prior's image space: 2x - 1 with one channel, or the public code's
  ImageNet-normalised grey repeated over 3 channels."""
  if channels == 1:
    return 2.0 * x - 1.0
  mean, std = jnp.asarray(IMAGENET_MEAN), jnp.asarray(IMAGENET_STD)
  return (jnp.repeat(x, 3, axis=-1) - mean) / std


def from_prior_space(y: jax.Array) -> jax.Array:
  """The inverse of `to_prior_space` back to [0, 1] grey (3 channels are averaged), for images and grids."""
  if y.shape[-1] == 1:
    return (y + 1.0) / 2.0
  mean, std = jnp.asarray(IMAGENET_MEAN), jnp.asarray(IMAGENET_STD)
  return jnp.mean(y * std + mean, axis=-1, keepdims=True)


def make_optimizers(lr: float, r1_every: int, d_clip: float) -> tuple[optax.GradientTransformation, ...]:
  """StyleSwin's Adam pair: G lr, betas (0, 0.99); D corrected for lazy R1 and clipped to norm d_clip."""
  c = r1_every / (r1_every + 1)
  g_tx = optax.adam(lr, b1=0.0, b2=0.99, eps=1e-8)
  d_tx = optax.chain(optax.clip_by_global_norm(d_clip), optax.adam(lr * c, b1=0.0, b2=0.99**c, eps=1e-8))
  return g_tx, d_tx


def r1_penalty(d_fn, x: jax.Array) -> jax.Array:
  """mean over the batch of |grad_x D(x)|^2 (the sum of D's logits is differentiated, one pass)."""
  grads = jax.grad(lambda x: jnp.sum(d_fn(x)))(x)
  return jnp.mean(jnp.sum(jnp.square(grads).reshape(grads.shape[0], -1), axis=1))


def prior_step(
  state: TrainState,
  batch: dict,
  *,
  g_model: nn.Module,
  d_model: nn.Module,
  g_tx: optax.GradientTransformation,
  d_tx: optax.GradientTransformation,
  hp: PriorHparams,
) -> tuple[TrainState, dict]:
  """One StyleSwin iteration on `batch['hr']` (B, S, S, C), already in the prior's image space."""
  real = batch['hr']
  b = real.shape[0]
  key = jax.random.fold_in(state.rng, state.step)
  z_d, z_g = jax.random.normal(key, (2, b, hp.style_dim))

  def generate(g_params, z):
    return g_model.apply({'params': g_params}, z)

  def d_apply(d_params, x):
    return d_model.apply({'params': d_params}, x).astype(jnp.float32)

  # D step on a detached fake
  fake = jax.lax.stop_gradient(generate(state.g_params, z_d))

  def d_loss_fn(d_params):
    real_logits, fake_logits = d_apply(d_params, real), d_apply(d_params, fake)
    loss = jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
    return loss, (jnp.mean(real_logits), jnp.mean(fake_logits))

  (loss_d, (real_score, fake_score)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state.d_params)
  updates, d_opt_state = d_tx.update(d_grads, state.d_opt_state, state.d_params)
  d_params = optax.apply_updates(state.d_params, updates)

  # lazy R1: its own D update, only on the steps that regularise (lax.cond runs one branch)
  def regularise(args):
    d_params, d_opt_state = args
    r1, grads = jax.value_and_grad(lambda p: r1_penalty(lambda x: d_apply(p, x), real))(d_params)
    grads = jax.tree.map(lambda g: g * (hp.r1_gamma / 2 * hp.r1_every), grads)
    updates, d_opt_state = d_tx.update(grads, d_opt_state, d_params)
    return optax.apply_updates(d_params, updates), d_opt_state, r1

  def skip(args):
    return args[0], args[1], jnp.zeros((), jnp.float32)

  d_params, d_opt_state, r1 = jax.lax.cond(state.step % hp.r1_every == 0, regularise, skip, (d_params, d_opt_state))

  # G step against the updated D
  def g_loss_fn(g_params):
    return jnp.mean(jax.nn.softplus(-d_apply(d_params, generate(g_params, z_g))))

  loss_g, g_grads = jax.value_and_grad(g_loss_fn)(state.g_params)
  updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)
  ema = jax.tree.map(lambda e, p: hp.ema_decay * e + (1.0 - hp.ema_decay) * p, state.g_ema_params, g_params)
  new_state = state.replace(
    step=state.step + 1,
    g_params=g_params,
    d_params=d_params,
    g_opt_state=g_opt_state,
    d_opt_state=d_opt_state,
    g_ema_params=ema,
  )
  metrics = {
    'loss_g': loss_g,
    'loss_d': loss_d,
    'r1': r1,
    'real_score': real_score,
    'fake_score': fake_score,
    'grad_norm_g': optax.tree.norm(g_grads),
    'grad_norm_d': optax.tree.norm(d_grads),
  }
  return new_state, metrics


def init_state(rng: jax.Array, *, g_model, d_model, g_tx, d_tx, size: int, channels: int, style_dim: int) -> TrainState:
  """A fresh stage-1 state: G (with its EMA copy) from the first key, D from the second."""
  g_rng, d_rng = jax.random.split(rng)
  g_params = g_model.init({'params': g_rng}, jnp.zeros((1, style_dim)))['params']
  d_params = d_model.init({'params': d_rng}, jnp.zeros((1, size, size, channels)))['params']
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    g_params=g_params,
    g_batch_stats={},
    d_params=d_params,
    d_batch_stats={},
    g_opt_state=g_tx.init(g_params),
    d_opt_state=d_tx.init(d_params),
    rng=jax.random.fold_in(rng, 1),
    g_ema_params=g_params,
  )


def sample(g_ema_params, z: jax.Array, *, g_model: nn.Module) -> jax.Array:
  """Images from the EMA generator, back in [0, 1] grey (B, S, S, 1)."""
  return jnp.clip(from_prior_space(g_model.apply({'params': g_ema_params}, z)), 0.0, 1.0)
