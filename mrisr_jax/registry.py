"""One table from the names used in configs to models and losses.

`config.model` / `config.discriminator` hold `name` plus fields named exactly as the module's
attributes, so building a model is `Module(**fields)`; a field the module lacks is an error that
names it. Loss names (pixel, GAN) resolve through `losses.PIXEL_LOSSES` / `losses.GAN_LOSSES`
with the same `lookup`.
"""
from __future__ import annotations

import dataclasses
import importlib

import jax.numpy as jnp
import ml_collections
from flax import linen as nn

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


class UnknownNameError(ValueError):
  pass


def lookup(table: dict, kind: str, name: str):
  if name not in table:
    raise UnknownNameError(f'unknown {kind} {name!r}; known: {", ".join(sorted(table))}')
  return table[name]


# name -> 'module:Class' (imported on use, so a config names a model without importing all of them)
GENERATORS: dict[str, str] = {
    'casr': 'mrisr_jax.models.casr:CASR',
    'srcnn': 'mrisr_jax.models.srcnn:SRCNN',
    'drrn': 'mrisr_jax.models.drrn:DRRN',
    'edsr': 'mrisr_jax.models.edsr:EDSR',
    'rdn': 'mrisr_jax.models.rdn:RDN',
    'fagan': 'mrisr_jax.models.fagan:FAGANGenerator',
    'srdcgan': 'mrisr_jax.models.srdcgan:SRDCGANGenerator',
    'perceptual_sr': 'mrisr_jax.models.perceptual_sr:PerceptualSRNet',
}
DISCRIMINATORS: dict[str, str] = {
    'casrgan_d': 'mrisr_jax.models.discriminator:CASRGANDiscriminator',
    'fagan_sn_d': 'mrisr_jax.models.fagan:FAGANDiscriminator',
    'srdcgan_d': 'mrisr_jax.models.srdcgan:SRDCGANDiscriminator',
}
SCALES = (2, 3, 4, 8)  # union over the models; each model class says which it supports


def compute_dtype(name: str):
  return lookup(_DTYPES, 'config.model.dtype', name)


def resolve_scan_unroll(scan_unroll: int, depth: int) -> int:
  """0 = auto: XLA:CPU runs scans ~20x slower than unrolled code, so unroll there; scan elsewhere."""
  if scan_unroll > 0:
    return scan_unroll
  import jax
  return depth if jax.default_backend() == 'cpu' else 1


def generator_class(name: str) -> type[nn.Module]:
  return _import(lookup(GENERATORS, 'config.model.name', name))


def discriminator_class(name: str) -> type[nn.Module]:
  return _import(lookup(DISCRIMINATORS, 'config.discriminator.name', name))


def _import(target: str):
  module, _, cls = target.partition(':')
  return getattr(importlib.import_module(module), cls)


def _fields(cls) -> set[str]:
  return {f.name for f in dataclasses.fields(cls) if f.name not in ('parent', 'name')}


def _kwargs(cls, cfg: ml_collections.ConfigDict, prefix: str, skip=()) -> dict:
  known = _fields(cls)
  kw = {}
  for key, value in cfg.items():
    if key == 'name' or key in skip:
      continue
    if key not in known:
      raise UnknownNameError(f'{prefix}.{key} is not a field of {cls.__name__}; its fields: '
                             f'{", ".join(sorted(known))}')
    kw[key] = tuple(value) if isinstance(value, list) else value
  if 'dtype' in kw:
    kw['dtype'] = compute_dtype(kw['dtype'])
  return kw


def build_generator(model_cfg: ml_collections.ConfigDict, **overrides) -> nn.Module:
  """overrides: per-stage attributes (dropout, deepnorm_alpha) for models that have them."""
  cls = generator_class(model_cfg.name)
  kw = _kwargs(cls, model_cfg, 'config.model')
  if 'scan_unroll' in kw:
    kw['scan_unroll'] = resolve_scan_unroll(kw['scan_unroll'], kw.get('depth', 1))
  known = _fields(cls)
  kw.update({k: v for k, v in overrides.items() if k in known})
  if kw.get('scale', 4) not in cls.supported_scales:
    raise UnknownNameError(f'config.model.scale={kw.get("scale")}: {cls.__name__} supports scales '
                           f'{", ".join(map(str, cls.supported_scales))}')
  return cls(**kw)


def build_discriminator(config: ml_collections.ConfigDict) -> nn.Module:
  cls = discriminator_class(config.discriminator.name)
  kw = _kwargs(cls, config.discriminator, 'config.discriminator')
  if 'dtype' in _fields(cls) and 'dtype' not in kw:
    kw['dtype'] = compute_dtype(config.model.dtype)
  return cls(**kw)


def input_size(model: nn.Module, lr_hw: tuple[int, int]) -> tuple[int, int]:
  """The spatial size a generator eats for an LR image of `lr_hw`: the LR size, or the HR size for models
  that take the bicubic-upsampled LR (SRCNN, DRRN)."""
  if getattr(model, 'upsampled_input', False):
    return lr_hw[0] * model.scale, lr_hw[1] * model.scale
  return lr_hw
