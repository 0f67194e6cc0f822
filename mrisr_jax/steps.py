"""Pure train and eval steps: (state, batch, vgg_params) -> (state, metrics). train.py jits them on the mesh.

A stage's generator loss is the weighted sum in `LossSpec`:

  pixel_weight * pixel(SR, HR) + perceptual_weight * sum_k w_k crit(vgg_k(SR), vgg_k(HR))
  + style_weight * sum_k w_k |gram(vgg_k(SR)) - gram(vgg_k(HR))|^2 + adversarial_weight * gan.g(D(HR), D(SR))

Generators and discriminators may carry state besides params (BatchNorm running statistics,
spectral-norm vectors) in `batch_stats`; training calls update it, as PyTorch's train() mode does.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from mrisr_jax import losses
from mrisr_jax.train_state import TrainState

# vgg(params, rgb_images) -> tuple of tapped feature maps
VggFn = Callable[[Any, jax.Array], tuple]


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """The generator loss of one stage (static: hashable, part of the jitted function)."""
  pixel: str = 'l1'
  pixel_weight: float = 1.0
  perceptual_weight: float = 0.0
  perceptual_layer_weights: tuple[float, ...] = ()  # one per perceptual tap
  perceptual_criterion: str = 'mse'
  style_weight: float = 0.0
  style_layer_weights: tuple[float, ...] = ()  # one per style tap (taps after the perceptual ones)
  adversarial_weight: float = 0.0
  gan: str = 'bce_sum'

  @property
  def uses_vgg(self) -> bool:
    return self.perceptual_weight > 0 or self.style_weight > 0


def _step_rng(state: TrainState):
  return jax.random.fold_in(state.rng, state.step)


def apply_model(model: nn.Module, params, batch_stats, x, *, train: bool, rngs=None):
  """Runs a model with or without mutable state; returns (output, new batch_stats)."""
  variables = {'params': params}
  if batch_stats:
    variables['batch_stats'] = batch_stats
  if train and batch_stats:
    out, updates = model.apply(variables, x, train=True, rngs=rngs, mutable=['batch_stats'])
    return out, updates['batch_stats']
  return model.apply(variables, x, train=train, rngs=rngs), batch_stats


def _content_terms(sr, hr, hr_feats, vgg_params, vgg: VggFn | None, spec: LossSpec) -> dict:
  """Pixel, perceptual and style terms (unweighted) of the generator loss."""
  terms = {'pixel': losses.pixel_loss(spec.pixel)(sr, hr)}
  if spec.uses_vgg:
    sr_feats = vgg(vgg_params, losses.grey_to_rgb(sr))
    n_p = len(spec.perceptual_layer_weights)
    if spec.perceptual_weight > 0:
      terms['perceptual'] = losses.perceptual(sr_feats[:n_p], hr_feats[:n_p], spec.perceptual_layer_weights,
                                              spec.perceptual_criterion)
    if spec.style_weight > 0:
      terms['style'] = losses.style(sr_feats[n_p:], hr_feats[n_p:], spec.style_layer_weights)
  return terms


def _weighted(terms: dict, spec: LossSpec):
  weights = {'pixel': spec.pixel_weight, 'perceptual': spec.perceptual_weight, 'style': spec.style_weight,
             'adversarial': spec.adversarial_weight}
  return sum(weights[k] * v for k, v in terms.items())


def _hr_features(hr, vgg_params, vgg: VggFn | None, spec: LossSpec):
  if not spec.uses_vgg:
    return None
  return jax.lax.stop_gradient(vgg(vgg_params, losses.grey_to_rgb(hr)))


def _ema(state: TrainState, g_params: Any, decay: float) -> Any:
  """ema <- decay * ema + (1 - decay) * params after each G update; {} when EMA is off."""
  if not state.g_ema_params:
    return state.g_ema_params
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.g_ema_params, g_params)


def generator_step(state: TrainState, batch: dict, vgg_params: Any = None, *, g_model: nn.Module,
                   g_tx: optax.GradientTransformation, loss: LossSpec = LossSpec(),
                   vgg: VggFn | None = None, ema_decay: float = 0.999) -> tuple[TrainState, dict]:
  """One generator update on the content loss (no discriminator): pre-training and fine-tuning stages."""
  rngs = {'dropout': _step_rng(state)}
  hr_feats = _hr_features(batch['hr'], vgg_params, vgg, loss)

  def loss_fn(params):
    sr, g_stats = apply_model(g_model, params, state.g_batch_stats, batch['lr'], train=True, rngs=rngs)
    terms = _content_terms(sr, batch['hr'], hr_feats, vgg_params, vgg, loss)
    return _weighted(terms, loss), (g_stats, terms)

  (total, (g_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
  updates, g_opt_state = g_tx.update(grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)
  new_state = state.replace(step=state.step + 1, g_params=g_params, g_batch_stats=g_stats,
                            g_opt_state=g_opt_state, g_ema_params=_ema(state, g_params, ema_decay))
  return new_state, {'loss_g': total, **terms, 'grad_norm_g': optax.tree.norm(grads)}


def gan_step(state: TrainState, batch: dict, vgg_params: Any = None, *, g_model: nn.Module,
             d_model: nn.Module, g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation,
             loss: LossSpec, vgg: VggFn | None = None, ema_decay: float = 0.999) -> tuple[TrainState, dict]:
  """One G step (D scores SR), then one D step on SR.detach() and HR, as the CASRGAN reference.

  D runs in training mode throughout (PyTorch's model.train()): every D forward normalises with
  its batch statistics and updates its running state, in the reference's order.
  """
  rngs = {'dropout': _step_rng(state)}
  lr, hr = batch['lr'], batch['hr']
  gan = losses.gan_loss(loss.gan)
  hr_feats = _hr_features(hr, vgg_params, vgg, loss)

  def run_d(d_params, d_stats, x):
    return apply_model(d_model, d_params, d_stats, x, train=True)

  def g_loss_fn(g_params):
    sr, g_stats = apply_model(g_model, g_params, state.g_batch_stats, lr, train=True, rngs=rngs)
    fake_logits, d_stats = run_d(state.d_params, state.d_batch_stats, sr)
    real_logits = None
    if gan.g_needs_real:
      real_logits, d_stats = run_d(state.d_params, d_stats, hr)
      real_logits = jax.lax.stop_gradient(real_logits)
    terms = _content_terms(sr, hr, hr_feats, vgg_params, vgg, loss)
    terms['adversarial'] = gan.g(real_logits, fake_logits)
    return _weighted(terms, loss), (sr, g_stats, d_stats, terms)

  (loss_g, (sr, g_stats, d_stats, g_terms)), g_grads = jax.value_and_grad(
      g_loss_fn, has_aux=True)(state.g_params)
  g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)
  sr = jax.lax.stop_gradient(sr)

  def d_loss_fn(d_params):
    fake_logits, stats = run_d(d_params, d_stats, sr)
    real_logits, stats = run_d(d_params, stats, hr)
    return gan.d(real_logits, fake_logits), (stats, {'d_real': jnp.mean(jax.nn.sigmoid(real_logits)),
                                                     'd_fake': jnp.mean(jax.nn.sigmoid(fake_logits))})

  (loss_d, (d_stats, d_terms)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state.d_params)
  d_updates, d_opt_state = d_tx.update(d_grads, state.d_opt_state, state.d_params)
  d_params = optax.apply_updates(state.d_params, d_updates)

  new_state = state.replace(step=state.step + 1, g_params=g_params, g_batch_stats=g_stats,
                            g_opt_state=g_opt_state, d_params=d_params, d_opt_state=d_opt_state,
                            d_batch_stats=d_stats, g_ema_params=_ema(state, g_params, ema_decay))
  metrics = {'loss_g': loss_g, 'loss_d': loss_d, **g_terms, **d_terms,
             'grad_norm_g': optax.tree.norm(g_grads), 'grad_norm_d': optax.tree.norm(d_grads)}
  return new_state, metrics


def predict(g_vars: Any, x: jax.Array, *, g_model: nn.Module) -> jax.Array:
  """Eval-mode forward; g_vars = {'params': ..., ['batch_stats': ...]} (running statistics)."""
  return g_model.apply(g_vars, x, train=False)


def generator_variables(state: TrainState) -> dict:
  """What `predict` needs from the state: the EMA generator when the run keeps one (as BasicSR
  validates net_g_ema), else the trained parameters."""
  out = {'params': state.g_ema_params or state.g_params}
  if state.g_batch_stats:
    out['batch_stats'] = state.g_batch_stats
  return out
