"""From a config to the pure pieces of a run: stages, models, optimizers, the initial state, the steps.

train.py adds the loop (data, jit on the mesh, checkpoints, logs); benchmarks and tests use these
pieces directly, so they time and test exactly what training runs.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from mrisr_jax import registry, steps
from mrisr_jax.data.pipeline import patch_shape
from mrisr_jax.models import vgg as vgg_lib
from mrisr_jax.schedules import make_schedule
from mrisr_jax.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  cfg: Any
  start: int  # global step at which the stage begins
  end: int  # global step at which it ends (exclusive)
  lr_scale: float = 1.0  # config.lr_scaling's factor on lr_g and lr_d (see `lr_scale`)


def steps_per_epoch(num_slices: int, batch_size: int) -> int:
  """Optimizer steps in one epoch (one random crop of every training slice); the last partial batch
  is dropped, and there is at least one step."""
  return max(1, int(num_slices) // int(batch_size))


def lr_scale(config: ml_collections.ConfigDict) -> float:
  """The learning-rate factor for the global batch: (batch_size / base_batch_size) ('linear'), its square
  root ('sqrt'), or 1 ('none'); the stages' lr_g / lr_d are the rates at base_batch_size."""
  rule = config.get('lr_scaling', 'none')
  ratio = config.batch_size / config.get('base_batch_size', 16)
  return {'none': 1.0, 'linear': ratio, 'sqrt': ratio ** 0.5}[rule]


def stage_plan(config: ml_collections.ConfigDict, steps_per_epoch: int) -> list[Stage]:
  plan, start, scale = [], 0, lr_scale(config)
  for name in config.stage_order:
    cfg = config.stages[name]
    end = start + int(cfg.epochs) * steps_per_epoch
    plan.append(Stage(name, cfg, start, end, scale))
    start = end
  return plan


def stage_schedules(stage: Stage, steps_per_epoch: int) -> dict:
  """The G and D learning-rate schedules of a stage, counted from the stage start: the stage's lr_g / lr_d
  times the batch-size factor, after its warm-up (stage field warmup_epochs)."""
  s = stage.cfg
  factor_d = s.schedule_factor if s.schedule_factor_d < 0 else s.schedule_factor_d
  warmup = float(s.get('warmup_epochs', 0.0))
  lr_g, lr_d = s.lr_g * stage.lr_scale, s.lr_d * stage.lr_scale  # x * 1.0 == x: unscaled runs unchanged
  return {'g': make_schedule(s.schedule, lr_g, steps_per_epoch, s.schedule_epochs, s.schedule_factor, warmup),
          'd': make_schedule(s.schedule, lr_d, steps_per_epoch, s.schedule_epochs, factor_d, warmup)}


def _scale_by_name(multipliers: dict) -> optax.GradientTransformation:
  """Multiplies the updates of top-level param subtrees by a factor (e.g. SRCNN's last layer: 0.1x lr).

  Applied after Adam, so it scales the step size exactly as a per-layer learning rate does.
  """
  def scale(updates, params=None):
    del params
    return {k: jax.tree.map(lambda u, f=multipliers.get(k, 1.0): u * f, v) for k, v in updates.items()}
  return optax.stateless(scale)


def make_optimizers(config: ml_collections.ConfigDict, stage: Stage, steps_per_epoch: int):
  """Separate Adam optimizers for G and D, each with its own schedule."""
  schedules = stage_schedules(stage, steps_per_epoch)
  s = stage.cfg
  g_tx = optax.adam(schedules['g'], b1=s.b1, b2=s.b2, eps=1e-8)
  multipliers = dict(config.get('lr_multipliers', {}) or {})
  if multipliers:
    g_tx = optax.chain(g_tx, _scale_by_name(multipliers))
  return g_tx, optax.adam(schedules['d'], b1=s.b1, b2=s.b2, eps=1e-8)


def stage_generator(config: ml_collections.ConfigDict, stage: Stage):
  alpha = float(stage.cfg.deepnorm_alpha)
  overrides = dict(dropout=float(stage.cfg.dropout))
  if alpha >= 0:
    overrides['deepnorm_alpha'] = alpha
  return registry.build_generator(config.model, **overrides)


def _taps(loss_cfg) -> tuple[list[int], list[float], list[float]]:
  """VGG tap indices (perceptual layers, then style layers) and their weights."""
  arch = loss_cfg.vgg_arch
  perceptual = dict(loss_cfg.perceptual_layers)
  style = dict(loss_cfg.style_layers)
  taps = [vgg_lib.vgg_layer_index(arch, n) for n in perceptual] + [vgg_lib.vgg_layer_index(arch, n) for n in style]
  return taps, list(perceptual.values()), list(style.values())


def loss_spec(config: ml_collections.ConfigDict, stage: Stage) -> steps.LossSpec:
  s = stage.cfg
  _, p_weights, s_weights = _taps(config.loss)
  return steps.LossSpec(
      pixel=s.pixel_loss, pixel_weight=float(s.pixel_weight), perceptual_weight=float(s.perceptual_weight),
      perceptual_layer_weights=tuple(map(float, p_weights)), perceptual_criterion=config.loss.perceptual_criterion,
      style_weight=float(s.style_weight), style_layer_weights=tuple(map(float, s_weights)),
      adversarial_weight=float(s.adversarial_weight) if s.kind == 'gan' else 0.0, gan=config.loss.gan)


def needs_vgg(config: ml_collections.ConfigDict, stages: list[Stage]) -> bool:
  return any(loss_spec(config, s).uses_vgg for s in stages)


def load_perceptual(loss_cfg, dtype: str = 'float32') -> tuple[Callable, Any]:
  """The frozen VGG feature function vgg(params, rgb) -> tapped features (float32), and its params
  (ImageNet weights, or random for quick runs). dtype: the compute dtype's name (config.model.dtype);
  the params stay float32."""
  taps, _, _ = _taps(loss_cfg)
  last = max(taps)
  arch = loss_cfg.vgg_arch
  model = vgg_lib.VGGFeatures(arch=arch, last_layer=last, taps=tuple(taps),
                              normalize_input=bool(loss_cfg.vgg_imagenet_norm),
                              dtype=registry.compute_dtype(dtype))
  if loss_cfg.vgg_weights:
    try:
      params = vgg_lib.load_vgg_params(loss_cfg.vgg_weights, arch, last)
    except (OSError, ValueError, ImportError) as e:
      raise vgg_lib.VGGWeightsError(f'config.loss.vgg_weights={loss_cfg.vgg_weights}: {e}') from e
    logging.info('perceptual loss: %s features[:%d] from %s', arch, last + 1, loss_cfg.vgg_weights)
  elif loss_cfg.allow_random_vgg:
    params = vgg_lib.init_vgg_params(jax.random.PRNGKey(0), arch, last)
    logging.warning('perceptual loss: RANDOMLY INITIALISED %s features (config.loss.allow_random_vgg=True); '
                    'this is not the seed recipe without ImageNet weights (config.loss.vgg_weights)', arch)
  else:
    url = {'vgg19': 'https://download.pytorch.org/models/vgg19-dcbb9e9d.pth',
           'vgg16': 'https://download.pytorch.org/models/vgg16-397923af.pth'}.get(arch, '')
    raise vgg_lib.VGGWeightsError(
        f'config.loss.vgg_weights is empty: the perceptual/style loss needs ImageNet {arch} weights. Download '
        f'torchvision\'s {url.rsplit("/", 1)[-1]} ({url}) and pass --config.loss.vgg_weights=PATH '
        '(or a .npz from tools/convert_vgg.py)')
  return functools.partial(_apply_vgg, model), params


def _apply_vgg(model, params, x):
  # losses are taken in float32 whatever the compute dtype (a no-op in float32)
  return jax.tree.map(lambda f: f.astype(jnp.float32), model.apply({'params': params}, x))


def network_inits(config: ml_collections.ConfigDict, g_model, d_model) -> tuple[Callable, Callable]:
  """(g_init, d_init): rng -> the variables of one network, initialised on one training crop.

  A fresh run draws them from jax.random.split(PRNGKey(seed)): the first key for G, the second for D.
  """
  scale = config.model.scale
  hr_h, hr_w = patch_shape(config.data)
  in_h, in_w = registry.input_size(g_model, (hr_h // scale, hr_w // scale))
  g_init = lambda rng: g_model.init({'params': rng}, jnp.zeros((1, in_h, in_w, config.model.in_channels)),  # noqa: E731
                                    train=False)
  d_init = lambda rng: d_model.init({'params': rng}, jnp.zeros((1, hr_h, hr_w, config.model.out_channels)),  # noqa: E731
                                    train=False)
  return g_init, d_init


def init_state_fn(config: ml_collections.ConfigDict, g_model, d_model, g_tx, d_tx) -> Callable:
  """rng -> a fresh TrainState: generator and discriminator initialised on one training crop."""
  g_init, d_init = network_inits(config, g_model, d_model)

  def init(rng):
    g_rng, d_rng = jax.random.split(rng)
    g_vars, d_vars = g_init(g_rng), d_init(d_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), g_params=g_vars['params'],
                      g_batch_stats=g_vars.get('batch_stats', {}), d_params=d_vars['params'],
                      d_batch_stats=d_vars.get('batch_stats', {}), g_opt_state=g_tx.init(g_vars['params']),
                      d_opt_state=d_tx.init(d_vars['params']), rng=jax.random.PRNGKey(config.seed + 1),
                      g_ema_params=g_vars['params'] if config.get('ema_decay', 0.0) > 0 else {})

  return init


def stage_step(config: ml_collections.ConfigDict, stage: Stage, g_model, d_model, g_tx, d_tx,
               vgg: Callable | None) -> Callable:
  """The pure step of a stage: (state, batch, vgg_params) -> (state, metrics)."""
  spec = loss_spec(config, stage)
  ema = float(config.get('ema_decay', 0.0))
  accum = int(config.get('grad_accum_steps', 1))
  if stage.cfg.kind == 'gan':
    return functools.partial(steps.gan_step, g_model=g_model, d_model=d_model, g_tx=g_tx, d_tx=d_tx,
                             loss=spec, vgg=vgg, ema_decay=ema, grad_accum_steps=accum)
  return functools.partial(steps.generator_step, g_model=g_model, g_tx=g_tx, loss=spec, vgg=vgg,
                           ema_decay=ema, grad_accum_steps=accum)
