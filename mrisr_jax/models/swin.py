"""Swin-style windowed self-attention with DeepNorm, as in the CASRGAN reference (`STB`).

Two behaviours (see ../shared/reference/casrgan_reference.md, "STB"):
- default: correct Swin (q scaled by head_dim**-0.5, window reverse = inverse of the partition,
  DeepNet residual `LN(alpha * x + f(x))`);
- `reference_compat=True`: the reference's three deviations (q scaled by head_dim**+0.5, window
  reverse without the transpose, alpha on the branch `LN(x + alpha * f(x))`), so that checkpoints
  trained with the reference reproduce its outputs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mrisr_jax.models.layers import Linear

Dtype = Any
LN_EPS = 1e-5  # PyTorch's LayerNorm default (flax's is 1e-6)


def window_partition(x: jax.Array, w: int) -> jax.Array:
  """(B, H, W, C) -> (B * H/w * W/w, w*w, C), the standard Swin order."""
  b, h, wd, c = x.shape
  x = x.reshape(b, h // w, w, wd // w, w, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, w * w, c)


def window_reverse(windows: jax.Array, w: int, h: int, wd: int, reference_compat: bool) -> jax.Array:
  """Inverse of `window_partition`; `reference_compat` reproduces the reference's missing transpose."""
  c = windows.shape[-1]
  b = windows.shape[0] // ((h // w) * (wd // w))
  if reference_compat:
    # The reference views the (B, H/w, W/w, w, w, C) buffer as (B, H/w, w, W/w, w, C): no transpose.
    return windows.reshape(b, h, wd, c)
  x = windows.reshape(b, h // w, wd // w, w, w, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, wd, c)


def relative_position_index(w: int) -> np.ndarray:
  """Standard Swin relative-position index, (w*w, w*w) int64."""
  coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing='ij')).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (w - 1)
  return (rel[..., 0] * (2 * w - 1) + rel[..., 1]).astype(np.int64)


def shifted_window_mask(h: int, wd: int, w: int, shift: int) -> np.ndarray:
  """Standard Swin region mask for a shifted (h, wd) token grid: (nW, w*w, w*w), 0 or -100."""
  img = np.zeros((1, h, wd, 1), np.float32)
  cnt = 0
  for hs in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
    for ws in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
      img[:, hs, ws, :] = cnt
      cnt += 1
  win = np.asarray(window_partition(img, w))[..., 0]  # (nW, w*w)
  diff = win[:, None, :] - win[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


def xavier_normal(gain: float):
  """torch.nn.init.xavier_normal_: N(0, gain^2 * 2 / (fan_in + fan_out)), untruncated."""
  return nn.initializers.variance_scaling(gain * gain, 'fan_avg', 'normal')


class WindowAttention(nn.Module):
  dim: int
  num_heads: int
  window_size: int
  reference_compat: bool = False
  dropout: float = 0.0
  linear_init: Any = None
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x, mask, train: bool):
    """x: (B_, N, C) windows of tokens; mask: (nW, N, N) or None."""
    b_, n, c = x.shape
    hd = c // self.num_heads
    qkv = Linear(3 * c, kernel_init=self.linear_init, dtype=self.dtype, name='qkv')(x)
    qkv = qkv.reshape(b_, n, 3, self.num_heads, hd).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    # The reference multiplies by head_dim ** +0.5 (a sign slip); Swin divides by sqrt(head_dim).
    q = q * (hd**0.5 if self.reference_compat else hd**-0.5)
    attn = jnp.einsum('bhnd,bhmd->bhnm', q, k).astype(jnp.float32)

    w = self.window_size
    table = self.param(
      'relative_position_bias_table',
      nn.initializers.truncated_normal(0.02),
      ((2 * w - 1) ** 2, self.num_heads),
      jnp.float32,
    )
    index = relative_position_index(w)
    bias = table[index.reshape(-1)].reshape(n, n, self.num_heads).transpose(2, 0, 1)
    attn = attn + bias[None]
    if mask is not None:
      nw = mask.shape[0]
      attn = attn.reshape(b_ // nw, nw, self.num_heads, n, n) + mask[None, :, None]
      attn = attn.reshape(b_, self.num_heads, n, n)
    attn = jax.nn.softmax(attn, axis=-1).astype(v.dtype)
    out = jnp.einsum('bhnm,bhmd->bhnd', attn, v).transpose(0, 2, 1, 3).reshape(b_, n, c)
    out = Linear(c, kernel_init=self.linear_init, dtype=self.dtype, name='proj')(out)
    return nn.Dropout(self.dropout, deterministic=not train)(out)


class MLP(nn.Module):
  dim: int
  hidden: int
  dropout: float = 0.0
  linear_init: Any = None
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = Linear(self.hidden, kernel_init=self.linear_init, dtype=self.dtype, name='fc_1')(x)
    x = nn.gelu(x, approximate=False)  # PyTorch's nn.GELU is the exact erf form
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = Linear(self.dim, kernel_init=self.linear_init, dtype=self.dtype, name='fc_2')(x)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


class SwinBlock(nn.Module):
  """The reference's STB on a (B, H, W, C) token grid."""

  dim: int
  num_heads: int
  window_size: int
  shift: int
  mlp_ratio: float = 4.0
  alpha: float = 1.0  # DeepNorm residual weight
  beta: float | None = None  # DeepNorm init gain; None = PyTorch default Linear init
  norm_before: bool = False
  reference_compat: bool = False
  dropout: float = 0.0
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    b, h, wd, c = x.shape
    w = self.window_size
    if h % w or wd % w:
      raise ValueError(
        f'token grid {h}x{wd} is not divisible by window_size {w}: the LR input side '
        f'must be a multiple of patch_size * window_size'
      )
    init = xavier_normal(self.beta) if self.beta is not None else None
    norm_1 = nn.LayerNorm(epsilon=LN_EPS, name='norm_1')
    norm_2 = nn.LayerNorm(epsilon=LN_EPS, name='norm_2')
    attn = WindowAttention(c, self.num_heads, w, self.reference_compat, self.dropout, init, self.dtype, name='attn')
    mlp = MLP(c, int(c * self.mlp_ratio), self.dropout, init, self.dtype, name='mlp')
    s = self.shift
    mask = jnp.asarray(shifted_window_mask(h, wd, w, s)) if s > 0 else None

    def attention(t):
      t = t.reshape(b, h, wd, c)
      if s:
        t = jnp.roll(t, (-s, -s), axis=(1, 2))
      t = attn(window_partition(t, w), mask, train)
      t = window_reverse(t, w, h, wd, self.reference_compat)
      if s:
        t = jnp.roll(t, (s, s), axis=(1, 2))
      return t

    def residual(skip, branch):
      # DeepNet: alpha scales the skip; the reference scales the branch instead.
      if self.reference_compat:
        return skip + self.alpha * branch
      return self.alpha * skip + branch

    if self.norm_before:
      x = residual(x, attention(norm_1(x)))
      x = residual(x, mlp(norm_2(x), train))
    else:
      x = norm_1(residual(x, attention(x)))
      x = norm_2(residual(x, mlp(x, train)))
    return x
