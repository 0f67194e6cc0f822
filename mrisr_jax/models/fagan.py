"""FA-GAN (Jiang et al., 2021): fused attentive generator and a spectrally normalised discriminator.

Generator (NHWC, images in [0, 1], no output clamp):

  head conv9x9 + PReLU -> n_lffb x LFFB -> conv3x3 (+ head output, global skip)
  -> [GFFB if attention_at='lr'] -> log2(scale) x [conv3x3 F -> 4F, PixelShuffle(2), PReLU]
  -> [GFFB if attention_at='hr'] -> conv9x9 F -> out

LFFB(x) = fuse(concat(P3(x), P5(x), P7(x))) + x, P_s = conv_s-ReLU-conv_s-ReLU-conv_s, fuse = 1x1.
GFFB(x) = connect(R, Y), R = channel attention(x), Y = self-attention(x) (parallel branches).

The paper puts the GFFB after upsampling (`attention_at='hr'`). Its self-attention map is (H*W)^2
per image: a 96x96 HR crop is 9216^2 floats (340 MB in float32, per image, before the softmax
copy the backward pass keeps), a 320x320 validation slice 102400^2 floats (42 GB). `'lr'` (the
default) attends over the LR features before upsampling: scale^4 times cheaper (x4: 576^2 for the
same crop), which is what makes whole-slice validation possible.

Parameters -> keys of a plain torch.nn port. Conv kernels HWIO -> weight OIHW by transpose
(3, 2, 0, 1); Linear kernels (in, out) -> weight (out, in) by .T; everything else is copied.

  flax params                               torch state_dict key (torch module)
  head/{kernel,bias}                        head.{weight,bias}        Conv2d(in, F, 9, padding 4)
  head_act/weight                           head_act.weight           PReLU()
  lffb_{i}/path_{p}/conv_{j}/{kernel,bias}  lffbs.{i}.paths.{p}.{2j}.{weight,bias}
                                            (paths: ModuleList of Sequential(conv,ReLU,conv,ReLU,conv))
  lffb_{i}/fuse/*                           lffbs.{i}.fuse.*          Conv2d(3F, F, 1)
  body_conv/*                               body_conv.*               Conv2d(F, F, 3)
  upsample_{i}/conv/*                       upsample.{i}.0.*          Sequential(conv, PixelShuffle(2),
  upsample_{i}/prelu/weight                 upsample.{i}.2.weight                PReLU())
  gffb/channel_attention/fc_reduce/*        gffb.channel_attention.fc_reduce.*   Linear(F, F//r)
  gffb/channel_attention/fc_expand/*        gffb.channel_attention.fc_expand.*   Linear(F//r, F)
  gffb/self_attention/{f,g,h,v}/*           gffb.self_attention.{f,g,h,v}.*      Conv2d(.., 1)
  gffb/self_attention/gamma                 gffb.self_attention.gamma            Parameter (1,)
  tail/*                                    tail.*                    Conv2d(F, out, 9, padding 4)

Discriminator, torch port with `torch.nn.utils.spectral_norm` on every conv/Linear:

  flax                                      torch state_dict key
  params conv_{i}/{kernel,bias}             convs.{i}.weight_orig, convs.{i}.bias   (i = 0..7)
  params dense_{i}/{kernel,bias}            dense.{i}.weight_orig, dense.{i}.bias   (i = 0, 1)
  batch_stats sn_{m}/'{m}/kernel/u' (1, O)  {convs|dense}.{i}.weight_u (O,)
  batch_stats sn_{m}/'{m}/kernel/sigma' ()  none (torch recomputes it)
  none (flax recomputes v)                  *.weight_v = normalize(weight_orig.reshape(O, -1).T @ u)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from mrisr_jax.models.base import SRGenerator
from mrisr_jax.models.layers import Conv2d, Linear, pixel_shuffle

Dtype = Any

CONNECTIONS = ('weighted', 'direct')
ATTENTION_AT = ('lr', 'hr')
HEAD_KERNEL = 9  # SRGAN's head and tail kernels: the paper builds on the SRGAN framework
TAIL_KERNEL = 9

# (feature multiplier of base_features, stride) of the discriminator convs after the stem.
D_BLOCKS: tuple[tuple[int, int], ...] = ((1, 2), (2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2))
D_HEAD_MULTIPLIER = 16  # dense width = 16 * base_features = 1024 by default, as SRGAN
D_NEGATIVE_SLOPE = 0.2


class PReLU(nn.Module):
  """`torch.nn.PReLU()`: one learnable slope, param `weight` (1,) init 0.25 (flax's: 0.01)."""

  @nn.compact
  def __call__(self, x):
    a = self.param('weight', nn.initializers.constant(0.25), (1,), jnp.float32).astype(x.dtype)
    return jnp.where(x >= 0, x, a * x)


def connect_branches(
  r: jax.Array, y: jax.Array, connection: str = 'weighted', alpha: float = 0.5, beta: float = 0.5
) -> jax.Array:
  """GFFB fusion of the channel-attention output R and the self-attention output Y.

  'direct':   alpha * R + beta * Y (the paper's direct connection).
  'weighted': per element, w_R = exp(alpha R) / (exp(alpha R) + exp(beta Y)), w_Y = 1 - w_R,
              out = w_R * R + w_Y * Y. The paper's equation is elided from the text; this is our
              reading of "a softmax form ... weights computed from R and Y, no extra parameters".
  """
  if connection == 'direct':
    return alpha * r + beta * y
  if connection == 'weighted':
    logits = jnp.stack([alpha * r, beta * y], axis=-1).astype(jnp.float32)
    w = jax.nn.softmax(logits, axis=-1).astype(r.dtype)
    return w[..., 0] * r + w[..., 1] * y
  raise ValueError(f'connection={connection!r}: FAGANGenerator supports {", ".join(CONNECTIONS)}')


class ConvPath(nn.Module):
  """One LFFB path: conv_s-ReLU-conv_s-ReLU-conv_s at constant width.

  The paper's "three convolution layers with s x s kernel size and one ReLU intermediate activation
  layer" is read as a ReLU between consecutive convolutions: with a single ReLU, two of the three
  convolutions would compose into one linear map.
  """

  kernel_size: int
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    f = x.shape[-1]
    h = x
    for j in range(3):
      if j:
        h = nn.relu(h)
      h = Conv2d(f, self.kernel_size, dtype=self.dtype, name=f'conv_{j}')(h)
    return h


class LFFB(nn.Module):
  """Local fusion feature block: out = fuse(concat(paths(x))) + x.

  The residual connection is our choice (the paper is silent): the LFFBs take the place of SRGAN's
  residual blocks (without them the paper's ablation "falls back to a network similar to SRGAN"),
  and n_lffb blocks of three-conv-deep paths make a deep trunk that needs identity paths to train.
  The paths are independent: the paper's remark that information "can be shared" between them
  (as MSRN's crossing paths) comes with an elided equation, so no cross connections are guessed.
  """

  kernel_sizes: tuple[int, ...] = (3, 5, 7)
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    f = x.shape[-1]
    paths = [ConvPath(k, self.dtype, name=f'path_{p}')(x) for p, k in enumerate(self.kernel_sizes)]
    return Conv2d(f, 1, dtype=self.dtype, name='fuse')(jnp.concatenate(paths, axis=-1)) + x


class ChannelAttention(nn.Module):
  """x * sigmoid(fc_expand(ReLU(fc_reduce(mean_hw(x))))); hidden width max(1, C // r)."""

  reduction: int = 16
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)  # (B, C)
    s = nn.relu(Linear(max(1, c // self.reduction), dtype=self.dtype, name='fc_reduce')(s))
    s = nn.sigmoid(Linear(c, dtype=self.dtype, name='fc_expand')(s))
    return x * s[:, None, None, :]


class SelfAttention(nn.Module):
  """SAGAN self-attention: out = gamma * v(o) + x, gamma init 0 (so the block starts as identity).

  s_ji = g(x_j) . f(x_i) (no scaling), beta_j = softmax_i(s_j), o_j = sum_i beta_ji h(x_i);
  f, g: 1x1 convs to max(1, C//8) channels, h and v: 1x1 convs keeping C. The softmax runs in
  float32; the (H*W)^2 map is materialised.
  """

  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    ck = max(1, c // 8)
    key = Conv2d(ck, 1, dtype=self.dtype, name='f')(x).reshape(b, hh * ww, ck)
    query = Conv2d(ck, 1, dtype=self.dtype, name='g')(x).reshape(b, hh * ww, ck)
    value = Conv2d(c, 1, dtype=self.dtype, name='h')(x).reshape(b, hh * ww, c)
    logits = jnp.einsum('bjc,bic->bji', query, key)
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(value.dtype)
    o = jnp.einsum('bji,bic->bjc', attn, value).reshape(b, hh, ww, c)
    o = Conv2d(c, 1, dtype=self.dtype, name='v')(o)
    gamma = self.param('gamma', nn.initializers.zeros, (1,), jnp.float32)
    return gamma.astype(o.dtype) * o + x


class GFFB(nn.Module):
  """Global feature fusion block: connect(channel_attention(x), self_attention(x))."""

  reduction: int = 16
  connection: str = 'weighted'
  alpha: float = 0.5
  beta: float = 0.5
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    r = ChannelAttention(self.reduction, self.dtype, name='channel_attention')(x)
    y = SelfAttention(self.dtype, name='self_attention')(x)
    return connect_branches(r, y, self.connection, self.alpha, self.beta)


class UpsampleStage(nn.Module):
  """x2 stage as SRGAN: conv3x3 F -> 4F, PixelShuffle(2), PReLU."""

  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    x = pixel_shuffle(Conv2d(4 * x.shape[-1], 3, dtype=self.dtype, name='conv')(x), 2)
    return PReLU(name='prelu')(x)


class FAGANGenerator(SRGenerator):
  """FA-GAN generator; `__call__(x, train)`: (B, h, w, in) in [0, 1] -> (B, h*s, w*s, out) float32.

  Attributes:
    n_feats: trunk width F.
    n_lffb: number of LFFBs (the paper gives none; 8, as MSRN's multi-scale blocks).
    kernel_sizes: kernel size of each LFFB path (the paper gives none; 3, 5, 7).
    reduction: channel-attention reduction ratio r.
    attention_at: 'lr' = GFFB before upsampling (default, tractable), 'hr' = after (the paper).
    connection: 'weighted' (the paper's choice, softmax form) or 'direct' (alpha R + beta Y).
    alpha, beta: the connection's coefficients on R and Y (0.5 each in the paper).
    dtype: computation dtype; params stay float32, the output is float32.
  """

  n_feats: int = 64
  n_lffb: int = 8
  kernel_sizes: tuple[int, ...] = (3, 5, 7)
  reduction: int = 16
  attention_at: str = 'lr'
  connection: str = 'weighted'
  alpha: float = 0.5
  beta: float = 0.5
  supported_scales: ClassVar[tuple[int, ...]] = (2, 4, 8)
  choices: ClassVar[dict[str, tuple[str, ...]]] = {'attention_at': ATTENTION_AT, 'connection': CONNECTIONS}

  @nn.compact
  def __call__(self, x, train: bool = False):
    self.check_fields()
    f = self.n_feats
    gffb = GFFB(self.reduction, self.connection, self.alpha, self.beta, self.dtype, name='gffb')

    x = PReLU(name='head_act')(Conv2d(f, HEAD_KERNEL, dtype=self.dtype, name='head')(x))
    h = x
    for i in range(self.n_lffb):
      h = LFFB(tuple(self.kernel_sizes), self.dtype, name=f'lffb_{i}')(h)
    h = Conv2d(f, 3, dtype=self.dtype, name='body_conv')(h) + x
    if self.attention_at == 'lr':
      h = gffb(h)
    for i in range(int(math.log2(self.scale))):
      h = UpsampleStage(self.dtype, name=f'upsample_{i}')(h)
    if self.attention_at == 'hr':
      h = gffb(h)
    y = Conv2d(self.out_channels, TAIL_KERNEL, dtype=self.dtype, name='tail')(h)
    return y.astype(jnp.float32)


class FAGANDiscriminator(nn.Module):
  """SRGAN-style conv discriminator with spectral normalisation on every weight; logits (B,).

  The paper gives no architecture, only that SN is used: conv3x3 F + LeakyReLU(0.2), then
  conv3x3 with (features, stride) = (F,2) (2F,1) (2F,2) (4F,1) (4F,2) (8F,1) (8F,2), each +
  LeakyReLU(0.2), no BatchNorm (SN replaces it), global average pool (any input size), dense 16F,
  LeakyReLU(0.2), dense 1. D(x) = sigmoid(logits).

  SN is `flax.linen.SpectralNorm`: every call runs `power_iterations` power-iteration steps from
  the stored `u` and divides the weight by the estimated sigma (the gradient flows through sigma,
  as in PyTorch). `u` and `sigma` live in `batch_stats` and are written only when train=True
  (apply with mutable=['batch_stats']). Unlike torch's spectral_norm, eval mode also iterates
  (from the stored u, without storing), so it is deterministic but not bit-equal to torch's eval.

  Attributes:
    base_features: width F of the first conv (64 as SRGAN).
    power_iterations: power-iteration steps per call (1, as torch's spectral_norm default).
    dtype: computation dtype; params and SN state stay float32, logits are float32.
  """

  base_features: int = 64
  power_iterations: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f'FAGANDiscriminator expects NHWC input, got shape {tuple(x.shape)}')

    def sn(layer, name):
      return nn.SpectralNorm(layer, n_steps=self.power_iterations, name=name)

    f = self.base_features
    x = sn(Conv2d(f, 3, dtype=self.dtype, name='conv_0'), 'sn_conv_0')(x, update_stats=train)
    x = nn.leaky_relu(x, D_NEGATIVE_SLOPE)
    for i, (mult, stride) in enumerate(D_BLOCKS, start=1):
      conv = Conv2d(mult * f, 3, stride=stride, dtype=self.dtype, name=f'conv_{i}')
      x = nn.leaky_relu(sn(conv, f'sn_conv_{i}')(x, update_stats=train), D_NEGATIVE_SLOPE)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # (B, 8F), averaged in float32
    x = sn(Linear(D_HEAD_MULTIPLIER * f, dtype=self.dtype, name='dense_0'), 'sn_dense_0')(x, update_stats=train)
    x = nn.leaky_relu(x, D_NEGATIVE_SLOPE)
    x = sn(Linear(1, dtype=self.dtype, name='dense_1'), 'sn_dense_1')(x, update_stats=train)
    return x.reshape(x.shape[0]).astype(jnp.float32)

  def probs(self, x: jax.Array, train: bool) -> jax.Array:
    """D(x) = sigmoid(logits), shape (B,). Use via `method='probs'`."""
    return jax.nn.sigmoid(self(x, train))
