"""StyleSwin's wavelet discriminator (S:models/discriminator.py) in Flax, NHWC (its R1 penalty: mrisr_jax.prior_steps).

The image is Haar-transformed (DWT: 4*in_channels sub-bands at half resolution) and put through a
1x1 `from_rgbs_0`. Each `convs_{i}` (3x3 ConvLayer, then Blur [1,3,3,1] + stride-2 3x3 conv) halves
the resolution; `from_rgbs_{i+1}` takes the wavelet input down the same step (inverse DWT, Blur +
2x decimation, DWT), projects it with a 1x1 ConvLayer and adds it to the feature. At 4x4: minibatch
stddev (group min(B, 4), one feature), `final_conv` 3x3, flatten in torch's (C, H, W) order,
`final_linear_0` (fused leaky ReLU) and `final_linear_1` -> (B, 1) logits.

Equalised learning rate as StyleSwin (sn=False): every conv / linear keeps its raw `weight` in the
TORCH layout ((O, I, kh, kw) / (out, in)), initialised N(0, 1) (/ lr_mul), and multiplies it by
lr_mul / sqrt(fan_in) at call time; a ConvLayer's conv has no bias, its FusedLeakyReLU has one
(`bias`, zeros): leaky_relu(x + bias, 0.2) * sqrt(2).

Spectral norm (sn=True, StyleSwin's --D_sn): plain convs / linears (torch default init U(+-1/sqrt(fan_in)),
torch layout, no equalised LR) wrapped in torch's classic `spectral_norm` semantics: batch_stats `u`
(O,) and `v` (I*kh*kw,) at the same module path as the weight; sigma = u . (W v) with W =
weight.reshape(O, -1); in train mode (`mutable=['batch_stats']`) one power iteration first updates
v = normalize(W^T u), u = normalize(W v) (as torch does in .train()); in eval mode the stored u, v are
used as they are (as torch's .eval()). final_linear then is Linear(+bias) -> FusedLeakyReLU (the
extra 512 bias) -> Linear(+bias): submodules final_linear_{0,1,2}.

Param tree (sn=False; C at each resolution from `styleswin_d_channels`):
  from_rgbs_{i}/conv/{weight (C, 4*in_channels, 1, 1), bias (C,)}           i = 0..n_blocks
  convs_{i}/conv1/{weight (C, C, 3, 3), bias}, convs_{i}/conv2/{weight (C', C, 3, 3), bias}
  final_conv/{weight (C4, C4 + 1, 3, 3), bias}
  final_linear_0/{weight (C4, 16*C4), bias}, final_linear_1/{weight (1, C4), bias (1,)}
Torch keys: `mrisr_jax.interop.styleswin_d_keys`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from mrisr_jax.models.layers import torch_uniform_init
from mrisr_jax.models.styleswin import EqualLinear, make_kernel, upfirdn2d

BLUR_KERNEL = (1, 3, 3, 1)
SQRT2 = math.sqrt(2.0)
STDDEV_GROUP = 4
STDDEV_FEAT = 1
_CONV_DIMS = ('NHWC', 'OIHW', 'NHWC')


def styleswin_d_channels(size: int, channel_multiplier: int = 2, channel_base: int = 512) -> dict[int, int]:
  """StyleSwin D's {resolution: channels} (resolutions <= size), scaled by channel_base / 512."""
  base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
  out = {}
  for r, c in base.items():
    if r <= size:
      c = c * channel_multiplier if r >= 64 else c
      out[r] = c * channel_base // 512
  return out


def haar_filters(inverse: bool = False) -> tuple[np.ndarray, ...]:
  """(ll, lh, hl, hh) 2x2 float32 filters as StyleSwin's get_haar_wavelet; the inverse negates lh and hl."""
  lo = np.full((1, 2), 1 / (2**0.5), np.float32)
  hi = lo.copy()
  hi[0, 0] = -hi[0, 0]
  ll, lh, hl, hh = lo.T * lo, hi.T * lo, lo.T * hi, hi.T * hi
  if inverse:
    lh, hl = -lh, -hl
  return ll, lh, hl, hh


def haar_transform(x: jax.Array) -> jax.Array:
  """HaarTransform: (B, H, W, C) -> (B, H/2, W/2, 4C), channels [ll(C), lh(C), hl(C), hh(C)]."""
  return jnp.concatenate([upfirdn2d(x, f, down=2) for f in haar_filters()], axis=-1)


def inverse_haar_transform(x: jax.Array) -> jax.Array:
  """InverseHaarTransform: (B, H, W, 4C) -> (B, 2H, 2W, C); exact inverse of `haar_transform`."""
  bands = jnp.split(x, 4, axis=-1)
  outs = [upfirdn2d(b, f, up=2, pad=(1, 0, 1, 0)) for b, f in zip(bands, haar_filters(inverse=True))]
  return outs[0] + outs[1] + outs[2] + outs[3]


def downsample(x: jax.Array) -> jax.Array:
  """StyleSwin's Downsample([1,3,3,1]): blur and keep every second sample (pad (1, 1))."""
  p = len(BLUR_KERNEL) - 2
  return upfirdn2d(x, make_kernel(BLUR_KERNEL), down=2, pad=((p + 1) // 2, p // 2))


def fused_leaky_relu(x: jax.Array, bias: jax.Array) -> jax.Array:
  """leaky_relu(x + bias, 0.2) * sqrt(2), bias over the last (channel / feature) axis."""
  return jax.nn.leaky_relu(x + bias.astype(x.dtype), 0.2) * SQRT2


def _normalize(v: jax.Array) -> jax.Array:
  """torch.nn.functional.normalize(v, dim=0, eps=1e-12)."""
  return v / jnp.maximum(jnp.linalg.norm(v), 1e-12)


def _spectral_normed(module: nn.Module, weight: jax.Array, train: bool) -> jax.Array:
  """torch.nn.utils.spectral_norm (one power iteration, dim 0) with u, v in `batch_stats`."""
  rows = weight.shape[0]
  mat = weight.reshape(rows, -1)

  def init(n):
    return lambda: _normalize(jax.random.normal(module.make_rng('params'), (n,), jnp.float32))

  u_var = module.variable('batch_stats', 'u', init(rows))
  v_var = module.variable('batch_stats', 'v', init(mat.shape[1]))
  u, v = u_var.value.astype(weight.dtype), v_var.value.astype(weight.dtype)
  if train and not module.is_initializing():
    m = lax.stop_gradient(mat)
    hi = lax.Precision.HIGHEST
    v = _normalize(jnp.matmul(m.T, u, precision=hi))
    u = _normalize(jnp.matmul(m, v, precision=hi))
    u_var.value, v_var.value = u.astype(u_var.value.dtype), v.astype(v_var.value.dtype)
  u, v = lax.stop_gradient(u), lax.stop_gradient(v)
  sigma = jnp.dot(u, jnp.matmul(mat, v, precision=lax.Precision.HIGHEST), precision=lax.Precision.HIGHEST)
  return weight / sigma


class FusedLeakyReLU(nn.Module):
  """op.FusedLeakyReLU: param `bias` (C,) zeros."""

  @nn.compact
  def __call__(self, x):
    return fused_leaky_relu(x, self.param('bias', nn.initializers.zeros, (x.shape[-1],), jnp.float32))


class SNLinear(nn.Module):
  """spectral_norm(nn.Linear(in, features)): `weight` (out, in) and `bias`, torch default init."""

  features: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    fan_in = x.shape[-1]
    weight = self.param('weight', torch_uniform_init(fan_in), (self.features, fan_in), jnp.float32)
    bias = self.param('bias', torch_uniform_init(fan_in), (self.features,), jnp.float32)
    weight = _spectral_normed(self, weight.astype(x.dtype), train)
    return x @ weight.T + bias.astype(x.dtype)


class ConvLayer(nn.Module):
  """StyleSwin D's ConvLayer (bias=True, activate=True): [Blur] + conv without bias + FusedLeakyReLU.

  Params `weight` (O, I, k, k) torch layout (equalised: N(0,1), scale 1/sqrt(I*k*k); sn: torch default
  init, spectral-normed) and `bias` (O,), the activation's. downsample: Blur([1,3,3,1], pad
  ((p+1)//2, p//2), p = 2 + k - 1), then the conv at stride 2 without padding; else padding k//2.
  """

  features: int
  kernel_size: int
  downsample: bool = False
  sn: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    k, c_in = self.kernel_size, x.shape[-1]
    fan_in = c_in * k * k
    if self.downsample:
      p = (len(BLUR_KERNEL) - 2) + (k - 1)
      x = upfirdn2d(x, make_kernel(BLUR_KERNEL), pad=((p + 1) // 2, p // 2))
      stride, pad = 2, 0
    else:
      stride, pad = 1, k // 2
    shape = (self.features, c_in, k, k)
    if self.sn:
      weight = self.param('weight', torch_uniform_init(fan_in), shape, jnp.float32)
      weight = _spectral_normed(self, weight.astype(x.dtype), train)
    else:
      weight = self.param('weight', nn.initializers.normal(1.0), shape, jnp.float32)
      weight = weight.astype(x.dtype) * (1 / math.sqrt(fan_in))
    y = lax.conv_general_dilated(x, weight, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=_CONV_DIMS)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    return fused_leaky_relu(y, bias)


class FromRGB(nn.Module):
  """FromRGB: [inverse DWT, Downsample, DWT] the wavelet input, 1x1 ConvLayer `conv`, + skip.
  Returns (wavelet input, feature)."""

  features: int
  downsample: bool = True
  sn: bool = False

  @nn.compact
  def __call__(self, wav, skip=None, train=False):
    if self.downsample:
      wav = haar_transform(downsample(inverse_haar_transform(wav)))
    out = ConvLayer(self.features, 1, sn=self.sn, name='conv')(wav, train)
    return wav, out if skip is None else out + skip


class ConvBlock(nn.Module):
  """ConvBlock: conv1 (3x3, in -> in), conv2 (Blur + 3x3 stride 2, in -> out)."""

  in_features: int
  features: int
  sn: bool = False

  @nn.compact
  def __call__(self, x, train=False):
    x = ConvLayer(self.in_features, 3, sn=self.sn, name='conv1')(x, train)
    return ConvLayer(self.features, 3, downsample=True, sn=self.sn, name='conv2')(x, train)


def minibatch_stddev(x: jax.Array, group: int, n_feat: int = STDDEV_FEAT) -> jax.Array:
  """StyleSwin's minibatch stddev feature map (B, H, W, n_feat): samples b, b + B/g, ... form a group
  (torch's view(group, -1, ...)); sqrt(biased var + 1e-8) averaged over C/n_feat, H, W."""
  b, h, w, c = x.shape
  y = x.reshape(group, b // group, h, w, n_feat, c // n_feat)
  y = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)
  y = jnp.mean(y, axis=(1, 2, 4))  # (B/g, n_feat)
  return jnp.tile(y[:, None, None, :], (group, h, w, 1))


class StyleSwinDiscriminator(nn.Module):
  """StyleSwin's Discriminator(size, channel_multiplier, sn); x (B, size, size, in_channels) -> (B, 1).

  B must be divisible by min(B, 4) (the minibatch-stddev group), as in torch. size >= 16 (at 8
  StyleSwin's own D cannot run: its last from_rgb would reach 2x2). sn=True keeps u, v in
  `batch_stats`; train=True then needs `mutable=['batch_stats']` (sn=False has no batch_stats and
  ignores `train`).
  """

  size: int = 256
  channel_multiplier: int = 2
  channel_base: int = 512
  in_channels: int = 3
  sn: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    size = self.size
    if size < 16 or size & (size - 1):
      raise ValueError(f'StyleSwinDiscriminator.size must be a power of 2 >= 16, got {size}')
    if x.shape[1:] != (size, size, self.in_channels):
      raise ValueError(f'expected input (B, {size}, {size}, {self.in_channels}), got {x.shape}')
    batch = x.shape[0]
    group = min(batch, STDDEV_GROUP)
    if batch % group:
      raise ValueError(f'batch {batch} is not divisible by the minibatch-stddev group {group}')
    ch = styleswin_d_channels(size, self.channel_multiplier, self.channel_base)
    log_size = int(math.log2(size)) - 1

    wav = haar_transform(x)
    out = None
    in_ch = ch[size]
    for n, i in enumerate(range(log_size, 2, -1)):
      wav, out = FromRGB(in_ch, n > 0, sn=self.sn, name=f'from_rgbs_{n}')(wav, out, train)
      out_ch = ch[2 ** (i - 1)]
      out = ConvBlock(in_ch, out_ch, sn=self.sn, name=f'convs_{n}')(out, train)
      in_ch = out_ch
    _, out = FromRGB(ch[4], True, sn=self.sn, name=f'from_rgbs_{log_size - 2}')(wav, out, train)

    out = jnp.concatenate([out, minibatch_stddev(out, group)], axis=-1)
    out = ConvLayer(ch[4], 3, sn=self.sn, name='final_conv')(out, train)
    out = jnp.transpose(out, (0, 3, 1, 2)).reshape(batch, -1)  # torch's view(B, -1) of NCHW
    if self.sn:
      out = SNLinear(ch[4], name='final_linear_0')(out, train)
      out = FusedLeakyReLU(name='final_linear_1')(out)
      return SNLinear(1, name='final_linear_2')(out, train)
    out = EqualLinear(ch[4], activation='fused_lrelu', name='final_linear_0')(out)
    return EqualLinear(1, name='final_linear_1')(out)
