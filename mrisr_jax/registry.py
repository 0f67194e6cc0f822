"""One table from the names used in configs to model constructors."""
from __future__ import annotations

from typing import Callable

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


def compute_dtype(name: str):
  return lookup(_DTYPES, 'config.model.dtype', name)


def resolve_scan_unroll(scan_unroll: int, depth: int) -> int:
  """0 = auto: XLA:CPU runs scans ~20x slower than unrolled code, so unroll there; scan elsewhere."""
  if scan_unroll > 0:
    return scan_unroll
  import jax
  return depth if jax.default_backend() == 'cpu' else 1


def _casr(m: ml_collections.ConfigDict, **overrides) -> nn.Module:
  from mrisr_jax.models.casr import CASR
  kw = dict(scale=m.scale, in_channels=m.in_channels, out_channels=m.out_channels,
            growth_rate0=m.growth_rate0, depth=m.depth, growth_rate=m.growth_rate,
            rdb_depth=m.rdb_depth, n_stb=m.n_stb, embed_dim=m.embed_dim, patch_size=m.patch_size,
            num_heads=m.num_heads, window_size=m.window_size, mlp_ratio=m.mlp_ratio,
            deepnorm=m.deepnorm, norm_before=m.norm_before, reference_compat=m.reference_compat,
            remat=m.remat, scan_unroll=resolve_scan_unroll(m.scan_unroll, m.depth), dtype=compute_dtype(m.dtype))
  kw.update(overrides)
  return CASR(**kw)


def _casrgan_d(d: ml_collections.ConfigDict, dtype) -> nn.Module:
  from mrisr_jax.models.discriminator import CASRGANDiscriminator
  return CASRGANDiscriminator(dtype=dtype)


GENERATORS: dict[str, Callable[..., nn.Module]] = {'casr': _casr}
DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {'casrgan_d': _casrgan_d}
SCALES = (2, 3, 4)


def build_generator(model_cfg: ml_collections.ConfigDict, **overrides) -> nn.Module:
  """overrides: per-stage attributes (dropout, deepnorm_alpha)."""
  return lookup(GENERATORS, 'config.model.name', model_cfg.name)(model_cfg, **overrides)


def build_discriminator(config: ml_collections.ConfigDict) -> nn.Module:
  builder = lookup(DISCRIMINATORS, 'config.discriminator.name', config.discriminator.name)
  return builder(config.discriminator, compute_dtype(config.model.dtype))
