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
      terms['perceptual'] = losses.perceptual(
        sr_feats[:n_p], hr_feats[:n_p], spec.perceptual_layer_weights, spec.perceptual_criterion
      )
    if spec.style_weight > 0:
      terms['style'] = losses.style(sr_feats[n_p:], hr_feats[n_p:], spec.style_layer_weights)
  return terms


def _weighted(terms: dict, spec: LossSpec):
  weights = {
    'pixel': spec.pixel_weight,
    'perceptual': spec.perceptual_weight,
    'style': spec.style_weight,
    'adversarial': spec.adversarial_weight,
  }
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


def _split(tree: Any, k: int) -> Any:
  """(B, ...) -> (k, B // k, ...): micro-batch j = rows j, j + k, j + 2k, ... The batch is sharded on
  axis 0, so each device's rows split evenly over the micro-batches (no rows move between devices)
  when its share is a multiple of k. k == 1: the batch as it is."""
  if k == 1:
    return tree
  return jax.tree.map(lambda x: jnp.moveaxis(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 1, 0), tree)


def _accumulate(grad_fn: Callable, params: Any, carry: Any, xs: Any, k: int, rng: jax.Array):
  """Mean gradients over k micro-batches: grad_fn(params, carry, micro_batch, rng) -> (grads, carry, aux).

  k == 1: one call on the whole batch `xs` with `rng` (the plain step, unchanged). k > 1: `xs` is
  `_split`; a scan runs the micro-batches in order, threading `carry` (BatchNorm statistics), with the
  dropout key folded with the micro-batch index, summing the gradients in float32. Returns
  (mean grads, last carry, aux), aux stacked on a leading k axis when k > 1.
  """
  if k == 1:
    return grad_fn(params, carry, xs, rng)

  def body(c, x):
    acc, carry = c
    j, micro = x
    grads, carry, aux = grad_fn(params, carry, micro, jax.random.fold_in(rng, j))
    return (jax.tree.map(jnp.add, acc, grads), carry), aux

  zeros = jax.tree.map(jnp.zeros_like, params)
  (acc, carry), aux = jax.lax.scan(body, (zeros, carry), (jnp.arange(k), xs))
  return jax.tree.map(lambda g: g / k, acc), carry, aux


def _mean_over_micro(metrics: dict, k: int) -> dict:
  return metrics if k == 1 else jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)


def _finite(*scalars) -> jax.Array:
  """Whether the losses and gradient norms are all finite. A gradient norm is not finite when any
  gradient is NaN or inf, and also when one is so large that its square overflows float32 (> 1.8e19),
  which would poison Adam's second moment for good; the norms are metrics anyway, so this costs nothing."""
  return jnp.all(jnp.isfinite(jnp.stack(scalars)))


def _unless_skipped(ok: jax.Array, old: TrainState, new: TrainState) -> TrainState:
  """`new` when ok, else `old` with only the step advanced: a non-finite step consumes its batch and
  leaves params, optimizer states, batch stats and EMA as they were (a select, no host round trip)."""
  kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  return kept.replace(step=new.step)


def generator_step(
  state: TrainState,
  batch: dict,
  vgg_params: Any = None,
  *,
  g_model: nn.Module,
  g_tx: optax.GradientTransformation,
  loss: LossSpec = LossSpec(),
  vgg: VggFn | None = None,
  ema_decay: float = 0.999,
  grad_accum_steps: int = 1,
) -> tuple[TrainState, dict]:
  """One generator update on the content loss (no discriminator): pre-training and fine-tuning stages.

  grad_accum_steps = k > 1: the batch runs as k micro-batches (`_split`) whose gradients are averaged
  before one optimizer update: the update of the whole batch for generators without BatchNorm (with
  BatchNorm, each micro-batch is normalised with its own statistics). Metrics are micro-batch means.
  A step whose loss or gradients are not finite changes nothing but the step (metrics['skipped'] = 1).
  """
  k = grad_accum_steps

  def grad_fn(params, g_stats, micro, rng):
    hr_feats = _hr_features(micro['hr'], vgg_params, vgg, loss)

    def loss_fn(params):
      sr, stats = apply_model(g_model, params, g_stats, micro['lr'], train=True, rngs={'dropout': rng})
      # losses in float32 whatever the compute dtype (a no-op in float32)
      terms = _content_terms(sr.astype(jnp.float32), micro['hr'], hr_feats, vgg_params, vgg, loss)
      return _weighted(terms, loss), (stats, terms)

    (total, (stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, stats, {'loss_g': total, **terms}

  grads, g_stats, metrics = _accumulate(
    grad_fn, state.g_params, state.g_batch_stats, _split(batch, k), k, _step_rng(state)
  )
  metrics = _mean_over_micro(metrics, k)
  updates, g_opt_state = g_tx.update(grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)
  new_state = state.replace(
    step=state.step + 1,
    g_params=g_params,
    g_batch_stats=g_stats,
    g_opt_state=g_opt_state,
    g_ema_params=_ema(state, g_params, ema_decay),
  )
  grad_norm = optax.tree.norm(grads)
  ok = _finite(metrics['loss_g'], grad_norm)
  return _unless_skipped(ok, state, new_state), {
    **metrics,
    'grad_norm_g': grad_norm,
    'skipped': 1.0 - ok.astype(jnp.float32),
  }


def gan_step(
  state: TrainState,
  batch: dict,
  vgg_params: Any = None,
  *,
  g_model: nn.Module,
  d_model: nn.Module,
  g_tx: optax.GradientTransformation,
  d_tx: optax.GradientTransformation,
  loss: LossSpec,
  vgg: VggFn | None = None,
  ema_decay: float = 0.999,
  grad_accum_steps: int = 1,
) -> tuple[TrainState, dict]:
  """One G step (D scores SR), then one D step on SR.detach() and HR, as the CASRGAN reference.

  D runs in training mode throughout (PyTorch's model.train()): every D forward normalises with
  its batch statistics and updates its running state, in the reference's order.

  grad_accum_steps = k > 1: the batch runs as k micro-batches (`_split`). The G phase scans them with D
  fixed, summing G's gradients (D's running state threaded through the micro-batches in order) and
  keeping each micro-batch's SR; one G update; then the D phase scans the same micro-batches with those
  SRs, summing D's gradients; one D update. This is the whole-batch step for a G without BatchNorm and
  a D without BatchNorm and batch-coupled losses; otherwise it differs as follows: D's BatchNorm (CASRGAN
  D) normalises with micro-batch statistics, its running statistics take k updates per step, and a
  spectral norm (FA-GAN D) runs its power iteration once per D call (k times as many); 'ragan' compares
  each logit with its micro-batch's mean logit. A batch-summed G term ('bce_sum') counts k times each
  micro-batch's sum, so that it stays the sum over the whole batch. Metrics are micro-batch means.

  A step whose G or D loss or gradients are not finite changes nothing but the step (G and D both
  kept; metrics['skipped'] = 1).
  """
  k = grad_accum_steps
  gan = losses.gan_loss(loss.gan)
  adv_scale = k if gan.g_sums_batch and k > 1 else 1

  def run_d(d_params, d_stats, x):
    logits, stats = apply_model(d_model, d_params, d_stats, x, train=True)
    return logits.astype(jnp.float32), stats

  def g_grad_fn(g_params, stats, micro, rng):
    g_stats, d_stats = stats
    lr, hr = micro['lr'], micro['hr']
    hr_feats = _hr_features(hr, vgg_params, vgg, loss)

    def g_loss_fn(g_params):
      sr, new_g_stats = apply_model(g_model, g_params, g_stats, lr, train=True, rngs={'dropout': rng})
      sr = sr.astype(jnp.float32)  # D and the losses see float32 (a no-op in float32)
      fake_logits, new_d_stats = run_d(state.d_params, d_stats, sr)
      real_logits = None
      if gan.g_needs_real:
        real_logits, new_d_stats = run_d(state.d_params, new_d_stats, hr)
        real_logits = jax.lax.stop_gradient(real_logits)
      terms = _content_terms(sr, hr, hr_feats, vgg_params, vgg, loss)
      terms['adversarial'] = gan.g(real_logits, fake_logits)
      if adv_scale != 1:
        terms['adversarial'] = terms['adversarial'] * adv_scale
      return _weighted(terms, loss), (sr, new_g_stats, new_d_stats, terms)

    (loss_g, (sr, g_stats, d_stats, terms)), grads = jax.value_and_grad(g_loss_fn, has_aux=True)(g_params)
    return grads, (g_stats, d_stats), (jax.lax.stop_gradient(sr), {'loss_g': loss_g, **terms})

  micro = _split(batch, k)
  g_grads, (g_stats, d_stats), (sr, g_terms) = _accumulate(
    g_grad_fn, state.g_params, (state.g_batch_stats, state.d_batch_stats), micro, k, _step_rng(state)
  )
  g_terms = _mean_over_micro(g_terms, k)
  loss_g = g_terms.pop('loss_g')
  g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)

  def d_grad_fn(d_params, d_stats, micro, rng):
    del rng

    def d_loss_fn(d_params):
      fake_logits, stats = run_d(d_params, d_stats, micro['sr'])
      real_logits, stats = run_d(d_params, stats, micro['hr'])
      return gan.d(real_logits, fake_logits), (
        stats,
        {'d_real': jnp.mean(jax.nn.sigmoid(real_logits)), 'd_fake': jnp.mean(jax.nn.sigmoid(fake_logits))},
      )

    (loss_d, (stats, terms)), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d_params)
    return grads, stats, {'loss_d': loss_d, **terms}

  d_grads, d_stats, d_terms = _accumulate(
    d_grad_fn, state.d_params, d_stats, {'sr': sr, 'hr': micro['hr']}, k, _step_rng(state)
  )
  d_terms = _mean_over_micro(d_terms, k)
  loss_d = d_terms.pop('loss_d')
  d_updates, d_opt_state = d_tx.update(d_grads, state.d_opt_state, state.d_params)
  d_params = optax.apply_updates(state.d_params, d_updates)

  new_state = state.replace(
    step=state.step + 1,
    g_params=g_params,
    g_batch_stats=g_stats,
    g_opt_state=g_opt_state,
    d_params=d_params,
    d_opt_state=d_opt_state,
    d_batch_stats=d_stats,
    g_ema_params=_ema(state, g_params, ema_decay),
  )
  norm_g, norm_d = optax.tree.norm(g_grads), optax.tree.norm(d_grads)
  ok = _finite(loss_g, loss_d, norm_g, norm_d)
  metrics = {
    'loss_g': loss_g,
    'loss_d': loss_d,
    **g_terms,
    **d_terms,
    'grad_norm_g': norm_g,
    'grad_norm_d': norm_d,
    'skipped': 1.0 - ok.astype(jnp.float32),
  }
  return _unless_skipped(ok, state, new_state), metrics


def predict(g_vars: Any, x: jax.Array, *, g_model: nn.Module) -> jax.Array:
  """Eval-mode forward; g_vars = {'params': ..., ['batch_stats': ...]} (running statistics). Float32 out
  whatever the compute dtype."""
  return g_model.apply(g_vars, x, train=False).astype(jnp.float32)


def generator_variables(state: TrainState) -> dict:
  """What `predict` needs from the state: the EMA generator when the run keeps one (as BasicSR
  validates net_g_ema), else the trained parameters."""
  out = {'params': state.g_ema_params or state.g_params}
  if state.g_batch_stats:
    out['batch_stats'] = state.g_batch_stats
  return out
