"""DRRN (deep recursive residual network) on the bicubic-upsampled LR image, as the reference.

Each recursive block applies ONE residual unit U times (shared weights), every time adding the
block's entry features h0: h <- conv(ReLU(conv(ReLU(h)))) + h0. Output = input + recon(h).

Parameter mapping (flax -> reference state_dict; conv kernel HWIO = torch weight OIHW transposed):

  block_{b}/entry                   rbs.{b}.conv1.1                  ReLU -> conv in -> F
  block_{b}/residual_unit/conv_0    rbs.{b}.residule_unit.conv.1     ReLU -> conv F -> F
  block_{b}/residual_unit/conv_1    rbs.{b}.residule_unit.conv.3     ReLU -> conv F -> F
  recon                             recon.1                          ReLU -> conv F -> out
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax.numpy as jnp
from flax import linen as nn

from mrisr_jax.models.base import SRGenerator
from mrisr_jax.models.layers import Conv2d

Dtype = Any


class ResidualUnit(nn.Module):
  """ReLU -> conv -> ReLU -> conv (the residual branch; the caller adds h0)."""

  features: int
  kernel_size: int
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, h):
    h = Conv2d(self.features, self.kernel_size, dtype=self.dtype, name='conv_0')(nn.relu(h))
    return Conv2d(self.features, self.kernel_size, dtype=self.dtype, name='conv_1')(nn.relu(h))


class RecursiveBlock(nn.Module):
  num_units: int
  features: int
  kernel_size: int
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    h0 = Conv2d(self.features, self.kernel_size, dtype=self.dtype, name='entry')(nn.relu(x))
    unit = ResidualUnit(self.features, self.kernel_size, self.dtype, name='residual_unit')
    h = h0
    for _ in range(self.num_units):  # the same submodule each time: one set of weights
      h = unit(h) + h0
    return h


class DRRN(SRGenerator):
  """DRRN B{num_recursive_blocks}U{num_units}; `scale` only selects the data.

  Attributes:
    num_recursive_blocks: B, recursive blocks in sequence (the first maps in -> F, the rest F -> F).
    num_units: U, applications of each block's shared residual unit.
    features: F, the reference's ngf.
    kernel_size: of every conv (odd, so that padding k//2 keeps the size).
  """

  num_recursive_blocks: int = 1
  num_units: int = 25
  features: int = 128
  kernel_size: int = 3
  upsampled_input: ClassVar[bool] = True
  odd_fields: ClassVar[tuple[str, ...]] = ('kernel_size',)

  @nn.compact
  def __call__(self, x, train: bool = False):
    self.check_fields()
    if self.out_channels != x.shape[-1]:
      raise ValueError(
        f'DRRN: output = input + recon needs out_channels == input channels, got {self.out_channels} and {x.shape[-1]}'
      )
    h = x
    for b in range(self.num_recursive_blocks):
      h = RecursiveBlock(self.num_units, self.features, self.kernel_size, self.dtype, name=f'block_{b}')(h)
    recon = Conv2d(self.out_channels, self.kernel_size, dtype=self.dtype, name='recon')(nn.relu(h))
    return x.astype(jnp.float32) + recon.astype(jnp.float32)
