"""SRCNN (9-1-5, 64/32 filters) on the bicubic-upsampled LR image, as the CASRGAN reference.

Parameter mapping (flax -> reference state_dict; conv kernel HWIO = torch weight OIHW transposed):

  patch_extraction/{kernel,bias}    patch_extraction.{weight,bias}     conv9x9 in -> 64, pad 4
  non_linear_mapping/{kernel,bias}  non_linear_mapping.{weight,bias}   conv1x1 64 -> 32
  reconstruction/{kernel,bias}      reconstruction.{weight,bias}       conv5x5 32 -> out, pad 2
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp
from flax import linen as nn

from mrisr_jax.models.base import SRGenerator
from mrisr_jax.models.layers import Conv2d

# The reference trains the last layer at 0.1x the learning rate; a trainer scales the updates of
# the params whose top-level name is a key here.
LR_MULTIPLIERS = {'reconstruction': 0.1}


class SRCNN(SRGenerator):
  """SRCNN; `scale` only selects the data (the input is already at HR size)."""

  upsampled_input: ClassVar[bool] = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    self.check_fields()
    x = nn.relu(Conv2d(64, 9, dtype=self.dtype, name='patch_extraction')(x))
    x = nn.relu(Conv2d(32, 1, dtype=self.dtype, name='non_linear_mapping')(x))
    x = Conv2d(self.out_channels, 5, dtype=self.dtype, name='reconstruction')(x)
    return x.astype(jnp.float32)
