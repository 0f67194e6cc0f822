"""StyleSwin (Zhang et al., CVPR 2022), the stage-1 generative prior of TransMRSR, in flax.linen (NHWC).

What it is (/work/shared/reference/transmrsr_reference.md, sections 2.1-2.5; public code
microsoft/StyleSwin `models/generator.py`, `models/basic_layers.py`):
z -> PixelNorm -> n_mlp x EqualLinear(lr_mul 0.01, fused_lrelu) = w; a learned 4x4 constant, then one
`StyleLayer` per resolution 4, 8, ..., size: two `StyleSwinBlock`s (AdaIN, double window attention
over channel halves -- plain windows and shifted windows --, AdaIN, MLP), then, except in the last
layer, `BilinearUpsample` (x2 bilinear, LayerNorm, Linear to the next width, + alpha * a sinusoidal
position grid). `ToRGB` heads on every layer output are summed into the image (StyleGAN2 skips, up-2
with upfirdn2d). TransMRSR's SR network reuses `Synthesis` (constant + layers, no mapping, no ToRGB)
with channel-wise scale and shift on the first half of the channels at the input of layers 0..n-2.

Param layout (torch key <- flax path; `mrisr_jax.interop.styleswin_keys` has the full map):
  style.{i}.{weight,bias}                  style/layers_{i}/{weight,bias}   (EqualLinear: torch layout)
  input.input (1,C,4,4)                    synthesis/input/input (1,4,4,C)  (NHWC)
  layers.{k}.blocks.{j}.norm1.style.*      synthesis/layers_k/blocks_j/norm1/style/{weight,bias}
  layers.{k}.blocks.{j}.qkv, proj          .../qkv, proj/{kernel (in,out), bias}
  layers.{k}.blocks.{j}.attn.{b}.relative_position_bias_table  .../attn_{b}/relative_position_bias_table
  layers.{k}.blocks.{j}.norm2.style.*, mlp.fc1, mlp.fc2         .../norm2/style, mlp/fc1, mlp/fc2
  layers.{k}.upsample.{alpha, norm.*, reduction.weight}        .../upsample/{alpha, norm/{scale,bias},
                                                                 reduction/kernel}
  to_rgbs.{k}.bias (1,3,1,1), conv.{weight,bias}  to_rgbs_k/bias (1,1,1,3), to_rgbs_k/conv/{kernel,bias}
Buffers (relative_position_index, attn_mask2, the SPE grid, the upfirdn2d kernel) are numpy constants
computed here, not variables.

Initialisation as StyleSwin's `_init_weights`: Linear weights trunc_normal_(std=0.02) -- torch's
bounds are the absolute values +-2, i.e. +-100 std, so this is N(0, 0.02^2) in effect, reproduced
exactly by `torch_trunc_normal` (flax's `truncated_normal` would cut at +-2 std) --, Linear biases 0,
LayerNorm 1/0, the ToRGB 1x1 conv xavier_normal(gain 0.02) with bias 0, the relative-position tables
trunc-normal 0.02; EqualLinear N(0,1)/lr_mul with bias `bias_init`; the constant N(0,1); alpha 0.

Where the port could differ numerically from the public torch code, and how each is pinned
(tests/test_styleswin.py compares against the torch mirror in `mrisr_jax.interop.torch_styleswin`):
- GELU is the exact erf form (`nn.gelu(approximate=False)`; flax's default tanh form is off by 5e-4).
- LayerNorm eps 1e-5 (flax default 1e-6) and `use_fast_variance=False` (flax's default E[x^2]-E[x]^2
  loses digits); AdaIN's instance norm is the two-pass biased variance over the tokens, eps 1e-5.
- Bilinear x2 is `jax.image.resize(..., 'bilinear')`, which for an integer up-factor equals torch's
  `align_corners=False` interpolation (edge samples clamp the same way); never use it to downsample.
- The SPE grid's two 1-D factors (column and row embeddings) are float32 numpy constants computed in the
  order torch computes them (float32 frequencies, float32 position x frequency products), so they agree
  with torch to an ulp; the graph broadcasts them, the width axis into the first half of the channels,
  the height axis into the second.
- The shifted-window mask uses -100 (not -inf), as the public code; the unshifted branch has no mask.
- Matmuls run at the backend's default precision: exact float32 on CPU; on GPUs XLA may use TF32, so
  GPU parity checks should run under `jax.default_matmul_precision('highest')`.
"""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mrisr_jax.models.swin import (
  LN_EPS,
  relative_position_index,
  shifted_window_mask,
  window_partition,
  window_reverse,
  xavier_normal,
)

SQRT2 = math.sqrt(2.0)
BASE_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
FULL_RESOLUTION_WINDOW = 8  # `enable_full_resolution`: window 2**i up to this resolution, then 8


def styleswin_channels(size: int, channel_multiplier: int = 1, channel_base: int = 512) -> dict[int, int]:
  """Channels per resolution, as StyleSwin's `in_channels` list, scaled by channel_base/512 (int)."""
  if size < 8 or size & (size - 1) or size > 1024:
    raise ValueError(f'size={size!r}: StyleSwin needs a power of two between 8 and 1024')
  out = {}
  for res, c in BASE_CHANNELS.items():
    if res > size:
      break
    c = c * channel_multiplier if res >= 64 else c
    out[res] = int(c * channel_base / 512)
  return out


def num_heads(channels: int) -> int:
  """Heads at a resolution (both branches together): max(C // 32, 4)."""
  return max(channels // 32, 4)


def configured_window(resolution: int) -> int:
  """The configured window (4 at 4 px, else 8); `StyleSwinBlock` shrinks it to the grid when larger."""
  i = int(math.log2(resolution))
  return 2**i if i <= int(math.log2(FULL_RESOLUTION_WINDOW)) else FULL_RESOLUTION_WINDOW


def window_and_shift(resolution: int, window: int) -> tuple[int, int]:
  """The block's effective (window, shift): full attention without shift when the grid fits a window."""
  if resolution <= window:
    return resolution, 0
  return window, window // 2


def torch_trunc_normal(std: float):
  """`torch.nn.init.trunc_normal_(std=std)` with its default absolute bounds a=-2, b=2."""

  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.truncated_normal(key, -2.0 / std, 2.0 / std, shape, dtype)

  return init


def scaled_leaky_relu(x: jax.Array) -> jax.Array:
  """`ScaledLeakyReLU(0.2)` (and `fused_leaky_relu` once the bias is added): leaky_relu(x, 0.2) * sqrt(2)."""
  return jax.nn.leaky_relu(x, 0.2) * SQRT2


def sinusoidal_embedding(positions: np.ndarray, embedding_dim: int) -> np.ndarray:
  """StyleSwin's `SinusoidalPositionalEmbedding` rows for integer `positions` (>= 1): (N, embedding_dim).

  [sin(p f_0..f_{h-1}), cos(p f_0..)] with f_i = exp(-i ln(10000)/(h-1)), h = embedding_dim // 2, in float32
  as torch computes it."""
  half = embedding_dim // 2
  if embedding_dim % 2 or half < 2:
    raise ValueError(f'embedding_dim={embedding_dim}: the sinusoidal embedding needs an even value >= 4')
  step = np.float32(-np.log(10000) / (half - 1))
  freqs = np.exp(np.arange(half, dtype=np.float32) * step)
  arg = np.asarray(positions, np.float32)[:, None] * freqs[None, :]
  return np.concatenate([np.sin(arg), np.cos(arg)], axis=1).astype(np.float32)


def sinusoidal_grid(height: int, width: int, channels: int) -> np.ndarray:
  """SPE2d `make_grid2d(height, width)` in NHWC without batch: (height, width, channels), float32.

  Channels [0, channels/2) carry the embedding of the column (x + 1), the rest that of the row (y + 1)."""
  e = channels // 2
  x_emb = sinusoidal_embedding(np.arange(1, width + 1), e)  # (W, e)
  y_emb = sinusoidal_embedding(np.arange(1, height + 1), e)  # (H, e)
  grid = np.concatenate(
    [np.broadcast_to(x_emb[None, :, :], (height, width, e)), np.broadcast_to(y_emb[:, None, :], (height, width, e))],
    axis=-1,
  )
  return np.ascontiguousarray(grid, np.float32)


def make_kernel(k: Sequence[float]) -> np.ndarray:
  """`make_kernel`: the outer product of a 1-D kernel with itself, normalised to sum 1 (float32)."""
  k = np.asarray(k, np.float32)
  if k.ndim == 1:
    k = k[None, :] * k[:, None]
  return (k / k.sum()).astype(np.float32)


def upsample_kernel(blur_kernel: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> np.ndarray:
  """The `Upsample` buffer: make_kernel(blur_kernel) * factor**2."""
  return make_kernel(blur_kernel) * np.float32(factor**2)


def upsample_pad(kernel_size: int, factor: int = 2) -> tuple[int, int]:
  """The `Upsample` padding (pad0, pad1): (2, 1) for a 4-tap kernel and factor 2."""
  p = kernel_size - factor
  return (p + 1) // 2 + factor - 1, p // 2


def upfirdn2d(x: jax.Array, kernel, up: int = 1, down: int = 1, pad: Sequence[int] = (0, 0)) -> jax.Array:
  """`upfirdn2d` on NHWC: zero-insert upsample by `up`, pad (negative pads crop), convolve every channel
  with the 2-D FIR `kernel` (a true convolution, i.e. correlation with the flipped kernel), keep every
  `down`-th sample. `pad` is (pad0, pad1) for both axes or (x0, x1, y0, y1) as upfirdn2d_native."""
  if len(pad) == 2:
    pad = (pad[0], pad[1], pad[0], pad[1])
  px0, px1, py0, py1 = pad
  kernel = jnp.asarray(kernel, x.dtype)
  kh, kw = kernel.shape
  c = x.shape[-1]
  w = jnp.broadcast_to(kernel[::-1, ::-1, None, None], (kh, kw, 1, c))
  # lhs_dilation inserts up-1 zeros between samples; upfirdn2d also appends up-1 after the last one.
  return jax.lax.conv_general_dilated(
    x,
    w,
    window_strides=(down, down),
    padding=((py0, py1 + up - 1), (px0, px1 + up - 1)),
    lhs_dilation=(up, up),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    feature_group_count=c,
  )


class EqualLinear(nn.Module):
  """StyleGAN2's equalised-lr Linear: `weight` (out, in) in torch layout, N(0,1)/lr_mul; `bias` (out,) =
  bias_init. y = x @ (weight * lr_mul/sqrt(in)).T + bias * lr_mul, then leaky_relu(.,0.2)*sqrt(2) with
  activation='fused_lrelu'."""

  features: int
  lr_mul: float = 1.0
  bias_init: float = 0.0
  activation: str | None = None
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    in_f = x.shape[-1]
    lr_mul = self.lr_mul

    def weight_init(key, shape, dtype=jnp.float32):
      return jax.random.normal(key, shape, dtype) / lr_mul

    weight = self.param('weight', weight_init, (self.features, in_f), jnp.float32)
    scale = (1.0 / math.sqrt(in_f)) * lr_mul
    y = jnp.dot(x, (weight * scale).T)
    if self.use_bias:
      bias = self.param('bias', nn.initializers.constant(self.bias_init), (self.features,), jnp.float32)
      y = y + bias * lr_mul
    if self.activation == 'fused_lrelu':
      y = scaled_leaky_relu(y)
    elif self.activation is not None:
      raise ValueError(f'activation={self.activation!r}: EqualLinear supports None or "fused_lrelu"')
    return y


class EqualConv2d(nn.Module):
  """StyleGAN2's equalised-lr Conv2d on NHWC: `weight` (O, I, kh, kw) in torch layout, N(0,1), scaled by
  1/sqrt(I*kh*kw) at call time; `bias` (O,) zeros."""

  features: int
  kernel_size: int
  padding: int = 0
  stride: int = 1
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    in_ch = x.shape[-1]
    weight = self.param('weight', nn.initializers.normal(1.0), (self.features, in_ch, k, k), jnp.float32)
    scale = 1.0 / math.sqrt(in_ch * k * k)
    y = jax.lax.conv_general_dilated(
      x,
      (weight * scale).transpose(2, 3, 1, 0),
      window_strides=(self.stride, self.stride),
      padding=((self.padding, self.padding), (self.padding, self.padding)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    return y


class PixelNorm(nn.Module):
  """x * rsqrt(mean(x^2 over the last axis) + 1e-8)."""

  @nn.compact
  def __call__(self, x):
    return x * jax.lax.rsqrt(jnp.mean(x**2, axis=-1, keepdims=True) + 1e-8)


class MappingNetwork(nn.Module):
  """PixelNorm, then n_mlp EqualLinear(style_dim, lr_mul, fused_lrelu) named layers_1..layers_{n_mlp}."""

  style_dim: int = 512
  n_mlp: int = 8
  lr_mul: float = 0.01

  @nn.compact
  def __call__(self, z):
    x = PixelNorm()(z)
    for i in range(1, self.n_mlp + 1):
      x = EqualLinear(self.style_dim, lr_mul=self.lr_mul, activation='fused_lrelu', name=f'layers_{i}')(x)
    return x


def _dense(features: int, use_bias: bool = True, name: str | None = None) -> nn.Dense:
  """nn.Linear under StyleSwin's `_init_weights`: kernel (in, out) trunc-normal 0.02, bias 0."""
  return nn.Dense(
    features, use_bias=use_bias, kernel_init=torch_trunc_normal(0.02), bias_init=nn.initializers.zeros, name=name
  )


class AdaIN(nn.Module):
  """AdaptiveInstanceNorm over tokens: x (B, H, W, C) normalised per channel over H*W (biased variance,
  eps 1e-5, no affine), then gamma * x + beta with [gamma | beta] = EqualLinear(2C)(w)."""

  @nn.compact
  def __call__(self, x, w):
    c = x.shape[-1]
    style = EqualLinear(2 * c, name='style')(w)  # (B, 2C)
    gamma, beta = style[:, None, None, :c], style[:, None, None, c:]
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    return gamma * ((x - mean) * jax.lax.rsqrt(var + 1e-5)) + beta


class WindowAttention(nn.Module):
  """One branch of StyleSwin's double attention (no projections): q, k, v (B_, N, C') already windowed,
  heads on contiguous channel slices, q * head_dim**-0.5, + relative position bias (+ the mask)."""

  num_heads: int
  window_size: int

  @nn.compact
  def __call__(self, q, k, v, mask=None):
    b_, n, c = q.shape
    h = self.num_heads
    d = c // h
    w = self.window_size
    table = self.param('relative_position_bias_table', torch_trunc_normal(0.02), ((2 * w - 1) ** 2, h), jnp.float32)

    def heads(t):
      return t.reshape(b_, n, h, d).transpose(0, 2, 1, 3)

    q, k, v = heads(q) * (d**-0.5), heads(k), heads(v)
    attn = jnp.einsum('bhnd,bhmd->bhnm', q, k)
    bias = table[relative_position_index(w).reshape(-1)].reshape(n, n, h).transpose(2, 0, 1)
    attn = attn + bias[None]
    if mask is not None:
      nw = mask.shape[0]
      attn = attn.reshape(b_ // nw, nw, h, n, n) + jnp.asarray(mask)[None, :, None]
      attn = attn.reshape(b_, h, n, n)
    attn = jax.nn.softmax(attn, axis=-1)
    return jnp.einsum('bhnm,bhmd->bhnd', attn, v).transpose(0, 2, 1, 3).reshape(b_, n, c)


class Mlp(nn.Module):
  """fc1 (C -> hidden), exact GELU, fc2 (hidden -> C)."""

  hidden: int

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = _dense(self.hidden, name='fc1')(x)
    x = nn.gelu(x, approximate=False)
    return _dense(c, name='fc2')(x)


class StyleSwinBlock(nn.Module):
  """StyleSwinTransformerBlock on NHWC (B, H, W, C) with one latent w (B, style_dim).

  `window_size` is the configured window; on a grid no larger than it the block attends over the whole
  grid without shift, otherwise the second channel half uses windows shifted by window_size // 2."""

  num_heads: int
  window_size: int
  mlp_ratio: float = 4.0

  @nn.compact
  def __call__(self, x, w):
    b, h, wd, c = x.shape
    ws, shift = window_and_shift(min(h, wd), self.window_size)
    if h % ws or wd % ws:
      raise ValueError(f'grid {h}x{wd} is not divisible by the window {ws}')
    half = c // 2
    shortcut = x
    x = AdaIN(name='norm1')(x, w)
    qkv = _dense(3 * c, name='qkv')(x)
    q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]

    def branch(i, t_q, t_k, t_v, s, mask):
      if s:
        t_q, t_k, t_v = (jnp.roll(t, (-s, -s), axis=(1, 2)) for t in (t_q, t_k, t_v))
      out = WindowAttention(self.num_heads // 2, ws, name=f'attn_{i}')(
        window_partition(t_q, ws), window_partition(t_k, ws), window_partition(t_v, ws), mask
      )
      out = window_reverse(out, ws, h, wd, reference_compat=False)
      if s:
        out = jnp.roll(out, (s, s), axis=(1, 2))
      return out

    mask = shifted_window_mask(h, wd, ws, shift) if shift else None
    x1 = branch(0, q[..., :half], k[..., :half], v[..., :half], 0, None)
    x2 = branch(1, q[..., half:], k[..., half:], v[..., half:], shift, mask)
    x = _dense(c, name='proj')(jnp.concatenate([x1, x2], axis=-1))
    x = shortcut + x
    return x + Mlp(int(c * self.mlp_ratio), name='mlp')(AdaIN(name='norm2')(x, w))


class BilinearUpsample(nn.Module):
  """x2 bilinear (align_corners=False), LayerNorm, Linear(C -> out_dim, no bias), + alpha * SPE grid."""

  out_dim: int

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method='bilinear')
    x = nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False, name='norm')(x)
    x = _dense(self.out_dim, use_bias=False, name='reduction')(x)
    alpha = self.param('alpha', nn.initializers.zeros, (1,), jnp.float32)
    # sinusoidal_grid(2h, 2w, out_dim), built in the graph from its two small factors (no H*W*C constant)
    e = self.out_dim // 2
    x_emb = jnp.asarray(sinusoidal_embedding(np.arange(1, 2 * w + 1), e))
    y_emb = jnp.asarray(sinusoidal_embedding(np.arange(1, 2 * h + 1), e))
    grid = jnp.concatenate(
      [jnp.broadcast_to(x_emb[None], (2 * h, 2 * w, e)), jnp.broadcast_to(y_emb[:, None], (2 * h, 2 * w, e))], axis=-1
    )
    return x + grid[None] * alpha


class ConstantInput(nn.Module):
  """The learned constant, param `input` (1, size, size, C) N(0,1), broadcast over the batch."""

  channels: int
  size: int = 4

  @nn.compact
  def __call__(self, batch: int):
    const = self.param('input', nn.initializers.normal(1.0), (1, self.size, self.size, self.channels), jnp.float32)
    return jnp.broadcast_to(const, (batch, self.size, self.size, self.channels))


class StyleLayer(nn.Module):
  """StyleBasicLayer: [CWSS on the input's first C/2 channels], blocks_0 (latent1), blocks_1 (latent2),
  then `upsample` to out_dim at twice the resolution unless out_dim is None (the last layer)."""

  num_heads: int
  window_size: int
  out_dim: int | None = None
  mlp_ratio: float = 4.0

  @nn.compact
  def __call__(self, x, latent1, latent2, condition=None):
    if condition is not None:
      scale, shift = condition
      half = x.shape[-1] // 2
      x = jnp.concatenate([x[..., :half] * scale + shift, x[..., half:]], axis=-1)
    x = StyleSwinBlock(self.num_heads, self.window_size, self.mlp_ratio, name='blocks_0')(x, latent1)
    x = StyleSwinBlock(self.num_heads, self.window_size, self.mlp_ratio, name='blocks_1')(x, latent2)
    if self.out_dim is not None:
      x = BilinearUpsample(self.out_dim, name='upsample')(x)
    return x


class Synthesis(nn.Module):
  """The StyleSwin synthesis network without ToRGB: constant `input`, then `layers_{k}` for k < n_layers
  (input resolution 4 * 2**k). `__call__(latents (B, 2*n_layers, style_dim), conditions=None,
  return_layers=False)` -> (B, size, size, channels[size]), plus the list of layer outputs with
  return_layers. `conditions[k]` = (scale, shift), each (B, r_k, r_k, C_k/2), or None; layers past the
  end of the list get none (the public `count < len(conditions)`)."""

  size: int = 256
  style_dim: int = 512
  channel_multiplier: int = 1
  channel_base: int = 512
  mlp_ratio: float = 4.0

  @property
  def n_layers(self) -> int:
    return int(math.log2(self.size)) - 1

  @property
  def n_latent(self) -> int:
    return 2 * self.n_layers

  @nn.compact
  def __call__(self, latents, conditions=None, return_layers: bool = False):
    channels = styleswin_channels(self.size, self.channel_multiplier, self.channel_base)
    if latents.ndim != 3 or latents.shape[1] != self.n_latent:
      raise ValueError(f'latents {latents.shape}: Synthesis(size={self.size}) takes (B, {self.n_latent}, style_dim)')
    conditions = list(conditions or [])
    if len(conditions) > self.n_layers:
      raise ValueError(f'{len(conditions)} conditions for {self.n_layers} layers')
    x = ConstantInput(channels[4], name='input')(latents.shape[0])
    outs = []
    for k in range(self.n_layers):
      res = 4 * 2**k
      out_dim = channels[2 * res] if k < self.n_layers - 1 else None
      layer = StyleLayer(num_heads(channels[res]), configured_window(res), out_dim, self.mlp_ratio, name=f'layers_{k}')
      x = layer(x, latents[:, 2 * k], latents[:, 2 * k + 1], conditions[k] if k < len(conditions) else None)
      outs.append(x)
    return (x, outs) if return_layers else x


class ToRGB(nn.Module):
  """1x1 conv `conv` to out_channels (+ its bias) + `bias` (1,1,1,out); adds the previous `skip`, upsampled
  x2 by upfirdn2d (kernel [1,3,3,1] outer / 64 * 4, pad (2, 1)) when `upsample`."""

  out_channels: int = 3
  upsample: bool = True

  @nn.compact
  def __call__(self, x, skip=None):
    out = nn.Conv(
      self.out_channels,
      (1, 1),
      padding='VALID',
      kernel_init=xavier_normal(0.02),
      bias_init=nn.initializers.zeros,
      name='conv',
    )(x)
    out = out + self.param('bias', nn.initializers.zeros, (1, 1, 1, self.out_channels), jnp.float32)
    if skip is not None:
      if self.upsample:
        kernel = upsample_kernel()
        skip = upfirdn2d(skip, kernel, up=2, pad=upsample_pad(kernel.shape[0]))
      out = out + skip
    return out


class StyleSwinGenerator(nn.Module):
  """The StyleSwin generator (g_ema): `style` (MappingNetwork), `synthesis`, `to_rgbs_{k}`.

  `__call__(z (B, style_dim))` -> image (B, size, size, out_channels); `mapping(z)` -> w; `synthesize(w)`
  with w (B, style_dim) (repeated over the n_latent slots) or (B, n_latent, style_dim)."""

  size: int = 256
  style_dim: int = 512
  n_mlp: int = 8
  channel_multiplier: int = 1
  channel_base: int = 512
  lr_mlp: float = 0.01
  out_channels: int = 3
  mlp_ratio: float = 4.0
  latent_input: ClassVar[bool] = True

  def setup(self):
    self.style = MappingNetwork(self.style_dim, self.n_mlp, self.lr_mlp)
    self.synthesis = Synthesis(self.size, self.style_dim, self.channel_multiplier, self.channel_base, self.mlp_ratio)
    n_layers = int(math.log2(self.size)) - 1
    self.to_rgbs = [ToRGB(self.out_channels, upsample=k < n_layers - 1) for k in range(n_layers)]

  @property
  def n_latent(self) -> int:
    return 2 * (int(math.log2(self.size)) - 1)

  def mapping(self, z):
    return self.style(z)

  def synthesize(self, w):
    if w.ndim == 2:
      w = jnp.broadcast_to(w[:, None, :], (w.shape[0], self.n_latent, w.shape[-1]))
    _, outs = self.synthesis(w, return_layers=True)
    skip = None
    for to_rgb, out in zip(self.to_rgbs, outs):
      skip = to_rgb(out, skip)
    return skip

  def __call__(self, z, train: bool = False):
    del train  # no dropout, no normalisation statistics
    return self.synthesize(self.mapping(z))
