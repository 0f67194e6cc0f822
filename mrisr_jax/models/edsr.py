"""EDSR (no mean shift, as the CASRGAN reference): head conv, residual body, upsampler + tail.

Parameter mapping (flax -> reference state_dict; conv kernel HWIO = torch weight OIHW transposed;
n = n_resblocks; the upsampler has no bias):

  head                          model_1.0
  body_{i}/conv_0, conv_1       model_2.{i}.model.0, model_2.{i}.model.2     (i < n)
  body_conv                     model_2.{n}
  upsampler/conv_{j}            model_3.0.model.{2j}                         (weight only)
  tail                          model_3.1
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax.numpy as jnp
from flax import linen as nn

from mrisr_jax.models.base import SRGenerator
from mrisr_jax.models.layers import Conv2d, Upsampler

Dtype = Any


class ResBlock(nn.Module):
  """x + res_scale * conv(ReLU(conv(x)))."""

  features: int
  kernel_size: int
  res_scale: float
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    h = nn.relu(Conv2d(self.features, self.kernel_size, dtype=self.dtype, name='conv_0')(x))
    h = Conv2d(self.features, self.kernel_size, dtype=self.dtype, name='conv_1')(h)
    return h * self.res_scale + x


class EDSR(SRGenerator):
  """EDSR on the LR image; output (B, h*scale, w*scale, out_channels).

  Attributes:
    n_resblocks: residual blocks in the body.
    n_feats: feature channels F.
    res_scale: multiplier of each residual branch (0.1 for the 32x256 model).
    kernel_size: of the head, body and tail convs (odd); the upsampler convs are always 3x3.
  """

  n_resblocks: int = 32
  n_feats: int = 256
  res_scale: float = 0.1
  kernel_size: int = 3
  odd_fields: ClassVar[tuple[str, ...]] = ('kernel_size',)

  @nn.compact
  def __call__(self, x, train: bool = False):
    self.check_fields()
    k, f = self.kernel_size, self.n_feats
    x = Conv2d(f, k, dtype=self.dtype, name='head')(x)
    h = x
    for i in range(self.n_resblocks):
      h = ResBlock(f, k, self.res_scale, self.dtype, name=f'body_{i}')(h)
    h = Conv2d(f, k, dtype=self.dtype, name='body_conv')(h) + x
    h = Upsampler(self.scale, f, dtype=self.dtype, name='upsampler')(h)
    h = Conv2d(self.out_channels, k, dtype=self.dtype, name='tail')(h)
    return h.astype(jnp.float32)
