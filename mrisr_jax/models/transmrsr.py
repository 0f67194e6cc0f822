"""TransMRSR (Huang et al.): a Swin encoder that drives a pretrained StyleSwin synthesis network.

What the public `TGP7` (networks/network_Transmrsr7.py, github:goddesshs/TransMRSR) computes, in NHWC
(see ../shared/reference/transmrsr_reference.md, sections 3.2 and 4):

  x_in     the LR slice already resampled to the HR grid, zero-padded to `size` x `size`
  shallow  = conv2d(x_in): conv3x3(in -> C0) -> ReLU -> 2 x [x + conv3x3(ReLU(conv3x3(x)))]
  t        = LayerNorm(shallow)                                    (patch_embed, patch 1)
  encoder  log2(size) - 2 stages (RSTB + PatchMerging): 2 Swin blocks (pre-norm; window 8, or the
           whole grid at 8 px; block 1 shifted by 4 where the grid is larger than 8; q NOT scaled by
           head_dim**-0.5, as the public code, unless `encoder_q_scale`), then t = conv3x3(t) + t, then
           PatchMerging: concat [x0::2,0::2 | x1::2,0::2 | x0::2,1::2 | x1::2,1::2] -> LN(4C) ->
           Linear(4C -> C_out, no bias). Stage i ends at size / 2**(i+1) px.
  heads    `encoder_heads='public'`: stage i takes max(channels[4 * 2**i] // 32, 4), the public model's
           head list read in reverse resolution order (16 heads on the 64-channel 256-px stage);
           'by_resolution': max(C // 32, 4) of the stage's own width C.
  latents  LayerNorm(4x4 tokens) -> flatten token-major -> EqualLinear(16*C_4 -> n_latent*style_dim,
           lr_mul=lr_mlp, fused_lrelu) -> (B, n_latent, style_dim)
  SDT      per latent slot: c = centroids[argmin (sdt='nearest', the paper) | argmax ('farthest', the
           public code) of the squared distance], w = c + psi * (w - c), no gradient into c; 'off' skips.
  CWSS     per encoder output F_i: scale_i, shift_i = EqualConv(C->C, 3x3) -> ScaledLeakyReLU ->
           EqualConv(C->C/2, 3x3) (two separate heads); decoder layer k (input 4 * 2**k px) applies
           x[..., :C/2] = x[..., :C/2] * scale + shift with the encoder output of its resolution.
  decoder  `generator`: the StyleSwin `Synthesis` (its constant input, no mapping net, no ToRGB);
           its param subtree equals a StyleSwinGenerator's params['synthesis'].
  y        = conv_last(conv_deep(decoder + shallow)) + x_in; conv_deep is the conv2d block at C0 -> C0,
           conv_last a 1x1 conv to the output channels.

The public model also instantiates an `MAB` and six `fusion_convs` that its forward never calls; they
are left out here: 160,842,497 params at size 256 (as the public forward uses) against 183,558,788
in the public model as instantiated.

`imagenet_input=True` is the public data convention: a grey [0, 1] input is replicated to 3 channels
and ImageNet-normalised inside the model (zero padding is applied before, so it becomes -mean/std as
in the public loader), the network runs on 3 channels, and its output is un-normalised and averaged
back to `out_channels` = 1. Otherwise the network runs on `in_channels` -> `out_channels` directly.

SDT centroids live in `batch_stats/sdt/centroids` (n_centroids, style_dim), zeros at init (restore
them from a centroid file); they are never a param. With sdt='off' the variable is not created.

Initialisation follows the public constructor (before any checkpoint): encoder Linear weights
and relative-position tables trunc_normal(0.02) (cut at +-2), biases 0, LayerNorms 1/0, plain
convs PyTorch's default, Equal* layers N(0, 1) (EqualLinear / lr_mul).

flax variable                                       torch key (public TGP7)
params/conv2d/conv_L1/{kernel,bias}                 conv2d.conv_L1.{weight,bias}        conv
params/conv2d/blk_L1_{j}/conv{1,2}/{kernel,bias}    conv2d.blk_L1.{j}.conv{1,2}.*       conv
params/patch_embed/{scale,bias}                     patch_embed.norm.{weight,bias}
params/layers_{i}/blocks_{j}/norm{1,2}/*            layers.{i}.residual_group.blocks.{j}.norm{1,2}.*
params/layers_{i}/blocks_{j}/attn/relative_position_bias_table, attn/{qkv,proj}/*, mlp/fc{1,2}/*
params/layers_{i}/conv/*                            layers.{i}.conv.*                   conv
params/layers_{i}/downsample/{norm,reduction}       layers.{i}.downsample.{norm,reduction}
params/norm, params/final_layers/{weight,bias}      norm.*, final_layers.* (torch layout already)
params/condition_{scale,shift}_{i}/conv_{0,2}/*     condition_{scale,shift}.{i}.{0,2}.* (torch layout)
params/generator/...                                generator.... (the StyleSwin synthesis)
params/conv_deep/..., params/conv_last/*            conv_deep...., conv_last.*
(the full table with transforms: mrisr_jax.interop.transmrsr_keys.transmrsr_key_map)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from mrisr_jax.models.base import SRGenerator
from mrisr_jax.models.layers import Conv2d
from mrisr_jax.models.styleswin import (
  EqualConv2d,
  EqualLinear,
  Synthesis,
  scaled_leaky_relu,
  styleswin_channels,
  torch_trunc_normal,
)
from mrisr_jax.models.swin import LN_EPS, relative_position_index, shifted_window_mask, window_partition, window_reverse

Dtype = Any

SDT_MODES = ('nearest', 'farthest', 'off')
ENCODER_HEADS = ('public', 'by_resolution')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODER_WINDOW = 8  # the public window_sizes: 8 everywhere (the whole grid at 8 px)


def sdt_truncate(w: jax.Array, centroids: jax.Array, psi: float, mode: str) -> jax.Array:
  """Self-distilled truncation of latents w (B, L, D) towards centroids (K, D), per latent slot.

  mode 'nearest' (the paper) takes the centroid at the smallest squared distance, 'farthest' (the
  public code's argmax) the largest; w <- c + psi * (w - c) with c held constant (no gradient into
  the centroids); 'off' returns w. The batch dimension is kept (the public code squeezes it at B = 1).
  """
  if mode == 'off':
    return w
  if mode not in ('nearest', 'farthest'):
    raise ValueError(f'sdt mode {mode!r}: one of {", ".join(SDT_MODES)}')
  dist = jnp.sum(jnp.square(w[:, :, None, :] - centroids[None, None].astype(w.dtype)), axis=-1)  # (B, L, K)
  idx = jnp.argmin(dist, axis=-1) if mode == 'nearest' else jnp.argmax(dist, axis=-1)
  c = jax.lax.stop_gradient(centroids.astype(w.dtype)[idx])  # (B, L, D)
  return c + psi * (w - c)


def cwss(x: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
  """Channel-wise scale & shift (the public `sft_half`): the first C/2 channels of x (NHWC) become
  x * scale + shift (no 1 +), the rest pass through."""
  half = x.shape[-1] // 2
  return jnp.concatenate([x[..., :half] * scale + shift, x[..., half:]], axis=-1)


def encoder_heads(size: int, channels: dict[int, int], mode: str) -> list[int]:
  """Head count of each encoder stage i (input size / 2**i px)."""
  n = int(math.log2(size)) - 2
  if mode == 'public':
    # the public list [max(c // 32, 4) for c in channels 4, 8, 16, ...], read from the front by stage
    return [max(channels[4 * 2**i] // 32, 4) for i in range(n)]
  return [max(channels[size // 2**i] // 32, 4) for i in range(n)]


def pad_amounts(side: int, size: int) -> tuple[int, int]:
  """Zero padding (before, after) that brings `side` to `size`; the odd pixel goes before (public Crop)."""
  d = size - side
  return d - d // 2, d // 2


def _layer_norm(name: str, dtype=None) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name=name)


def _dense(features: int, name: str, use_bias: bool = True, dtype=None) -> nn.Dense:
  # the public _init_weights: trunc_normal_(std=.02) (cut at +-2 absolute), bias 0
  return nn.Dense(
    features,
    use_bias=use_bias,
    kernel_init=torch_trunc_normal(0.02),
    bias_init=nn.initializers.zeros,
    dtype=dtype,
    name=name,
  )


class ResidualBlock(nn.Module):
  """x + conv3x3(ReLU(conv3x3(x))), padding 1, biases, no activation after the sum."""

  features: int
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    h = nn.relu(Conv2d(self.features, 3, dtype=self.dtype, name='conv1')(x))
    return Conv2d(self.features, 3, dtype=self.dtype, name='conv2')(h) + x


class ConvBlock(nn.Module):
  """The public `Conv2D(in, nf, n_blks=[2, ...])`: conv3x3 -> ReLU -> 2 ResidualBlocks."""

  features: int
  n_blocks: int = 2
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    x = nn.relu(Conv2d(self.features, 3, dtype=self.dtype, name='conv_L1')(x))
    for j in range(self.n_blocks):
      x = ResidualBlock(self.features, dtype=self.dtype, name=f'blk_L1_{j}')(x)
    return x


class EncoderWindowAttention(nn.Module):
  """Swin window attention with relative-position bias; q is scaled by head_dim**-0.5 only if `q_scale`
  (the public encoder comments that line out)."""

  num_heads: int
  window_size: int
  q_scale: bool = False
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x, mask):
    """x (B_, N, C) windows; mask (nW, N, N) numpy 0/-100 or None."""
    b_, n, c = x.shape
    h = self.num_heads
    w = self.window_size
    table = self.param('relative_position_bias_table', torch_trunc_normal(0.02), ((2 * w - 1) ** 2, h), jnp.float32)
    qkv = _dense(3 * c, 'qkv', dtype=self.dtype)(x)
    qkv = qkv.reshape(b_, n, 3, h, c // h).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if self.q_scale:
      q = q * (c // h) ** -0.5
    attn = jnp.einsum('bhnd,bhmd->bhnm', q, k).astype(jnp.float32)
    bias = table[relative_position_index(w).reshape(-1)].reshape(n, n, h).transpose(2, 0, 1)
    attn = attn + bias[None]
    if mask is not None:
      nw = mask.shape[0]
      attn = attn.reshape(b_ // nw, nw, h, n, n) + jnp.asarray(mask)[None, :, None]
      attn = attn.reshape(b_, h, n, n)
    attn = jax.nn.softmax(attn, axis=-1).astype(v.dtype)
    out = jnp.einsum('bhnm,bhmd->bhnd', attn, v).transpose(0, 2, 1, 3).reshape(b_, n, c)
    return _dense(c, 'proj', dtype=self.dtype)(out)


class Mlp(nn.Module):
  hidden: int
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = nn.gelu(_dense(self.hidden, 'fc1', dtype=self.dtype)(x), approximate=False)
    return _dense(c, 'fc2', dtype=self.dtype)(x)


class EncoderSwinBlock(nn.Module):
  """Pre-norm Swin block on a (B, H, W, C) grid: x + WMSA(LN(x)) (cyclic shift `shift`), then x + MLP(LN(x))."""

  num_heads: int
  window_size: int
  shift: int
  mlp_ratio: float = 4.0
  q_scale: bool = False
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    b, h, wd, c = x.shape
    ws, s = self.window_size, self.shift
    y = _layer_norm('norm1', self.dtype)(x)
    if s:
      y = jnp.roll(y, (-s, -s), axis=(1, 2))
    mask = shifted_window_mask(h, wd, ws, s) if s else None
    y = EncoderWindowAttention(self.num_heads, ws, self.q_scale, dtype=self.dtype, name='attn')(
      window_partition(y, ws), mask
    )
    y = window_reverse(y, ws, h, wd, reference_compat=False)
    if s:
      y = jnp.roll(y, (s, s), axis=(1, 2))
    x = x + y
    return x + Mlp(int(c * self.mlp_ratio), dtype=self.dtype, name='mlp')(_layer_norm('norm2', self.dtype)(x))


class PatchMerging(nn.Module):
  """(B, H, W, C) -> (B, H/2, W/2, C_out): concat of the 4 phases in the public order, LN(4C), Linear (no bias)."""

  features: int
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    x = _layer_norm('norm', self.dtype)(x)
    return _dense(self.features, 'reduction', use_bias=False, dtype=self.dtype)(x)


def stage_geometry(resolution: int) -> tuple[int, int]:
  """(window, shift of block 1) of an encoder stage at `resolution` px: the whole grid and no shift
  where the grid is not larger than the window (the public SwinTransformerBlock rule)."""
  if resolution <= ENCODER_WINDOW:
    return resolution, 0
  return ENCODER_WINDOW, ENCODER_WINDOW // 2


class EncoderStage(nn.Module):
  """The public RSTB with its PatchMerging: 2 Swin blocks, t = conv3x3(t) + t, then merge to `out_features`."""

  out_features: int
  num_heads: int
  mlp_ratio: float = 4.0
  q_scale: bool = False
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    ws, shift = stage_geometry(x.shape[1])
    y = x
    for j in range(2):
      y = EncoderSwinBlock(
        self.num_heads, ws, shift if j % 2 else 0, self.mlp_ratio, self.q_scale, dtype=self.dtype, name=f'blocks_{j}'
      )(y)
    x = Conv2d(c, 3, dtype=self.dtype, name='conv')(y) + x
    return PatchMerging(self.out_features, dtype=self.dtype, name='downsample')(x)


class ConditionHead(nn.Module):
  """One CWSS head: EqualConv(C -> C, 3x3, p1) -> ScaledLeakyReLU -> EqualConv(C -> C/2, 3x3, p1)."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = scaled_leaky_relu(EqualConv2d(c, 3, padding=1, name='conv_0')(x))
    return EqualConv2d(c // 2, 3, padding=1, name='conv_2')(x)


class SDT(nn.Module):
  """Holds the centroids (`batch_stats`, zeros at init) and applies `sdt_truncate`."""

  n_centroids: int
  psi: float
  mode: str

  @nn.compact
  def __call__(self, w):
    centroids = self.variable('batch_stats', 'centroids', jnp.zeros, (self.n_centroids, w.shape[-1]), jnp.float32)
    return sdt_truncate(w, centroids.value, self.psi, self.mode)


class TransMRSR(SRGenerator):
  """TransMRSR's SR network (public TGP7 without its unused modules); see the module docstring."""

  size: int = 256
  style_dim: int = 512
  channel_multiplier: int = 1
  channel_base: int = 512
  lr_mlp: float = 0.01
  mlp_ratio: float = 4.0
  n_centroids: int = 8
  psi: float = 0.9
  sdt: str = 'nearest'
  encoder_heads: str = 'public'
  encoder_q_scale: bool = False
  imagenet_input: bool = False

  supported_scales: ClassVar[tuple[int, ...]] = (4, 8)
  upsampled_input: ClassVar[bool] = True
  choices: ClassVar[dict[str, tuple[str, ...]]] = {'sdt': SDT_MODES, 'encoder_heads': ENCODER_HEADS}

  @property
  def fixed_size(self) -> int:
    """The one input side (HR grid): smaller slices are padded inside, larger ones tiled by the predictor."""
    return self.size

  @property
  def n_layers(self) -> int:
    """Decoder layers (4 px ... size)."""
    return int(math.log2(self.size)) - 1

  @property
  def n_latent(self) -> int:
    return 2 * self.n_layers

  def _check_sizes(self) -> None:
    """TransMRSR's own checks, after the base's `check_fields` (which no generator overrides)."""
    if self.size < 8 or self.size & (self.size - 1):
      raise ValueError(f'model.size={self.size!r}: TransMRSR needs a power of 2 >= 8')
    if self.imagenet_input and (self.in_channels not in (1, 3) or self.out_channels not in (1, 3)):
      raise ValueError(
        f'model.in_channels={self.in_channels}, model.out_channels={self.out_channels}: imagenet_input takes '
        '1 (grey, replicated to RGB) or 3 channels'
      )
    if not self.imagenet_input and self.in_channels != self.out_channels:
      raise ValueError(
        f'model.in_channels={self.in_channels} and model.out_channels={self.out_channels}: TransMRSR adds its '
        'input to its output, so they must be equal (or set imagenet_input)'
      )

  @nn.compact
  def __call__(self, x, train: bool = False):
    self.check_fields()
    self._check_sizes()
    b, h, w, _ = x.shape
    size = self.size
    if h > size or w > size:
      raise ValueError(f'input {h}x{w} is larger than model.size={size}: TransMRSR works on a fixed size x size grid')
    dtype = self.dtype
    x = x.astype(jnp.float32)
    (top, bottom), (left, right) = pad_amounts(h, size), pad_amounts(w, size)
    if h < size or w < size:
      x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_ch = self.out_channels
    if self.imagenet_input:
      if x.shape[-1] == 1:
        x = jnp.tile(x, (1, 1, 1, 3))
      mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
      std = jnp.asarray(IMAGENET_STD, jnp.float32)
      x = (x - mean) / std
      out_ch = 3

    channels = styleswin_channels(size, self.channel_multiplier, self.channel_base)
    heads = encoder_heads(size, channels, self.encoder_heads)
    n_enc = len(heads)
    c0 = channels[size]

    shallow = ConvBlock(c0, dtype=dtype, name='conv2d')(x)
    t = _layer_norm('patch_embed', dtype)(shallow)
    feats = []
    for i in range(n_enc):
      t = EncoderStage(
        channels[size // 2 ** (i + 1)], heads[i], self.mlp_ratio, self.encoder_q_scale, dtype=dtype, name=f'layers_{i}'
      )(t)
      feats.append(t)
    t = _layer_norm('norm', dtype)(t)
    latent = EqualLinear(
      self.n_latent * self.style_dim, lr_mul=self.lr_mlp, activation='fused_lrelu', name='final_layers'
    )(t.reshape(b, -1).astype(jnp.float32))
    latent = latent.reshape(b, self.n_latent, self.style_dim)
    if self.sdt != 'off':
      latent = SDT(self.n_centroids, self.psi, self.sdt, name='sdt')(latent)

    feats = [f.astype(jnp.float32) for f in feats]  # the Equal* heads and the decoder compute in float32
    scales = [ConditionHead(name=f'condition_scale_{i}')(f) for i, f in enumerate(feats)]
    shifts = [ConditionHead(name=f'condition_shift_{i}')(f) for i, f in enumerate(feats)]
    # decoder layer k runs at 4 * 2**k px: the encoder output of stage n_enc - 1 - k
    conditions = [(scales[n_enc - 1 - k], shifts[n_enc - 1 - k]) for k in range(n_enc)]
    dec = Synthesis(
      size,
      style_dim=self.style_dim,
      channel_multiplier=self.channel_multiplier,
      channel_base=self.channel_base,
      mlp_ratio=self.mlp_ratio,
      name='generator',
    )(latent, conditions=conditions)

    y = ConvBlock(c0, dtype=dtype, name='conv_deep')(dec + shallow)
    y = Conv2d(out_ch, 1, dtype=dtype, name='conv_last')(y)
    y = y.astype(jnp.float32) + x
    if self.imagenet_input:
      y = y * std + mean
      if self.out_channels == 1:
        y = jnp.mean(y, axis=-1, keepdims=True)
    return y[:, top : top + h, left : left + w]
