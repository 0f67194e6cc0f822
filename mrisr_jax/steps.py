"""Pure train and eval steps: (state, batch) -> (state, metrics). train.py jits them on the mesh."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from mrisr_jax import losses
from mrisr_jax.train_state import TrainState


def _step_rng(state: TrainState):
  return jax.random.fold_in(state.rng, state.step)


def generator_step(state: TrainState, batch: dict, *, g_model: nn.Module,
                   g_tx: optax.GradientTransformation, pixel_loss: Callable) -> tuple[TrainState, dict]:
  """One generator update on a pixel loss (pre-training and fine-tuning stages)."""
  dropout_rng = _step_rng(state)

  def loss_fn(params):
    sr = g_model.apply({'params': params}, batch['lr'], train=True, rngs={'dropout': dropout_rng})
    return pixel_loss(sr, batch['hr'])

  loss, grads = jax.value_and_grad(loss_fn)(state.g_params)
  updates, g_opt_state = g_tx.update(grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)
  new_state = state.replace(step=state.step + 1, g_params=g_params, g_opt_state=g_opt_state)
  return new_state, {'loss_g': loss, 'pixel': loss, 'grad_norm_g': optax.tree.norm(grads)}


def gan_step(state: TrainState, batch: dict, vgg_params: Any, *, g_model: nn.Module, d_model: nn.Module,
             vgg: Callable[[Any, jax.Array], jax.Array],
             g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation,
             loss_cfg: Any) -> tuple[TrainState, dict]:
  """One G step (D scores SR), then one D step on SR.detach() and HR, as the reference.

  D runs in training mode throughout (PyTorch's model.train()): every D forward normalises with
  its batch statistics and updates the running ones, in the reference's order.
  """
  dropout_rng = _step_rng(state)
  lr, hr = batch['lr'], batch['hr']
  pixel = losses.pixel_loss(loss_cfg.gan_pixel_loss)
  hr_feats = jax.lax.stop_gradient(vgg(vgg_params, losses.grey_to_rgb(hr)))

  def run_d(d_params, batch_stats, x):
    logits, new_vars = d_model.apply({'params': d_params, 'batch_stats': batch_stats}, x,
                                     train=True, mutable=['batch_stats'])
    return logits, new_vars['batch_stats']

  def g_loss_fn(g_params):
    sr = g_model.apply({'params': g_params}, lr, train=True, rngs={'dropout': dropout_rng})
    fake_logits, batch_stats = run_d(state.d_params, state.d_batch_stats, sr)
    perceptual = losses.mse(vgg(vgg_params, losses.grey_to_rgb(sr)), hr_feats)
    adversarial = losses.generator_adversarial(fake_logits, loss_cfg.adversarial_reduction)
    pix = pixel(sr, hr)  # equal to the reference's L1 on the 3x repeated channel
    total = (loss_cfg.perceptual_weight * perceptual + loss_cfg.adversarial_weight * adversarial
             + loss_cfg.pixel_weight * pix)
    return total, (sr, batch_stats, {'perceptual': perceptual, 'adversarial': adversarial, 'pixel': pix})

  (loss_g, (sr, batch_stats, g_terms)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(state.g_params)
  g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)
  sr = jax.lax.stop_gradient(sr)

  def d_loss_fn(d_params):
    fake_logits, stats = run_d(d_params, batch_stats, sr)
    real_logits, stats = run_d(d_params, stats, hr)
    loss = losses.discriminator_bce(real_logits, fake_logits)
    return loss, (stats, {'d_real': jnp.mean(jax.nn.sigmoid(real_logits)),
                          'd_fake': jnp.mean(jax.nn.sigmoid(fake_logits))})

  (loss_d, (batch_stats, d_terms)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state.d_params)
  d_updates, d_opt_state = d_tx.update(d_grads, state.d_opt_state, state.d_params)
  d_params = optax.apply_updates(state.d_params, d_updates)

  new_state = state.replace(step=state.step + 1, g_params=g_params, g_opt_state=g_opt_state,
                            d_params=d_params, d_opt_state=d_opt_state, d_batch_stats=batch_stats)
  metrics = {'loss_g': loss_g, 'loss_d': loss_d, **g_terms, **d_terms,
             'grad_norm_g': optax.tree.norm(g_grads), 'grad_norm_d': optax.tree.norm(d_grads)}
  return new_state, metrics


def predict(g_params: Any, lr: jax.Array, *, g_model: nn.Module) -> jax.Array:
  return g_model.apply({'params': g_params}, lr, train=False)
