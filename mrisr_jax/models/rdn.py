"""RDN (residual dense network), as the CASRGAN reference.

The D residual dense blocks run as a plain Python loop: XLA:CPU runs `nn.scan` bodies far slower
than straight-line code, and unrolled the x4 seed model compiles a whole Adam train step (batch 16,
24x24 LR) in about 7 s on a 2-core CPU.

Parameter mapping (flax -> reference state_dict; conv kernel HWIO = torch weight OIHW transposed):

  sfe1, sfe2                 SFE1, SFE2
  rdb_{d}/conv_{c}           RDBs.{d}.convs.{c}.conv.0      conv3x3 G0 + c*G -> G, ReLU
  rdb_{d}/lff                RDBs.{d}.LFF                   conv1x1 G0 + C*G -> G0
  gff_0, gff_1               GFF.0 (1x1, D*G0 -> G0), GFF.1 (k x k)
  upscale_{i}                upscale.{i}   x2/x3: i = 0, 2;  x4: i = 0, 2, 4
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp
from flax import linen as nn

from mrisr_jax.models.base import SRGenerator
from mrisr_jax.models.casr import ResidualDenseBlock
from mrisr_jax.models.layers import Conv2d, pixel_shuffle


class RDN(SRGenerator):
  """RDN on the LR image; output (B, h*scale, w*scale, out_channels).

  Attributes:
    growth_rate0: G0, channels between blocks.
    growth_rate: G, channels each dense layer adds (also the upscale path's width).
    num_layers: C, dense layers per block.
    num_blocks: D, residual dense blocks.
    kernel_size: of SFE1, SFE2, GFF.1 and the upscale convs (odd); the dense layers are 3x3 and
      the fusions 1x1 whatever it is, as in the reference.
  """

  growth_rate0: int = 64
  growth_rate: int = 32
  num_layers: int = 6
  num_blocks: int = 20
  kernel_size: int = 3
  odd_fields: ClassVar[tuple[str, ...]] = ('kernel_size',)

  @nn.compact
  def __call__(self, x, train: bool = False):
    self.check_fields()
    k, g0, g = self.kernel_size, self.growth_rate0, self.growth_rate
    conv = lambda features, size, name: Conv2d(features, size, dtype=self.dtype, name=name)  # noqa: E731

    f1 = conv(g0, k, 'sfe1')(x)
    h = conv(g0, k, 'sfe2')(f1)
    outs = []
    for d in range(self.num_blocks):
      h = ResidualDenseBlock(g, self.num_layers, self.dtype, name=f'rdb_{d}')(h)
      outs.append(h)
    h = conv(g0, 1, 'gff_0')(jnp.concatenate(outs, axis=-1))  # torch.cat(dim=1): channel d*G0 + c
    h = conv(g0, k, 'gff_1')(h) + f1

    if self.scale == 4:
      h = pixel_shuffle(conv(g * 4, k, 'upscale_0')(h), 2)
      h = pixel_shuffle(conv(g * 4, k, 'upscale_2')(h), 2)
      h = conv(self.out_channels, k, 'upscale_4')(h)
    else:
      s = self.scale
      h = pixel_shuffle(conv(g * s * s, k, 'upscale_0')(h), s)
      h = conv(self.out_channels, k, 'upscale_2')(h)
    return h.astype(jnp.float32)
