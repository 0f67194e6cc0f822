"""Checks a config before anything expensive runs; each failure is one line naming the key and value."""
from __future__ import annotations

import ml_collections

from mrisr_jax import losses, registry
from mrisr_jax.data import pipeline, sources
from mrisr_jax.data.errors import DataError

STAGE_KINDS = ('generator', 'gan')
SCHEDULES = ('constant', 'linear', 'step')
LOSS_WEIGHTS = ('pixel_weight', 'perceptual_weight', 'style_weight', 'adversarial_weight')
LR_SCALINGS = ('none', 'linear', 'sqrt')


class ConfigError(ValueError):
  pass


def _require(cond: bool, msg: str) -> None:
  if not cond:
    raise ConfigError(msg)


def _check_model(config: ml_collections.ConfigDict) -> None:
  m = config.model
  cls = registry.generator_class(m.name)
  _require(m.scale in cls.supported_scales,
           f'config.model.scale={m.scale!r} is not supported by {m.name} ({cls.__name__}); use one of '
           f'{cls.supported_scales}')
  registry.compute_dtype(m.dtype)
  # float16 needs loss scaling (its range underflows small gradients), which is not implemented
  for key, dtype in (('config.model.dtype', m.dtype),
                     ('config.discriminator.dtype', config.discriminator.get('dtype'))):
    _require(dtype != 'float16', f'{key}={dtype!r} is not supported (no loss scaling); use bfloat16 or float32')
  g = registry.build_generator(m)  # names any config field the module lacks
  try:
    ph, pw = pipeline.patch_shape(config.data)
  except DataError as e:
    raise ConfigError(str(e)) from None
  p = config.data.hr_patch_size
  _require(ph % m.scale == 0 and pw % m.scale == 0,
           f'config.data.hr_patch_size={p} is not divisible by config.model.scale={m.scale}')
  multiple = g.size_multiple
  _require((ph // m.scale) % multiple == 0 and (pw // m.scale) % multiple == 0,
           f'config.data.hr_patch_size={p}: the LR crop {ph // m.scale}x{pw // m.scale} must be a multiple of '
           f'{multiple} for {m.name} (e.g. model.patch_size*model.window_size)')
  try:
    steps = pipeline.degradation_steps(config.data)
    pipeline.check_degradation_fits(steps, m.scale, g.upsampled_input)
  except DataError as e:
    raise ConfigError(str(e)) from None


def _check_data(config: ml_collections.ConfigDict) -> None:
  d = config.data
  _require(d.format in sources.FORMATS, f'config.data.format={d.format!r}; known: {", ".join(sources.FORMATS)}')
  _require(d.scan in ('full', 'header'), f'config.data.scan={d.scan!r}; known: full, header')
  _require(0 <= d.val_fraction < 1, f'config.data.val_fraction={d.val_fraction} must be in [0, 1)')
  _require(0 < d.volume_sample_rate <= 1,
           f'config.data.volume_sample_rate={d.volume_sample_rate} must be in (0, 1]')
  _require(d.slice_axis in (0, 1, 2), f'config.data.slice_axis={d.slice_axis} must be 0, 1 or 2')
  lo, hi = d.intensity_percentiles
  _require(0 <= lo < hi <= 100, f'config.data.intensity_percentiles={tuple(d.intensity_percentiles)} must '
           'satisfy 0 <= low < high <= 100')
  _require(d.lr_source in sources.LR_SOURCES,
           f'config.data.lr_source={d.lr_source!r}; known: {", ".join(sources.LR_SOURCES)}')


def _check_stage(config: ml_collections.ConfigDict, name: str) -> None:
  s = config.stages[name]
  key = f'config.stages.{name}'
  _require(s.kind in STAGE_KINDS, f'{key}.kind={s.kind!r}; known: {", ".join(STAGE_KINDS)}')
  _require(s.schedule in SCHEDULES, f'{key}.schedule={s.schedule!r}; known: {", ".join(SCHEDULES)}')
  _require(s.pixel_loss in losses.PIXEL_LOSSES,
           f'{key}.pixel_loss={s.pixel_loss!r}; known: {", ".join(losses.PIXEL_LOSSES)}')
  _require(s.epochs >= 0, f'{key}.epochs={s.epochs} must be >= 0')
  _require(s.schedule_epochs > 0, f'{key}.schedule_epochs={s.schedule_epochs} must be > 0')
  _require(s.get('warmup_epochs', 0.0) >= 0, f'{key}.warmup_epochs={s.get("warmup_epochs")} must be >= 0')
  for w in LOSS_WEIGHTS:
    _require(s[w] >= 0, f'{key}.{w}={s[w]} must be >= 0')
  _require(any(s[w] > 0 for w in LOSS_WEIGHTS), f'{key}: every loss weight is 0 ({", ".join(LOSS_WEIGHTS)})')
  if s.kind == 'gan':
    registry.discriminator_class(config.discriminator.name)
    _require(s.adversarial_weight > 0, f'{key}.adversarial_weight={s.adversarial_weight}: a gan stage needs '
             'a positive adversarial weight (use kind=generator otherwise)')


def validate(config: ml_collections.ConfigDict) -> None:
  _check_model(config)
  _check_data(config)
  _require(config.batch_size > 0, f'config.batch_size={config.batch_size} must be positive')
  _require(0 <= config.ema_decay < 1, f'config.ema_decay={config.ema_decay} must be in [0, 1) (0 = no EMA)')
  k = config.get('grad_accum_steps', 1)
  _require(isinstance(k, int) and k >= 1, f'config.grad_accum_steps={k!r} must be an integer >= 1')
  _require(config.batch_size % k == 0, f'config.grad_accum_steps={k} does not divide config.batch_size='
           f'{config.batch_size} (each step splits the batch into {k} equal micro-batches)')
  rule = config.get('lr_scaling', 'none')
  _require(rule in LR_SCALINGS, f'config.lr_scaling={rule!r}; known: {", ".join(LR_SCALINGS)}')
  base = config.get('base_batch_size', 16)
  _require(isinstance(base, int) and base > 0, f'config.base_batch_size={base!r} must be a positive integer')
  _require(len(config.stage_order) > 0, 'config.stage_order is empty')
  for name in config.stage_order:
    _require(name in config.stages, f'config.stage_order names {name!r}, which is not in config.stages '
             f'(known: {", ".join(config.stages.keys())})')
    _check_stage(config, name)
  loss = config.loss
  registry.lookup(losses.GAN_LOSSES, 'config.loss.gan', loss.gan)
  _require(loss.perceptual_criterion in ('mse', 'l1'),
           f'config.loss.perceptual_criterion={loss.perceptual_criterion!r}; known: l1, mse')
  from mrisr_jax.models import vgg as vgg_lib
  for field in ('perceptual_layers', 'style_layers'):
    for layer in loss[field]:
      try:
        vgg_lib.vgg_layer_index(loss.vgg_arch, layer)
      except ValueError as e:
        raise ConfigError(f'config.loss.{field}.{layer}: {e}') from None
