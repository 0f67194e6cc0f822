"""SR-DCGAN (seed 002): an 8-layer conv generator (x4 by two stride-2 transposed convs) and a
6-conv + dense discriminator, for 60x64 -> 240x256 brain MRI slices.

The seed gives layer counts, strides, activations and where BatchNorm sits, but no widths or kernel
sizes; the choices below are ours (conv3x3 everywhere, 4x4 transposed convs with padding 1 so each
one is exactly x2, 64 generator features, discriminator widths 64-64-128-128-256-256). Convs that
feed a BatchNorm have no bias: a training-mode BatchNorm subtracts it again, so it would never learn.

The seed normalises images with mean = std = 0.5 (to [-1, 1]); our data is in [0, 1], so both
networks normalise on entry and the generator maps its tanh output back: [0, 1] in, [0, 1] out.

`ConvTranspose2d` here is `torch.nn.ConvTranspose2d` (stride, padding, output_padding) in NHWC.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from mrisr_jax.models.base import SRGenerator
from mrisr_jax.models.layers import Conv2d, Linear, torch_uniform_init
from mrisr_jax.models.norm import TorchBatchNorm

Dtype = Any

TRANSPOSED_LAYERS = (3, 6)  # the generator's stride-2 upsampling layers (1-based, as the seed)
DISCRIMINATOR_STRIDES = (1, 2, 2, 2, 2, 1)  # 240x256 -> 15x16


def conv_transpose_torch(
  x: jax.Array, kernel: jax.Array, stride: int, padding: int, output_padding: int = 0
) -> jax.Array:
  """`torch.nn.functional.conv_transpose2d` (no bias) on NHWC input.

  kernel: (kh, kw, in, out) = torch weight (in, out, kh, kw) transposed (2, 3, 0, 1), NOT flipped.
  Output side: (n - 1) * stride - 2 * padding + k + output_padding, as PyTorch.
  A transposed conv is a conv of the stride-dilated input with the spatially flipped kernel,
  padded by k - 1 - padding on each side (plus output_padding at the end).
  """
  if not 0 <= output_padding < stride:
    raise ValueError(f'output_padding must be in [0, stride), got {output_padding} for stride {stride}')
  kh, kw = kernel.shape[:2]
  pad = ((kh - 1 - padding, kh - 1 - padding + output_padding), (kw - 1 - padding, kw - 1 - padding + output_padding))
  return jax.lax.conv_general_dilated(
    x,
    kernel[::-1, ::-1],
    window_strides=(1, 1),
    padding=pad,
    lhs_dilation=(stride, stride),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )


class ConvTranspose2d(nn.Module):
  """`torch.nn.ConvTranspose2d` in NHWC, PyTorch init.

  Params: `kernel` (kh, kw, in, out) = torch weight (in, out, kh, kw) transposed (2, 3, 0, 1);
  `bias` (out,). PyTorch's fan-in for a transposed conv weight is out * kh * kw (its dim 1), so the
  init bound is 1/sqrt(out * k * k) for both.
  """

  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  output_padding: int = 0
  use_bias: bool = True
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    init = torch_uniform_init(self.features * k * k)
    kernel = self.param('kernel', init, (k, k, x.shape[-1], self.features), jnp.float32)
    dtype = self.dtype or x.dtype
    y = conv_transpose_torch(x.astype(dtype), kernel.astype(dtype), self.stride, self.padding, self.output_padding)
    if self.use_bias:
      y = y + self.param('bias', init, (self.features,), jnp.float32).astype(dtype)
    return y


class SRDCGANGenerator(SRGenerator):
  """conv1..conv8; conv3 and conv6 are ConvTranspose2d(4, stride 2, pad 1) (x2 each), the rest
  conv3x3 stride 1; BatchNorm + ReLU after conv1..conv7; conv8 -> tanh.

  Output = tanh(conv8) * input_std + input_mean: the seed's HR normalisation undone, which is
  [0, 1] for the default mean = std = 0.5.

  flax variable (i = 1..8; BN i = 1..7)        plain torch.nn port key      transform
  params/conv{i}/kernel (3,3,in,out)           conv{i}.weight (out,in,3,3)  transpose (3,2,0,1)
  params/conv{3,6}/kernel (4,4,in,out)         conv{3,6}.weight (in,out,4,4) transpose (2,3,0,1)
  params/conv8/bias                            conv8.bias                   copy
  params/bn{i}/scale, bias                     bn{i}.weight, bn{i}.bias     copy
  batch_stats/bn{i}/mean, var                  bn{i}.running_mean, running_var  copy
  batch_stats/bn{i}/num_batches_tracked        bn{i}.num_batches_tracked    int32 <-> int64
  """

  features: int = 64  # width of conv1..conv7
  input_mean: float = 0.5  # the seed's Normalize(mean, std), applied on entry and undone on exit
  input_std: float = 0.5
  supported_scales: ClassVar[tuple[int, ...]] = (4,)  # two stride-2 transposed convs

  @nn.compact
  def __call__(self, x, train: bool = False):
    self.check_fields()
    x = (x.astype(jnp.float32) - self.input_mean) / self.input_std
    for i in range(1, 8):
      if i in TRANSPOSED_LAYERS:
        x = ConvTranspose2d(self.features, 4, stride=2, padding=1, use_bias=False, dtype=self.dtype, name=f'conv{i}')(x)
      else:
        x = Conv2d(self.features, 3, use_bias=False, dtype=self.dtype, name=f'conv{i}')(x)
      x = TorchBatchNorm(use_running_average=not train, dtype=self.dtype, name=f'bn{i}')(x)
      x = nn.relu(x)
    x = Conv2d(self.out_channels, 3, dtype=self.dtype, name='conv8')(x)
    return jnp.tanh(x.astype(jnp.float32)) * self.input_std + self.input_mean


class SRDCGANDiscriminator(nn.Module):
  """conv1..conv6 (3x3, pad 1, strides 1,2,2,2,2,1), BatchNorm on conv2..conv6, LeakyReLU(0.2)
  after each (conv -> BN -> LeakyReLU); flatten in PyTorch (C, H, W) order; `dense` -> 1 logit.

  `__call__(x, train) -> logits (B,)`; D(x) = sigmoid(logits), the sigmoid lives in the loss. The
  dense layer's input size is fixed at init by the image size (240x256 -> 15x16 x features[-1]).

  flax variable                                plain torch.nn port key      transform
  params/conv{i}/kernel (3,3,in,out)           conv{i}.weight (out,in,3,3)  transpose (3,2,0,1)
  params/conv1/bias                            conv1.bias                   copy
  params/bn{i}/scale, bias (i = 2..6)          bn{i}.weight, bn{i}.bias     copy
  batch_stats/bn{i}/mean, var                  bn{i}.running_mean, running_var  copy
  batch_stats/bn{i}/num_batches_tracked        bn{i}.num_batches_tracked    int32 <-> int64
  params/dense/kernel (C*H*W, 1)               dense.weight (1, C*H*W)      transpose
  params/dense/bias                            dense.bias                   copy
  """

  features: tuple[int, ...] = (64, 64, 128, 128, 256, 256)  # widths of conv1..conv6
  negative_slope: float = 0.2
  input_mean: float = 0.5  # the seed's Normalize(mean, std), so D sees what the seed's D sees
  input_std: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if len(self.features) != len(DISCRIMINATOR_STRIDES):
      raise ValueError(
        f'SRDCGANDiscriminator needs {len(DISCRIMINATOR_STRIDES)} conv widths, got features={tuple(self.features)}'
      )
    x = (x.astype(jnp.float32) - self.input_mean) / self.input_std
    for i, (features, stride) in enumerate(zip(self.features, DISCRIMINATOR_STRIDES), start=1):
      x = Conv2d(features, 3, stride=stride, padding=1, use_bias=i == 1, dtype=self.dtype, name=f'conv{i}')(x)
      if i > 1:
        x = TorchBatchNorm(use_running_average=not train, dtype=self.dtype, name=f'bn{i}')(x)
      x = nn.leaky_relu(x, self.negative_slope)
    b = x.shape[0]
    x = x.transpose(0, 3, 1, 2).reshape(b, -1)  # torch.flatten of NCHW: the dense weight maps 1:1
    logits = Linear(1, dtype=self.dtype, name='dense')(x)
    return logits.reshape(b).astype(jnp.float32)
