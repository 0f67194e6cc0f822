"""CASR, the CASRGAN generator: AFEBs (AHPF + SE + RDB), GFF, a Swin self-attention block, upsampler.

Layout and defaults follow ../shared/reference/casrgan_reference.md. The D AFEBs share one shape,
so they run under `nn.scan` (parameters stacked on a leading axis of length D): compile time stays
flat in D. Input and output are NHWC images in [0, 1] (no normalisation, no output clamp).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from mrisr_jax.models.base import SRGenerator
from mrisr_jax.models.layers import Conv2d, Upsampler, pixel_shuffle
from mrisr_jax.models.swin import SwinBlock

Dtype = Any


def box_sum_3x3(x: jax.Array) -> jax.Array:
  """3x3 box sum with zero padding of a one-channel NHWC map (the all-ones convolution)."""
  ones = jnp.ones((3, 3, 1, 1), x.dtype)
  return jax.lax.conv_general_dilated(x, ones, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class AdaptiveHighPass(nn.Module):
  """AHPF: ReLU(x - conv(x, ones(C, C, 3, 3) * hp_factor, pad 1) - beta).

  With an all-ones kernel every output channel gets the 3x3 box sum of the channel sum of x, so
  the dense convolution is computed as one channel sum and one box filter (~1/C the cost).
  The reference's frozen `weight` buffer of ones is written only on export.
  """

  @nn.compact
  def __call__(self, x):
    hp_factor = self.param('hp_factor', nn.initializers.constant(0.1), (1,), jnp.float32)
    beta = self.param('beta', nn.initializers.constant(0.01), (1,), jnp.float32)
    low = box_sum_3x3(jnp.sum(x, axis=-1, keepdims=True)) * hp_factor.astype(x.dtype)
    return nn.relu(x - low - beta.astype(x.dtype))


class SqueezeExcitation(nn.Module):
  reduction: int = 4
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(Conv2d(c // self.reduction, 1, dtype=self.dtype, name='excite_0')(s))
    s = nn.sigmoid(Conv2d(c, 1, dtype=self.dtype, name='excite_2')(s))
    return x * s


class ResidualDenseBlock(nn.Module):
  """RDB(G0, G, C): C densely connected conv3x3+ReLU layers, 1x1 local fusion, plus the input."""

  growth_rate: int
  num_layers: int
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    g0 = x.shape[-1]
    h = x
    for c in range(self.num_layers):
      out = nn.relu(Conv2d(self.growth_rate, 3, dtype=self.dtype, name=f'conv_{c}')(h))
      h = jnp.concatenate([h, out], axis=-1)
    return Conv2d(g0, 1, dtype=self.dtype, name='lff')(h) + x


class AFEB(nn.Module):
  """Adaptive feature extraction block: out = RDB(SE(AHPF(x) + x)) + x. Scan-shaped (carry, _)."""

  growth_rate: int
  rdb_depth: int
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x, _):
    h = AdaptiveHighPass(name='ahpf')(x) + x
    h = SqueezeExcitation(dtype=self.dtype, name='se')(h)
    out = ResidualDenseBlock(self.growth_rate, self.rdb_depth, self.dtype, name='rdb')(h) + x
    return out, out


class SelfAttentionBlock(nn.Module):
  """SAB: patch embed (conv k=s=p) -> STBs -> 1x1 conv + PixelShuffle(p) -> two conv3x3+ReLU, x0.1 + input."""

  embed_dim: int
  patch_size: int
  num_heads: int
  window_size: int
  n_stb: int
  mlp_ratio: float
  alpha: float
  beta: float | None
  norm_before: bool
  reference_compat: bool
  dropout: float
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, y, train: bool):
    g0 = y.shape[-1]
    p = self.patch_size
    t = Conv2d(self.embed_dim, p, stride=p, padding=0, dtype=self.dtype, name='patch_embed')(y)
    for i in range(self.n_stb):
      t = SwinBlock(
        self.embed_dim,
        self.num_heads,
        self.window_size,
        shift=0 if i % 2 == 0 else self.window_size // 2,
        mlp_ratio=self.mlp_ratio,
        alpha=self.alpha,
        beta=self.beta,
        norm_before=self.norm_before,
        reference_compat=self.reference_compat,
        dropout=self.dropout,
        dtype=self.dtype,
        name=f'stb_{i}',
      )(t, train)
    t = pixel_shuffle(Conv2d(g0 * p * p, 1, dtype=self.dtype, name='patch_unembed')(t), p)
    t = nn.relu(Conv2d(g0, 3, dtype=self.dtype, name='conv1')(t))
    t = nn.relu(Conv2d(g0, 3, dtype=self.dtype, name='conv2')(t))
    return t * 0.1 + y


class CASR(SRGenerator):
  growth_rate0: int = 128  # G0, the seed's io_nc
  depth: int = 20  # number of AFEBs
  growth_rate: int = 32
  rdb_depth: int = 6
  n_stb: int = 2
  embed_dim: int = 96
  patch_size: int = 6
  num_heads: int = 6
  window_size: int = 4
  mlp_ratio: float = 4.0
  deepnorm: bool = True
  deepnorm_alpha: float | None = None  # None: (2N)^(1/4) with DeepNorm, else 1; the fine-tune stage sets 1
  norm_before: bool = False
  reference_compat: bool = False
  dropout: float = 0.0
  remat: bool = False  # recompute AFEB activations in the backward pass (saves memory)
  scan_unroll: int = 1  # AFEBs per scan iteration: 1 keeps compile time flat in depth
  dtype: Dtype | None = None  # None: compute in the input's dtype

  @property
  def size_multiple(self) -> int:
    """The LR input side must be a multiple of this (patch_size * window_size)."""
    return self.patch_size * self.window_size

  @nn.compact
  def __call__(self, x, train: bool = False):
    self.check_fields()
    n = self.n_stb
    alpha = self.deepnorm_alpha
    if alpha is None:
      alpha = (2.0 * n) ** 0.25 if self.deepnorm else 1.0
    beta = (8.0 * n) ** -0.25 if self.deepnorm else None

    x = nn.relu(Conv2d(self.growth_rate0, 3, dtype=self.dtype, name='sfe')(x))
    shortcut = x
    block = nn.remat(AFEB, prevent_cse=False) if self.remat else AFEB
    blocks = nn.scan(
      block, variable_axes={'params': 0}, split_rngs={'params': True}, length=self.depth, unroll=self.scan_unroll
    )(self.growth_rate, self.rdb_depth, self.dtype, name='afebs')
    _, outs = blocks(x, None)  # outs: (D, B, H, W, G0)
    d, b, h, w, c = outs.shape
    # torch.cat(outs, dim=1): channel d*G0 + c
    feats = outs.transpose(1, 2, 3, 0, 4).reshape(b, h, w, d * c)
    y = Conv2d(self.growth_rate0, 1, dtype=self.dtype, name='gff_0')(feats)
    y = Conv2d(self.growth_rate0, 3, dtype=self.dtype, name='gff_1')(y)
    y = SelfAttentionBlock(
      self.embed_dim,
      self.patch_size,
      self.num_heads,
      self.window_size,
      n,
      self.mlp_ratio,
      alpha,
      beta,
      self.norm_before,
      self.reference_compat,
      self.dropout,
      self.dtype,
      name='sab',
    )(y, train)
    y = Upsampler(self.scale, self.growth_rate0, dtype=self.dtype, name='upsampler')(y + shortcut)
    y = Conv2d(self.out_channels, 3, dtype=self.dtype, name='tail')(y)
    return y.astype(jnp.float32)
