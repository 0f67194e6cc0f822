"""Checks a config before anything expensive runs; each failure is one line naming the key and value."""
from __future__ import annotations

import ml_collections

from mrisr_jax import registry
from mrisr_jax.losses import PIXEL_LOSSES

STAGE_KINDS = ('generator', 'gan')
SCHEDULES = ('constant', 'linear', 'step')


class ConfigError(ValueError):
  pass


def _require(cond: bool, msg: str) -> None:
  if not cond:
    raise ConfigError(msg)


def validate(config: ml_collections.ConfigDict) -> None:
  m = config.model
  _require(m.scale in registry.SCALES,
           f'config.model.scale={m.scale!r} is not supported; use one of {registry.SCALES}')
  registry.lookup(registry.GENERATORS, 'config.model.name', m.name)
  registry.compute_dtype(m.dtype)
  p = config.data.hr_patch_size
  _require(p % m.scale == 0, f'config.data.hr_patch_size={p} is not divisible by config.model.scale={m.scale}')
  if m.name == 'casr':
    multiple = m.patch_size * m.window_size
    _require((p // m.scale) % multiple == 0,
             f'config.data.hr_patch_size={p}: the LR crop {p // m.scale} must be a multiple of '
             f'model.patch_size*model.window_size={multiple}')
  _require(config.batch_size > 0, f'config.batch_size={config.batch_size} must be positive')
  _require(len(config.stage_order) > 0, 'config.stage_order is empty')
  for name in config.stage_order:
    _require(name in config.stages, f'config.stage_order names {name!r}, which is not in config.stages '
             f'(known: {", ".join(config.stages.keys())})')
    s = config.stages[name]
    _require(s.kind in STAGE_KINDS, f'config.stages.{name}.kind={s.kind!r}; known: {", ".join(STAGE_KINDS)}')
    _require(s.schedule in SCHEDULES, f'config.stages.{name}.schedule={s.schedule!r}; known: {", ".join(SCHEDULES)}')
    _require(s.pixel_loss in PIXEL_LOSSES, f'config.stages.{name}.pixel_loss={s.pixel_loss!r}; known: '
             f'{", ".join(PIXEL_LOSSES)}')
    _require(s.epochs >= 0, f'config.stages.{name}.epochs={s.epochs} must be >= 0')
    _require(s.schedule_epochs > 0, f'config.stages.{name}.schedule_epochs={s.schedule_epochs} must be > 0')
    if s.kind == 'gan':
      registry.lookup(registry.DISCRIMINATORS, 'config.discriminator.name', config.discriminator.name)
  _require(config.loss.gan_pixel_loss in PIXEL_LOSSES,
           f'config.loss.gan_pixel_loss={config.loss.gan_pixel_loss!r}; known: {", ".join(PIXEL_LOSSES)}')
  _require(config.loss.adversarial_reduction in ('sum', 'mean'),
           f'config.loss.adversarial_reduction={config.loss.adversarial_reduction!r}; known: mean, sum')
