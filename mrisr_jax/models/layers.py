"""Building blocks shared by the generators and discriminators.

Everything here mirrors a PyTorch layer exactly (padding, initialisation, channel order), so that
weights move between the frameworks by a transpose and nothing else. Arrays are NHWC.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from mrisr_jax.models.conv import conv2d

Dtype = Any


def torch_uniform_init(fan_in: int):
  """PyTorch's default for Conv/Linear weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Conv2d(nn.Module):
  """`torch.nn.Conv2d` in NHWC: symmetric explicit padding (default k//2), PyTorch init.

  Params: `kernel` (kh, kw, in, out) = torch weight (out, in, kh, kw) transposed (2, 3, 1, 0);
  `bias` (out,).
  """

  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: int | None = None  # None = kernel_size // 2, as the reference's default_conv
  use_bias: bool = True
  dtype: Dtype | None = None  # computation dtype; params stay float32
  kernel_init: Any = None

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    in_ch = x.shape[-1]
    fan_in = in_ch * k * k
    kernel = self.param(
      'kernel', self.kernel_init or torch_uniform_init(fan_in), (k, k, in_ch, self.features), jnp.float32
    )
    pad = k // 2 if self.padding is None else self.padding
    dtype = self.dtype or x.dtype
    if self.stride == 1:
      y = conv2d(x.astype(dtype), kernel.astype(dtype), (pad, pad))
    else:
      y = jax.lax.conv_general_dilated(
        x.astype(dtype),
        kernel.astype(dtype),
        window_strides=(self.stride, self.stride),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      )
    if self.use_bias:
      bias = self.param('bias', torch_uniform_init(fan_in), (self.features,), jnp.float32)
      y = y + bias.astype(dtype)
    return y


class Linear(nn.Module):
  """`torch.nn.Linear`: params `kernel` (in, out) = torch weight (out, in) transposed; `bias`."""

  features: int
  use_bias: bool = True
  dtype: Dtype | None = None
  kernel_init: Any = None

  @nn.compact
  def __call__(self, x):
    in_f = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init or torch_uniform_init(in_f), (in_f, self.features), jnp.float32)
    dtype = self.dtype or x.dtype
    y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
    if self.use_bias:
      bias = self.param('bias', torch_uniform_init(in_f), (self.features,), jnp.float32)
      y = y + bias.astype(dtype)
    return y


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
  """`torch.nn.PixelShuffle(r)` in NHWC.

  Input channel c*r*r + i*r + j lands in output channel c at offset (i, j) of each r x r cell,
  which is PyTorch's order; any other order breaks exported weights.
  """
  b, h, w, c = x.shape
  oc = c // (r * r)
  x = x.reshape(b, h, w, oc, r, r)
  x = x.transpose(0, 1, 4, 2, 5, 3)  # b, h, i, w, j, oc
  return x.reshape(b, h * r, w * r, oc)


def pixel_unshuffle(x: jax.Array, r: int) -> jax.Array:
  """Inverse of `pixel_shuffle` (`torch.nn.PixelUnshuffle`)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // r, r, w // r, r, c)
  x = x.transpose(0, 1, 3, 5, 2, 4)  # b, h, w, c, i, j
  return x.reshape(b, h // r, w // r, c * r * r)


def upsampler_stages(scale: int) -> Sequence[int]:
  """PixelShuffle factors of the reference `Upsampler`: x2 -> [2], x3 -> [3], x4 -> [2, 2]."""
  if scale == 3:
    return (3,)
  if scale in (2, 4, 8):
    return (2,) * int(math.log2(scale))
  raise ValueError(f'scale {scale!r} is not supported: the upsampler takes 2, 3 or 4')


class Upsampler(nn.Module):
  """Reference `Upsampler(scale, ngf)`: [conv3x3 ngf -> r*r*ngf (no bias), PixelShuffle(r)]*."""

  scale: int
  features: int
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    for i, r in enumerate(upsampler_stages(self.scale)):
      x = Conv2d(self.features * r * r, 3, use_bias=False, dtype=self.dtype, name=f'conv_{i}')(x)
      x = pixel_shuffle(x, r)
    return x
