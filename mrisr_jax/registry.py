"""One table from the names used in configs to models and losses.

`config.model` / `config.discriminator` hold `name` plus fields named exactly as the module's
attributes, so building a model is `Module(**fields)`; a field the module lacks is an error that
names it. Each model's entry also names its PyTorch mirror (`interop.torch_models`) and its
state_dict key map (`interop.convert`), so interop asks here. Loss names (pixel, GAN) resolve
through `losses.PIXEL_LOSSES` / `losses.GAN_LOSSES` with the same `lookup`.

Importing this module imports neither jax nor torch (`interop.convert` needs only numpy).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Callable, NamedTuple

import ml_collections

from mrisr_jax.errors import UserError

if TYPE_CHECKING:
  from flax import linen as nn

_DTYPES = ('float32', 'bfloat16', 'float16')


class UnknownNameError(UserError, ValueError):
  pass


def lookup(table: dict, kind: str, name: str):
  if name not in table:
    raise UnknownNameError(f'unknown {kind} {name!r}; known: {", ".join(sorted(table))}')
  return table[name]


class Model(NamedTuple):
  """A model's entry; every part is imported on use (a config names a model without importing all)."""

  kind: str  # 'generator', 'discriminator' or 'prior' (TransMRSR's stage-1 StyleSwin G / D)
  module: str  # 'module:Class' of the flax module
  torch: str  # its mirror: a class in mrisr_jax.interop.torch_models, or 'module:Class'
  key_map: str  # in mrisr_jax.interop.convert (or 'module:function'): params -> {torch key: (flax path, transform)}


_G, _D, _PRIOR = 'generator', 'discriminator', 'prior'
# System by system, generator before discriminator: the order `convert.SUPPORTED` lists them in.
MODELS: dict[str, Model] = {
  'srcnn': Model(_G, 'mrisr_jax.models.srcnn:SRCNN', 'TorchSRCNN', 'srcnn_key_map'),
  'drrn': Model(_G, 'mrisr_jax.models.drrn:DRRN', 'TorchDRRN', 'drrn_key_map'),
  'edsr': Model(_G, 'mrisr_jax.models.edsr:EDSR', 'TorchEDSR', 'edsr_key_map'),
  'rdn': Model(_G, 'mrisr_jax.models.rdn:RDN', 'TorchRDN', 'rdn_key_map'),
  'casr': Model(_G, 'mrisr_jax.models.casr:CASR', 'TorchCASR', 'casr_key_map'),
  'casrgan_d': Model(
    _D, 'mrisr_jax.models.discriminator:CASRGANDiscriminator', 'TorchGANDiscriminator', 'casrgan_d_key_map'
  ),
  'fagan': Model(_G, 'mrisr_jax.models.fagan:FAGANGenerator', 'TorchFAGANGenerator', 'fagan_key_map'),
  'fagan_sn_d': Model(_D, 'mrisr_jax.models.fagan:FAGANDiscriminator', 'TorchFAGANDiscriminator', 'fagan_sn_d_key_map'),
  'srdcgan': Model(_G, 'mrisr_jax.models.srdcgan:SRDCGANGenerator', 'TorchSRDCGANGenerator', 'srdcgan_key_map'),
  'srdcgan_d': Model(
    _D, 'mrisr_jax.models.srdcgan:SRDCGANDiscriminator', 'TorchSRDCGANDiscriminator', 'srdcgan_d_key_map'
  ),
  'perceptual_sr': Model(
    _G, 'mrisr_jax.models.perceptual_sr:PerceptualSRNet', 'TorchPerceptualSRNet', 'perceptual_sr_key_map'
  ),
  # TransMRSR's SR network, and its StyleSwin prior G and D (kind 'prior': trained by mrisr_jax.prior_train,
  # not SR models; here for their state_dict layouts)
  'transmrsr': Model(
    _G,
    'mrisr_jax.models.transmrsr:TransMRSR',
    'mrisr_jax.interop.torch_transmrsr:TorchTransMRSR',
    'mrisr_jax.interop.transmrsr_keys:transmrsr_key_map',
  ),
  'styleswin_g': Model(
    _PRIOR,
    'mrisr_jax.models.styleswin:StyleSwinGenerator',
    'mrisr_jax.interop.torch_styleswin:TorchStyleSwinGenerator',
    'mrisr_jax.interop.styleswin_keys:styleswin_g_key_map',
  ),
  'styleswin_synthesis': Model(
    _PRIOR,
    'mrisr_jax.models.styleswin:Synthesis',
    'mrisr_jax.interop.torch_styleswin:TorchSynthesis',
    'mrisr_jax.interop.styleswin_keys:styleswin_synthesis_key_map',
  ),
  'styleswin_d': Model(
    _PRIOR,
    'mrisr_jax.models.styleswin_d:StyleSwinDiscriminator',
    'mrisr_jax.interop.torch_styleswin_d:TorchStyleSwinDiscriminator',
    'mrisr_jax.interop.styleswin_d_keys:styleswin_d_key_map',
  ),
}
# name -> 'module:Class', by kind
GENERATORS: dict[str, str] = {n: m.module for n, m in MODELS.items() if m.kind == _G}
DISCRIMINATORS: dict[str, str] = {n: m.module for n, m in MODELS.items() if m.kind == _D}
SCALES = (2, 3, 4, 8)  # union over the models; each model class says which it supports


def compute_dtype(name: str):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  return getattr(jnp, lookup({n: n for n in _DTYPES}, 'config.model.dtype', name))


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


def torch_mirror_class(name: str) -> type:
  """The torch.nn mirror of generator or discriminator `name` (imports torch)."""
  target = lookup(MODELS, 'model', name).torch
  return _import(target if ':' in target else f'mrisr_jax.interop.torch_models:{target}')


def key_map_function(name: str) -> Callable:
  """`f(params) -> {torch key: (flax path, transform)}`, the state_dict layout of model `name`."""
  target = lookup(MODELS, 'model', name).key_map
  return _import(target if ':' in target else f'mrisr_jax.interop.convert:{target}')


def buffers_function(name: str) -> Callable | None:
  """`f(params) -> {torch key: array}`, the generated buffers of model `name`'s state_dict (keys whose
  transform is 'buffer'), for models whose key map lives in its own module; None otherwise."""
  target = lookup(MODELS, 'model', name).key_map
  if ':' not in target:
    return None
  module, _, fn = target.partition(':')
  return _import(f'{module}:{fn.removesuffix("_key_map")}_buffers')


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
      raise UnknownNameError(f'{prefix}.{key} is not a field of {cls.__name__}; its fields: {", ".join(sorted(known))}')
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
  error = cls.scale_error(kw.get('scale', cls.scale))
  if error:
    raise UnknownNameError(f'config.{error}')
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
