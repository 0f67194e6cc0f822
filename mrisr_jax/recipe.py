"""From a resolved run (spec.RunSpec) to the pure pieces of a run: stages with their step boundaries,
models, optimizers, the initial state, the steps.

train.py adds the loop (data, jit on the mesh, checkpoints, logs); benchmarks and tests use these
pieces directly, so they time and test exactly what training runs. Every function here takes the
RunSpec (a ConfigDict is resolved first, so direct callers get the same checks).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from absl import logging

from mrisr_jax import registry, steps
from mrisr_jax.models import vgg as vgg_lib
from mrisr_jax.schedules import make_schedule
from mrisr_jax.spec import LossConfig, RunSpec, StageSpec, resolve
from mrisr_jax.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class Stage:
  """A stage of the recipe placed on the step axis."""

  spec: StageSpec
  start: int  # global step at which the stage begins
  end: int  # global step at which it ends (exclusive)
  lr_scale: float = 1.0  # the run's batch-size factor on lr_g and lr_d (RunSpec.lr_scale)

  @property
  def name(self) -> str:
    return self.spec.name


def steps_per_epoch(num_slices: int, batch_size: int) -> int:
  """Optimizer steps in one epoch (one random crop of every training slice); the last partial batch
  is dropped, and there is at least one step."""
  return max(1, int(num_slices) // int(batch_size))


def plan_run(run: RunSpec, num_slices: int) -> tuple[int, list[Stage]]:
  """(steps per epoch, stage plan) of a run over `num_slices` training slices."""
  run = resolve(run)
  spe = steps_per_epoch(num_slices, run.batch_size)
  return spe, stage_plan(run, spe)


def stage_plan(run: RunSpec, steps_per_epoch: int) -> list[Stage]:
  """The stages in order, each [start, end) in global steps."""
  run = resolve(run)
  plan, start = [], 0
  for s in run.stages:
    end = start + s.epochs * steps_per_epoch
    plan.append(Stage(s, start, end, run.lr_scale))
    start = end
  return plan


def stage_schedules(stage: Stage, steps_per_epoch: int) -> dict:
  """The G and D learning-rate schedules of a stage, counted from the stage start: the stage's lr_g / lr_d
  times the batch-size factor, after its warm-up (stage field warmup_epochs)."""
  s = stage.spec
  lr_g, lr_d = s.lr_g * stage.lr_scale, s.lr_d * stage.lr_scale  # x * 1.0 == x: unscaled runs unchanged
  return {
    'g': make_schedule(s.schedule, lr_g, steps_per_epoch, s.schedule_epochs, s.schedule_factor, s.warmup_epochs),
    'd': make_schedule(s.schedule, lr_d, steps_per_epoch, s.schedule_epochs, s.factor_d, s.warmup_epochs),
  }


def _scale_by_name(multipliers: dict) -> optax.GradientTransformation:
  """Multiplies the updates of top-level param subtrees by a factor (e.g. SRCNN's last layer: 0.1x lr).

  Applied after Adam, so it scales the step size exactly as a per-layer learning rate does.
  """

  def scale(updates, params=None):
    del params
    return {k: jax.tree.map(lambda u, f=multipliers.get(k, 1.0): u * f, v) for k, v in updates.items()}

  return optax.stateless(scale)


def make_optimizers(run: RunSpec, stage: Stage, steps_per_epoch: int):
  """Separate Adam optimizers for G and D, each with its own schedule."""
  schedules = stage_schedules(stage, steps_per_epoch)
  s = stage.spec
  g_tx = optax.adam(schedules['g'], b1=s.b1, b2=s.b2, eps=1e-8)
  multipliers = dict(resolve(run).lr_multipliers)
  if multipliers:
    g_tx = optax.chain(g_tx, _scale_by_name(multipliers))
  return g_tx, optax.adam(schedules['d'], b1=s.b1, b2=s.b2, eps=1e-8)


def stage_generator(run: RunSpec, stage: Stage):
  """The generator as the stage trains it (its DeepNorm alpha and dropout)."""
  alpha = float(stage.spec.deepnorm_alpha)
  overrides = dict(dropout=float(stage.spec.dropout))
  if alpha >= 0:
    overrides['deepnorm_alpha'] = alpha
  return registry.build_generator(resolve(run).model, **overrides)


def _taps(loss: LossConfig) -> tuple[list[int], list[float], list[float]]:
  """VGG tap indices (perceptual layers, then style layers) and their weights."""
  arch = loss.vgg_arch
  perceptual = dict(loss.perceptual_layers)
  style = dict(loss.style_layers)
  taps = [vgg_lib.vgg_layer_index(arch, n) for n in perceptual] + [vgg_lib.vgg_layer_index(arch, n) for n in style]
  return taps, list(perceptual.values()), list(style.values())


def loss_spec(run: RunSpec, stage: Stage) -> steps.LossSpec:
  s, loss = stage.spec, resolve(run).loss
  _, p_weights, s_weights = _taps(loss)
  return steps.LossSpec(
    pixel=s.pixel_loss,
    pixel_weight=float(s.pixel_weight),
    perceptual_weight=float(s.perceptual_weight),
    perceptual_layer_weights=tuple(map(float, p_weights)),
    perceptual_criterion=loss.perceptual_criterion,
    style_weight=float(s.style_weight),
    style_layer_weights=tuple(map(float, s_weights)),
    adversarial_weight=float(s.adversarial_weight) if s.kind == 'gan' else 0.0,
    gan=loss.gan,
  )


def needs_vgg(run: RunSpec, stages: list[Stage]) -> bool:
  return any(loss_spec(run, s).uses_vgg for s in stages)


def load_perceptual(loss_cfg: LossConfig, dtype: str = 'float32') -> tuple[Callable, Any]:
  """The frozen VGG feature function vgg(params, rgb) -> tapped features (float32), and its params
  (ImageNet weights, or random for quick runs). dtype: the compute dtype's name (config.model.dtype);
  the params stay float32."""
  if not isinstance(loss_cfg, LossConfig):  # a config.loss section
    from mrisr_jax.spec import loss_config

    loss_cfg = loss_config(loss_cfg)
  taps, _, _ = _taps(loss_cfg)
  last = max(taps)
  arch = loss_cfg.vgg_arch
  model = vgg_lib.VGGFeatures(
    arch=arch,
    last_layer=last,
    taps=tuple(taps),
    normalize_input=bool(loss_cfg.vgg_imagenet_norm),
    dtype=registry.compute_dtype(dtype),
  )
  if loss_cfg.vgg_weights:
    try:
      params = vgg_lib.load_vgg_params(loss_cfg.vgg_weights, arch, last)
    except (OSError, ValueError, ImportError) as e:
      raise vgg_lib.VGGWeightsError(f'config.loss.vgg_weights={loss_cfg.vgg_weights}: {e}') from e
    logging.info('perceptual loss: %s features[:%d] from %s', arch, last + 1, loss_cfg.vgg_weights)
  elif loss_cfg.allow_random_vgg:
    params = vgg_lib.init_vgg_params(jax.random.PRNGKey(0), arch, last)
    logging.warning(
      'perceptual loss: RANDOMLY INITIALISED %s features (config.loss.allow_random_vgg=True); '
      'this is not the seed recipe without ImageNet weights (config.loss.vgg_weights)',
      arch,
    )
  else:
    url = {
      'vgg19': 'https://download.pytorch.org/models/vgg19-dcbb9e9d.pth',
      'vgg16': 'https://download.pytorch.org/models/vgg16-397923af.pth',
    }.get(arch, '')
    raise vgg_lib.VGGWeightsError(
      f'config.loss.vgg_weights is empty: the perceptual/style loss needs ImageNet {arch} weights. Download '
      f"torchvision's {url.rsplit('/', 1)[-1]} ({url}) and pass --config.loss.vgg_weights=PATH "
      '(or a .npz from tools/convert_vgg.py)'
    )
  return functools.partial(_apply_vgg, model), params


def _apply_vgg(model, params, x):
  # losses are taken in float32 whatever the compute dtype (a no-op in float32)
  return jax.tree.map(lambda f: f.astype(jnp.float32), model.apply({'params': params}, x))


def network_inits(run: RunSpec, g_model, d_model) -> tuple[Callable, Callable]:
  """(g_init, d_init): rng -> the variables of one network, initialised on one training crop.

  A fresh run draws them from jax.random.split(PRNGKey(seed)): the first key for G, the second for D.
  """
  run = resolve(run)
  hr_h, hr_w = run.data.hr_patch_size
  in_h, in_w = registry.input_size(g_model, run.lr_patch_shape)
  g_init = lambda rng: g_model.init(
    {'params': rng},
    jnp.zeros((1, in_h, in_w, run.model.in_channels)),  # noqa: E731
    train=False,
  )
  d_init = lambda rng: d_model.init(
    {'params': rng},
    jnp.zeros((1, hr_h, hr_w, run.model.out_channels)),  # noqa: E731
    train=False,
  )
  return g_init, d_init


def init_state_fn(run: RunSpec, g_model, d_model, g_tx, d_tx) -> Callable:
  """rng -> a fresh TrainState: generator and discriminator initialised on one training crop."""
  run = resolve(run)
  g_init, d_init = network_inits(run, g_model, d_model)

  def init(rng):
    g_rng, d_rng = jax.random.split(rng)
    g_vars, d_vars = g_init(g_rng), d_init(d_rng)
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_vars['params'],
      g_batch_stats=g_vars.get('batch_stats', {}),
      d_params=d_vars['params'],
      d_batch_stats=d_vars.get('batch_stats', {}),
      g_opt_state=g_tx.init(g_vars['params']),
      d_opt_state=d_tx.init(d_vars['params']),
      rng=jax.random.PRNGKey(run.seed + 1),
      g_ema_params=g_vars['params'] if run.ema_decay > 0 else {},
    )

  return init


def stage_step(run: RunSpec, stage: Stage, g_model, d_model, g_tx, d_tx, vgg: Callable | None) -> Callable:
  """The pure step of a stage: (state, batch, vgg_params) -> (state, metrics)."""
  run = resolve(run)
  spec = loss_spec(run, stage)
  ema, accum = run.ema_decay, run.grad_accum_steps
  if stage.spec.kind == 'gan':
    return functools.partial(
      steps.gan_step,
      g_model=g_model,
      d_model=d_model,
      g_tx=g_tx,
      d_tx=d_tx,
      loss=spec,
      vgg=vgg,
      ema_decay=ema,
      grad_accum_steps=accum,
    )
  return functools.partial(
    steps.generator_step, g_model=g_model, g_tx=g_tx, loss=spec, vgg=vgg, ema_decay=ema, grad_accum_steps=accum
  )
