"""The perceptual-loss SR network of Johnson et al. 2016 (seed 003, a Keras port for cardiac MR).

conv9x9 -> BN -> ReLU; `num_resblocks` x [conv3x3-BN-ReLU-conv3x3-BN + skip]; log2(scale) x
upscaling block [up x2 -> BN -> ReLU]; conv9x9 -> out_channels. All convs are 'same'-padded
(k // 2), so the output is exactly scale x the input.

Upscaling (`upsample`): 'transposed' = ConvTranspose2d(3, stride 2, padding 1, output_padding 1),
Johnson's fractionally strided conv (Keras Conv2DTranspose(3, 2, 'same') has the same geometry);
'nearest' = nearest-neighbour x2 then conv3x3, the seed's fix for checkerboard artifacts.

Choices where the sources leave things open: the output is linear (Johnson's scaled tanh targets
[0, 255]; our images are [0, 1] and, as CASR, we do not squash or clamp); convs that feed a
BatchNorm have no bias (a training-mode BatchNorm subtracts it again, so it would never learn).
The input is used as is ([0, 1], the LR image, not upsampled).

flax variable                              plain torch.nn port key           transform
params/conv_in/kernel (9,9,in,F)           conv_in.weight (F,in,9,9)         transpose (3,2,0,1)
params/res_{i}/conv{1,2}/kernel            res_{i}.conv{1,2}.weight          transpose (3,2,0,1)
params/up_{i}/conv/kernel ('nearest')      up_{i}.conv.weight (out,in,3,3)   transpose (3,2,0,1)
params/up_{i}/deconv/kernel ('transposed') up_{i}.deconv.weight (in,out,3,3) transpose (2,3,0,1)
params/conv_out/kernel, bias               conv_out.weight, conv_out.bias    transpose (3,2,0,1), copy
params/.../{bn}/scale, bias                ....{bn}.weight, .bias            copy
  (bn = bn_in, res_{i}/bn{1,2}, up_{i}/bn)
batch_stats/.../{bn}/mean, var             ....{bn}.running_mean, .running_var  copy
batch_stats/.../{bn}/num_batches_tracked   ....{bn}.num_batches_tracked      int32 <-> int64
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax.numpy as jnp
from flax import linen as nn

from mrisr_jax.models.base import SRGenerator
from mrisr_jax.models.layers import Conv2d
from mrisr_jax.models.norm import TorchBatchNorm
from mrisr_jax.models.srdcgan import ConvTranspose2d

Dtype = Any

UPSAMPLE_MODES = ('transposed', 'nearest')


def upsample_nearest_2x(x):
  """`torch.nn.Upsample(scale_factor=2, mode='nearest')` / Keras `UpSampling2D(2)` in NHWC."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResidualBlock(nn.Module):
  """Johnson's residual block: conv3x3-BN-ReLU-conv3x3-BN plus the input (no ReLU after the sum)."""

  features: int
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    h = Conv2d(self.features, 3, use_bias=False, dtype=self.dtype, name='conv1')(x)
    h = nn.relu(TorchBatchNorm(use_running_average=not train, dtype=self.dtype, name='bn1')(h))
    h = Conv2d(self.features, 3, use_bias=False, dtype=self.dtype, name='conv2')(h)
    h = TorchBatchNorm(use_running_average=not train, dtype=self.dtype, name='bn2')(h)
    return h + x


class UpscaleBlock(nn.Module):
  """x2: ConvTranspose2d(3, 2, 1, output_padding 1) or nearest x2 + conv3x3; then BN and ReLU."""

  features: int
  mode: str
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    if self.mode == 'transposed':
      x = ConvTranspose2d(
        self.features, 3, stride=2, padding=1, output_padding=1, use_bias=False, dtype=self.dtype, name='deconv'
      )(x)
    else:
      x = Conv2d(self.features, 3, use_bias=False, dtype=self.dtype, name='conv')(upsample_nearest_2x(x))
    return nn.relu(TorchBatchNorm(use_running_average=not train, dtype=self.dtype, name='bn')(x))


class PerceptualSRNet(SRGenerator):
  features: int = 64  # width of every layer but the last
  num_resblocks: int = 4
  upsample: str = 'transposed'  # 'transposed' (Johnson, seed Model 1/3) or 'nearest' (seed Model 2/4)
  supported_scales: ClassVar[tuple[int, ...]] = (2, 4)  # one x2 upscaling block per factor of 2
  choices: ClassVar[dict[str, tuple[str, ...]]] = {'upsample': UPSAMPLE_MODES}

  @nn.compact
  def __call__(self, x, train: bool = False):
    self.check_fields()
    x = Conv2d(self.features, 9, use_bias=False, dtype=self.dtype, name='conv_in')(x)
    x = nn.relu(TorchBatchNorm(use_running_average=not train, dtype=self.dtype, name='bn_in')(x))
    for i in range(self.num_resblocks):
      x = ResidualBlock(self.features, self.dtype, name=f'res_{i}')(x, train)
    for i in range(int(math.log2(self.scale))):
      x = UpscaleBlock(self.features, self.upsample, self.dtype, name=f'up_{i}')(x, train)
    x = Conv2d(self.out_channels, 9, dtype=self.dtype, name='conv_out')(x)
    return x.astype(jnp.float32)
