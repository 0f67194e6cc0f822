"""torch.nn mirrors of StyleSwin's generator (microsoft/StyleSwin `models/generator.py`, `basic_layers.py`)
and of the synthesis part TransMRSR reuses (`Generator1(train=True)` of goddesshs/TransMRSR
`componets/swim/swim_generator_local.py`, with its channel-wise scale & shift), NCHW.

`TorchStyleSwinGenerator(...).state_dict()` has g_ema's keys, order, shapes and dtypes (308 entries at size
256): `style.{1..n_mlp}`, `input.input`, `layers.{k}.blocks.{j}.*` (buffers `attn_mask2` on shifted blocks,
first in the block, and `attn.{0,1}.relative_position_index`), `layers.{k}.upsample.*` (buffer
`sin_pos_embed._float_tensor`), `to_rgbs.{k}.*` (buffer `upsample.kernel` for k < n_layers - 1).
`TorchSynthesis` holds `input` and `layers` only (TransMRSR's `generator`). The forwards compute what the
public code computes with torch's own ops (nn.Upsample bilinear, nn.GELU, InstanceNorm1d, a port of
`upfirdn2d_native`), so flax-vs-mirror parity is a real check; `channel_base` (default 512, the public
widths) scales every width by channel_base/512 for small test models.

Imported only where torch is installed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

BASE_CHANNELS = (512, 512, 512, 512, 256, 128, 64, 32, 16)  # resolutions 4 .. 1024


def fused_leaky_relu(x, bias, negative_slope=0.2, scale=2**0.5):
  rest = [1] * (x.ndim - bias.ndim - 1)
  return F.leaky_relu(x + bias.view(1, bias.shape[0], *rest), negative_slope) * scale


def upfirdn2d_native(x, kernel, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1):
  """StyleGAN2's reference upfirdn2d (op/upfirdn2d.py), NCHW."""
  _, channel, in_h, in_w = x.shape
  x = x.reshape(-1, in_h, in_w, 1)
  _, in_h, in_w, minor = x.shape
  kernel_h, kernel_w = kernel.shape
  out = x.view(-1, in_h, 1, in_w, 1, minor)
  out = F.pad(out, [0, 0, 0, up_x - 1, 0, 0, 0, up_y - 1])
  out = out.view(-1, in_h * up_y, in_w * up_x, minor)
  out = F.pad(out, [0, 0, max(pad_x0, 0), max(pad_x1, 0), max(pad_y0, 0), max(pad_y1, 0)])
  out = out[:, max(-pad_y0, 0) : out.shape[1] - max(-pad_y1, 0), max(-pad_x0, 0) : out.shape[2] - max(-pad_x1, 0), :]
  out = out.permute(0, 3, 1, 2)
  out = out.reshape([-1, 1, in_h * up_y + pad_y0 + pad_y1, in_w * up_x + pad_x0 + pad_x1])
  w = torch.flip(kernel, [0, 1]).view(1, 1, kernel_h, kernel_w)
  out = F.conv2d(out, w)
  out = out.reshape(
    -1, minor, in_h * up_y + pad_y0 + pad_y1 - kernel_h + 1, in_w * up_x + pad_x0 + pad_x1 - kernel_w + 1
  )
  out = out.permute(0, 2, 3, 1)
  out = out[:, ::down_y, ::down_x, :]
  out_h = (in_h * up_y + pad_y0 + pad_y1 - kernel_h) // down_y + 1
  out_w = (in_w * up_x + pad_x0 + pad_x1 - kernel_w) // down_x + 1
  return out.view(-1, channel, out_h, out_w)


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
  if len(pad) == 2:
    pad = (pad[0], pad[1], pad[0], pad[1])
  return upfirdn2d_native(x, kernel, up, up, down, down, pad[0], pad[1], pad[2], pad[3])


def make_kernel(k):
  k = torch.tensor(k, dtype=torch.float32)
  if k.ndim == 1:
    k = k[None, :] * k[:, None]
  k /= k.sum()
  return k


class Upsample(nn.Module):
  def __init__(self, kernel, factor=2):
    super().__init__()
    self.factor = factor
    kernel = make_kernel(kernel) * (factor**2)
    self.register_buffer('kernel', kernel)
    p = kernel.shape[0] - factor
    self.pad = ((p + 1) // 2 + factor - 1, p // 2)

  def forward(self, x):
    return upfirdn2d(x, self.kernel, up=self.factor, down=1, pad=self.pad)


class EqualLinear(nn.Module):
  def __init__(self, in_dim, out_dim, bias=True, bias_init=0, lr_mul=1, activation=None):
    super().__init__()
    self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
    if bias:
      self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init))
    else:
      self.bias = None
    self.activation = activation
    self.scale = (1 / math.sqrt(in_dim)) * lr_mul
    self.lr_mul = lr_mul

  def forward(self, x):
    if self.activation:
      out = F.linear(x, self.weight * self.scale)
      return fused_leaky_relu(out, self.bias * self.lr_mul)
    return F.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
  def __init__(self, in_channel, out_channel, kernel_size, stride=1, padding=0, bias=True):
    super().__init__()
    self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
    self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
    self.stride = stride
    self.padding = padding
    self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

  def forward(self, x):
    return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride, padding=self.padding)


class PixelNorm(nn.Module):
  def forward(self, x):
    return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class SinusoidalPositionalEmbedding(nn.Module):
  """SPE/SPE2d (padding_idx 0, no center shift), as StyleSwin's basic_layers."""

  def __init__(self, embedding_dim, padding_idx, init_size=1024):
    super().__init__()
    self.embedding_dim = embedding_dim
    self.padding_idx = padding_idx
    self.weights = self.get_embedding(init_size, embedding_dim, padding_idx)
    self.register_buffer('_float_tensor', torch.FloatTensor(1))

  @staticmethod
  def get_embedding(num_embeddings, embedding_dim, padding_idx=None):
    half_dim = embedding_dim // 2
    emb = np.log(10000) / (half_dim - 1)
    emb = torch.exp(torch.arange(half_dim, dtype=torch.float) * -emb)
    emb = torch.arange(num_embeddings, dtype=torch.float).unsqueeze(1) * emb.unsqueeze(0)
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1).view(num_embeddings, -1)
    if padding_idx is not None:
      emb[padding_idx, :] = 0
    return emb

  def make_positions(self, x, padding_idx):
    mask = x.ne(padding_idx).int()
    return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + padding_idx

  def forward(self, x):
    b, seq_len = x.shape
    max_pos = self.padding_idx + 1 + seq_len
    if self.weights is None or max_pos > self.weights.size(0):
      self.weights = self.get_embedding(max_pos, self.embedding_dim, self.padding_idx)
    self.weights = self.weights.to(self._float_tensor)
    positions = self.make_positions(x, self.padding_idx).to(self._float_tensor.device)
    return self.weights.index_select(0, positions.view(-1)).view(b, seq_len, self.embedding_dim).detach()

  def make_grid2d(self, height, width, num_batches=1):
    x_axis = torch.arange(1, width + 1).unsqueeze(0).repeat(num_batches, 1)
    y_axis = torch.arange(1, height + 1).unsqueeze(0).repeat(num_batches, 1)
    x_emb = self(x_axis).transpose(1, 2)
    y_emb = self(y_axis).transpose(1, 2)
    x_grid = x_emb.unsqueeze(2).repeat(1, 1, height, 1)
    y_grid = y_emb.unsqueeze(3).repeat(1, 1, 1, width)
    return torch.cat([x_grid, y_grid], dim=1).detach()


class ToRGB(nn.Module):
  def __init__(self, in_channel, upsample=True, out_channels=3, blur_kernel=(1, 3, 3, 1)):
    super().__init__()
    self.is_upsample = upsample
    if upsample:
      self.upsample = Upsample(list(blur_kernel))
    self.conv = nn.Conv2d(in_channel, out_channels, kernel_size=1)
    self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

  def forward(self, x, skip=None):
    out = self.conv(x) + self.bias
    if skip is not None:
      if self.is_upsample:
        skip = self.upsample(skip)
      out = out + skip
    return out


class Mlp(nn.Module):
  def __init__(self, in_features, hidden_features):
    super().__init__()
    self.fc1 = nn.Linear(in_features, hidden_features)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden_features, in_features)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


def window_partition(x, window_size):
  b, h, w, c = x.shape
  x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
  return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, c)


def window_reverse(windows, window_size, h, w):
  b = int(windows.shape[0] / (h * w / window_size / window_size))
  x = windows.view(b, h // window_size, w // window_size, window_size, window_size, -1)
  return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


class WindowAttention(nn.Module):
  def __init__(self, dim, window_size, num_heads):
    super().__init__()
    self.dim = dim
    self.window_size = window_size
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.relative_position_bias_table = nn.Parameter(
      torch.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads)
    )
    coords_h = torch.arange(self.window_size[0])
    coords_w = torch.arange(self.window_size[1])
    coords = torch.stack(torch.meshgrid([coords_h, coords_w], indexing='ij'))
    coords_flatten = torch.flatten(coords, 1)
    relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]
    relative_coords = relative_coords.permute(1, 2, 0).contiguous()
    relative_coords[:, :, 0] += self.window_size[0] - 1
    relative_coords[:, :, 1] += self.window_size[1] - 1
    relative_coords[:, :, 0] *= 2 * self.window_size[1] - 1
    self.register_buffer('relative_position_index', relative_coords.sum(-1))
    nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
    self.softmax = nn.Softmax(dim=-1)

  def forward(self, q, k, v, mask=None):
    b_, n, c = q.shape
    q = q.reshape(b_, n, self.num_heads, c // self.num_heads).permute(0, 2, 1, 3)
    k = k.reshape(b_, n, self.num_heads, c // self.num_heads).permute(0, 2, 1, 3)
    v = v.reshape(b_, n, self.num_heads, c // self.num_heads).permute(0, 2, 1, 3)
    q = q * self.scale
    attn = q @ k.transpose(-2, -1)
    ws = self.window_size[0] * self.window_size[1]
    bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(ws, ws, -1)
    attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
    if mask is not None:
      nw = mask.shape[0]
      attn = attn.view(b_ // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
      attn = attn.view(-1, self.num_heads, n, n)
    attn = self.softmax(attn)
    return (attn @ v).transpose(1, 2).reshape(b_, n, c)


class AdaptiveInstanceNorm(nn.Module):
  def __init__(self, in_channel, style_dim):
    super().__init__()
    self.norm = nn.InstanceNorm1d(in_channel)
    self.style = EqualLinear(style_dim, in_channel * 2)

  def forward(self, x, style):
    style = self.style(style).unsqueeze(-1)
    gamma, beta = style.chunk(2, 1)
    return gamma * self.norm(x) + beta


class StyleSwinTransformerBlock(nn.Module):
  """Tokens (B, H*W, C) and a latent (B, style_dim)."""

  def __init__(self, dim, input_resolution, num_heads, window_size=7, mlp_ratio=4.0, style_dim=512):
    super().__init__()
    self.dim = dim
    self.input_resolution = input_resolution
    self.num_heads = num_heads
    self.window_size = window_size
    self.shift_size = self.window_size // 2
    if min(self.input_resolution) <= self.window_size:
      self.shift_size = 0
      self.window_size = min(self.input_resolution)
    self.norm1 = AdaptiveInstanceNorm(dim, style_dim)
    self.qkv = nn.Linear(dim, dim * 3, bias=True)
    self.proj = nn.Linear(dim, dim)
    ws = (self.window_size, self.window_size)
    self.attn = nn.ModuleList([WindowAttention(dim // 2, ws, num_heads // 2) for _ in range(2)])
    attn_mask2 = None
    if self.shift_size > 0:
      h, w = self.input_resolution
      img_mask = torch.zeros((1, h, w, 1))
      slices = (
        slice(0, -self.window_size),
        slice(-self.window_size, -self.shift_size),
        slice(-self.shift_size, None),
      )
      cnt = 0
      for hs in slices:
        for wsl in slices:
          img_mask[:, hs, wsl, :] = cnt
          cnt += 1
      mask_windows = window_partition(img_mask, self.window_size).view(-1, self.window_size * self.window_size)
      attn_mask2 = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
      attn_mask2 = attn_mask2.masked_fill(attn_mask2 != 0, float(-100.0)).masked_fill(attn_mask2 == 0, float(0.0))
    self.register_buffer('attn_mask1', None)
    self.register_buffer('attn_mask2', attn_mask2)
    self.norm2 = AdaptiveInstanceNorm(dim, style_dim)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def get_window_qkv(self, qkv):
    q, k, v = qkv[0], qkv[1], qkv[2]
    c = q.shape[-1]
    n = self.window_size * self.window_size
    return tuple(window_partition(t, self.window_size).view(-1, n, c) for t in (q, k, v))

  def forward(self, x, style):
    h, w = self.input_resolution
    b, length, c = x.shape
    assert length == h * w, 'input feature has wrong size'
    shortcut = x
    x = self.norm1(x.transpose(-1, -2), style).transpose(-1, -2)
    qkv = self.qkv(x).reshape(b, -1, 3, c).permute(2, 0, 1, 3).reshape(3 * b, h, w, c)
    qkv_1 = qkv[:, :, :, : c // 2].reshape(3, b, h, w, c // 2)
    if self.shift_size > 0:
      s = self.shift_size
      qkv_2 = torch.roll(qkv[:, :, :, c // 2 :], shifts=(-s, -s), dims=(1, 2)).reshape(3, b, h, w, c // 2)
    else:
      qkv_2 = qkv[:, :, :, c // 2 :].reshape(3, b, h, w, c // 2)
    q1, k1, v1 = self.get_window_qkv(qkv_1)
    q2, k2, v2 = self.get_window_qkv(qkv_2)
    x1 = self.attn[0](q1, k1, v1, self.attn_mask1)
    x2 = self.attn[1](q2, k2, v2, self.attn_mask2)
    n = self.window_size * self.window_size
    x1 = window_reverse(x1.view(-1, n, c // 2), self.window_size, h, w)
    x2 = window_reverse(x2.view(-1, n, c // 2), self.window_size, h, w)
    if self.shift_size > 0:
      x2 = torch.roll(x2, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
    x = torch.cat([x1.reshape(b, h * w, c // 2), x2.reshape(b, h * w, c // 2)], dim=2)
    x = shortcut + self.proj(x)
    return x + self.mlp(self.norm2(x.transpose(-1, -2), style).transpose(-1, -2))


class BilinearUpsample(nn.Module):
  """Tokens (B, H*W, C) -> tokens (B, 4HW, out_dim) (StyleSwin's layout)."""

  def __init__(self, input_resolution, dim, out_dim):
    super().__init__()
    self.upsample = nn.Upsample(scale_factor=2, mode='bilinear')
    self.norm = nn.LayerNorm(dim)
    self.reduction = nn.Linear(dim, out_dim, bias=False)
    self.input_resolution = input_resolution
    self.dim = dim
    self.out_dim = out_dim
    self.alpha = nn.Parameter(torch.zeros(1))
    self.sin_pos_embed = SinusoidalPositionalEmbedding(out_dim // 2, padding_idx=0, init_size=out_dim // 2)

  def forward(self, x):
    h, w = self.input_resolution
    b, length, c = x.shape
    x = x.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
    x = self.upsample(x)
    x = x.permute(0, 2, 3, 1).contiguous().view(b, length * 4, c)
    x = self.reduction(self.norm(x))
    x = x.reshape(b, h * 2, w * 2, self.out_dim).permute(0, 3, 1, 2)
    x = x + self.sin_pos_embed.make_grid2d(h * 2, w * 2, b) * self.alpha
    return x.permute(0, 2, 3, 1).contiguous().view(b, h * 2 * w * 2, self.out_dim)


class StyleBasicLayer(nn.Module):
  """Tokens in, tokens out; `scale`/`shift` (NCHW, C/2 channels) is TransMRSR's CWSS (sft_half) on the input."""

  def __init__(self, dim, input_resolution, num_heads, window_size, out_dim=None, mlp_ratio=4.0, style_dim=512):
    super().__init__()
    self.dim = dim
    self.input_resolution = input_resolution
    self.blocks = nn.ModuleList(
      [StyleSwinTransformerBlock(dim, input_resolution, num_heads, window_size, mlp_ratio, style_dim) for _ in range(2)]
    )
    self.upsample = BilinearUpsample(input_resolution, dim, out_dim) if out_dim is not None else None

  def forward(self, x, latent1, latent2, scale=None, shift=None):
    if scale is not None:
      h, w = self.input_resolution
      b, length, c = x.shape
      x = x.transpose(1, 2).reshape(b, c, h, w)  # TransMRSR's layers take NCHW
      x_scale, x_out = torch.split(x, int(x.size()[1] // 2), 1)
      x = torch.cat([x_scale * scale + shift, x_out], dim=1)
      x = x.permute(0, 2, 3, 1).contiguous().view(b, h * w, c)
    x = self.blocks[0](x, latent1)
    x = self.blocks[1](x, latent2)
    if self.upsample is not None:
      x = self.upsample(x)
    return x


def _channels(channel_multiplier, channel_base):
  return [int((c * channel_multiplier if i >= 4 else c) * channel_base / 512) for i, c in enumerate(BASE_CHANNELS)]


def _init_weights(m):
  """StyleSwin's Generator._init_weights."""
  if isinstance(m, nn.Linear):
    nn.init.trunc_normal_(m.weight, std=0.02)
    if m.bias is not None:
      nn.init.constant_(m.bias, 0)
  elif isinstance(m, nn.LayerNorm):
    nn.init.constant_(m.bias, 0)
    nn.init.constant_(m.weight, 1.0)
  elif isinstance(m, nn.Conv2d):
    nn.init.xavier_normal_(m.weight, gain=0.02)
    if m.bias is not None:
      nn.init.constant_(m.bias, 0)


def _build_synthesis(module, size, style_dim, channel_multiplier, channel_base, mlp_ratio):
  """Adds `input` and `layers` (in that order) to `module`; returns the channel list and n_layers."""
  in_channels = _channels(channel_multiplier, channel_base)
  start, end = 2, int(math.log(size, 2))
  heads = [max(c // 32, 4) for c in in_channels]
  window_sizes = [2**i if i <= 3 else 8 for i in range(start, end + 1)]
  module.input = ConstantInput(in_channels[0])
  module.layers = nn.ModuleList()
  for i in range(start, end + 1):
    module.layers.append(
      StyleBasicLayer(
        in_channels[i - start],
        (2**i, 2**i),
        heads[i - start],
        window_sizes[i - start],
        out_dim=in_channels[i - start + 1] if i < end else None,
        mlp_ratio=mlp_ratio,
        style_dim=style_dim,
      )
    )
  return in_channels, end - start + 1


class ConstantInput(nn.Module):
  def __init__(self, channel, size=4):
    super().__init__()
    self.input = nn.Parameter(torch.randn(1, channel, size, size))

  def forward(self, x):
    return self.input.repeat(x.shape[0], 1, 1, 1)


def _synthesis_forward(module, latent, conditions=None, return_layers=False):
  """latent (B, n_latent, style_dim); conditions: list of (scale, shift) NCHW for layers 0.. (or None).
  Returns NCHW features [and the NCHW output of every layer]."""
  conditions = list(conditions or [])
  x = module.input(latent)
  b, c, h, w = x.shape
  x = x.permute(0, 2, 3, 1).contiguous().view(b, h * w, c)
  outs = []
  for k, layer in enumerate(module.layers):
    scale, shift = conditions[k] if k < len(conditions) and conditions[k] is not None else (None, None)
    x = layer(x, latent[:, 2 * k, :], latent[:, 2 * k + 1, :], scale, shift)
    b, n, c = x.shape
    side = int(math.sqrt(n))
    outs.append(x.transpose(-1, -2).reshape(b, c, side, side))
  return (outs[-1], outs) if return_layers else outs[-1]


class TorchSynthesis(nn.Module):
  """TransMRSR's `generator` (Generator1, train=True): state_dict `input.input`, `layers.*`."""

  def __init__(self, size=256, style_dim=512, channel_multiplier=1, channel_base=512, mlp_ratio=4.0):
    super().__init__()
    self.size = size
    self.style_dim = style_dim
    self.channels, n_layers = _build_synthesis(self, size, style_dim, channel_multiplier, channel_base, mlp_ratio)
    self.n_latent = 2 * n_layers
    self.apply(_init_weights)

  def forward(self, latent, conditions=None, return_layers=False):
    return _synthesis_forward(self, latent, conditions, return_layers)


class TorchStyleSwinGenerator(nn.Module):
  """StyleSwin's `Generator` (the g_ema layout): `style`, `input`, `layers`, `to_rgbs`.

  `forward(noise)` -> image NCHW (the public code returns (image, None)); `mapping(z)`, `synthesize(w)`."""

  def __init__(
    self,
    size=256,
    style_dim=512,
    n_mlp=8,
    channel_multiplier=1,
    channel_base=512,
    lr_mlp=0.01,
    out_channels=3,
    mlp_ratio=4.0,
  ):
    super().__init__()
    self.size = size
    self.style_dim = style_dim
    layers = [PixelNorm()]
    for _ in range(n_mlp):
      layers.append(EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation='fused_lrelu'))
    self.style = nn.Sequential(*layers)
    in_channels, n_layers = _build_synthesis(self, size, style_dim, channel_multiplier, channel_base, mlp_ratio)
    self.to_rgbs = nn.ModuleList()
    for k in range(n_layers):
      last = k == n_layers - 1
      self.to_rgbs.append(ToRGB(in_channels[k] if last else in_channels[k + 1], not last, out_channels))
    self.n_latent = 2 * n_layers
    self.apply(_init_weights)

  def mapping(self, z):
    return self.style(z)

  def synthesize(self, w):
    latent = w.unsqueeze(1).repeat(1, self.n_latent, 1) if w.ndim < 3 else w
    _, outs = _synthesis_forward(self, latent, None, True)
    skip = None
    for out, to_rgb in zip(outs, self.to_rgbs):
      skip = to_rgb(out, skip)
    return skip

  def forward(self, noise):
    return self.synthesize(self.mapping(noise))
