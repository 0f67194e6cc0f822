"""PyTorch mirror of TransMRSR's SR network (the public `TGP7`, NCHW), for parity tests and conversion.

Its `state_dict()` has the public model's keys, order and shapes (reference Appendix B) minus the
modules the public forward never calls (`MAB`, `fusion_convs`): buffers included
(`relative_position_index` int64, the encoder's `attn_mask` on each shifted block, and the decoder's
buffers from `TorchSynthesis`). The SDT centroids are a non-persistent buffer `centers` (K, style_dim),
zeros until set, as the public model keeps them out of its state_dict too.

`forward(x)` computes what TGP7.forward computes on an input at `size` x `size` (no padding, no
ImageNet normalisation: the public loader does those), with sdt 'farthest' (the public argmax),
'nearest' (argmin) or 'off' (the public model without `truncation_path`). The batch dimension is
kept at B = 1 (the public `get_nearest` squeezes it; broadcasting repairs that there).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mrisr_jax.interop.torch_styleswin import EqualConv2d, EqualLinear, TorchSynthesis
from mrisr_jax.models.styleswin import styleswin_channels
from mrisr_jax.models.swin import relative_position_index, shifted_window_mask

ENCODER_WINDOW = 8


def _encoder_heads(size: int, channels: dict[int, int], mode: str) -> list[int]:
  n = int(math.log2(size)) - 2
  if mode == 'public':
    return [max(channels[4 * 2**i] // 32, 4) for i in range(n)]
  return [max(channels[size // 2**i] // 32, 4) for i in range(n)]


def _window_partition(x, ws):
  b, h, w, c = x.shape
  x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).contiguous()
  return x.view(-1, ws * ws, c)


def _window_reverse(windows, ws, h, w):
  b = windows.shape[0] // ((h // ws) * (w // ws))
  x = windows.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).contiguous()
  return x.view(b, h, w, -1)


class _Mlp(nn.Module):
  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class _WindowAttention(nn.Module):
  def __init__(self, dim: int, window_size: int, num_heads: int, q_scale: bool):
    super().__init__()
    self.window_size = window_size
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5 if q_scale else None
    self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
    self.register_buffer('relative_position_index', torch.from_numpy(relative_position_index(window_size)))
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)
    nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

  def forward(self, x, mask=None):
    b_, n, c = x.shape
    qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if self.scale is not None:
      q = q * self.scale
    attn = q @ k.transpose(-2, -1)
    bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
    attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
    if mask is not None:
      nw = mask.shape[0]
      attn = attn.view(b_ // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
      attn = attn.view(-1, self.num_heads, n, n)
    attn = attn.softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b_, n, c))


class _SwinBlock(nn.Module):
  def __init__(self, dim, resolution, num_heads, window_size, shift, mlp_ratio, q_scale):
    super().__init__()
    if resolution <= window_size:
      shift, window_size = 0, resolution
    self.resolution, self.window_size, self.shift = resolution, window_size, shift
    self.norm1 = nn.LayerNorm(dim)
    self.attn = _WindowAttention(dim, window_size, num_heads, q_scale)
    self.norm2 = nn.LayerNorm(dim)
    self.mlp = _Mlp(dim, int(dim * mlp_ratio))
    mask = torch.from_numpy(shifted_window_mask(resolution, resolution, window_size, shift)) if shift else None
    self.register_buffer('attn_mask', mask)

  def forward(self, x):
    h = w = self.resolution
    b, _, c = x.shape
    shortcut = x
    x = self.norm1(x).view(b, h, w, c)
    if self.shift:
      x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
    x = self.attn(_window_partition(x, self.window_size), mask=self.attn_mask)
    x = _window_reverse(x, self.window_size, h, w)
    if self.shift:
      x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
    x = shortcut + x.reshape(b, h * w, c)
    return x + self.mlp(self.norm2(x))


class _BasicLayer(nn.Module):
  def __init__(self, dim, resolution, num_heads, window_size, mlp_ratio, q_scale):
    super().__init__()
    self.blocks = nn.ModuleList(
      [
        _SwinBlock(dim, resolution, num_heads, window_size, 0 if j % 2 == 0 else window_size // 2, mlp_ratio, q_scale)
        for j in range(2)
      ]
    )

  def forward(self, x):
    for blk in self.blocks:
      x = blk(x)
    return x


class _PatchMerging(nn.Module):
  def __init__(self, resolution, dim, out_dim):
    super().__init__()
    self.resolution = resolution
    self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
    self.norm = nn.LayerNorm(4 * dim)

  def forward(self, x):
    h = w = self.resolution
    b, _, c = x.shape
    x = x.view(b, h, w, c)
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class _RSTB(nn.Module):
  """residual_group (2 Swin blocks), conv3x3 + residual, downsample (PatchMerging)."""

  def __init__(self, dim, out_dim, resolution, num_heads, window_size, mlp_ratio, q_scale):
    super().__init__()
    self.resolution = resolution
    self.residual_group = _BasicLayer(dim, resolution, num_heads, window_size, mlp_ratio, q_scale)
    self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
    self.downsample = _PatchMerging(resolution, dim, out_dim)

  def forward(self, x):
    b, n, c = x.shape
    r = self.resolution
    y = self.residual_group(x).transpose(1, 2).reshape(b, c, r, r)
    x = self.conv(y).flatten(2).transpose(1, 2) + x
    return self.downsample(x)


class _PatchEmbed(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.norm = nn.LayerNorm(dim)

  def forward(self, x):
    return self.norm(x.flatten(2).transpose(1, 2))


class _ResidualBlock(nn.Module):
  def __init__(self, nf):
    super().__init__()
    self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
    self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)

  def forward(self, x):
    return self.conv2(F.relu(self.conv1(x))) + x


class _Conv2D(nn.Module):
  def __init__(self, in_chl, nf, n_blocks=2):
    super().__init__()
    self.conv_L1 = nn.Conv2d(in_chl, nf, 3, 1, 1)
    self.blk_L1 = nn.Sequential(*[_ResidualBlock(nf) for _ in range(n_blocks)])

  def forward(self, x):
    return self.blk_L1(F.relu(self.conv_L1(x)))


class _ScaledLeakyReLU(nn.Module):
  def forward(self, x):
    return F.leaky_relu(x, 0.2) * math.sqrt(2)


def _condition_head(c):
  return nn.Sequential(EqualConv2d(c, c, 3, padding=1), _ScaledLeakyReLU(), EqualConv2d(c, c // 2, 3, padding=1))


def _encoder_init(m):
  """The public TGP7._init_weights: Linear trunc_normal(0.02) and bias 0, LayerNorm 1/0."""
  if isinstance(m, nn.Linear):
    nn.init.trunc_normal_(m.weight, std=0.02)
    if m.bias is not None:
      nn.init.constant_(m.bias, 0)
  elif isinstance(m, nn.LayerNorm):
    nn.init.constant_(m.bias, 0)
    nn.init.constant_(m.weight, 1.0)


def sdt_truncate_torch(latent, centers, psi, mode):
  """The public `get_nearest` + truncation ('farthest' = its argmax), batch dimension kept."""
  if mode == 'off':
    return latent
  dist = torch.sum(torch.square(latent.unsqueeze(2) - centers), dim=-1)
  idx = torch.argmax(dist, dim=-1) if mode == 'farthest' else torch.argmin(dist, dim=-1)
  nearest = centers[idx]  # (B, L, D)
  return nearest + psi * (latent - nearest)


class TorchTransMRSR(nn.Module):
  """The public TGP7 without MAB / fusion_convs; `centers` (non-persistent) holds the SDT centroids."""

  def __init__(
    self,
    size: int = 256,
    style_dim: int = 512,
    channel_multiplier: int = 1,
    channel_base: int = 512,
    lr_mlp: float = 0.01,
    mlp_ratio: float = 4.0,
    n_centroids: int = 8,
    psi: float = 0.9,
    sdt: str = 'farthest',
    encoder_heads: str = 'public',
    encoder_q_scale: bool = False,
    in_channels: int = 3,
    out_channels: int = 3,
  ):
    super().__init__()
    self.size, self.style_dim, self.psi, self.sdt = size, style_dim, psi, sdt
    channels = styleswin_channels(size, channel_multiplier, channel_base)
    heads = _encoder_heads(size, channels, encoder_heads)
    c0 = channels[size]
    self.n_enc = len(heads)
    self.n_latent = 2 * (self.n_enc + 1)
    self.conv2d = _Conv2D(in_channels, c0)
    self.patch_embed = _PatchEmbed(c0)
    self.layers = nn.ModuleList()
    for i, h in enumerate(heads):
      r = size // 2**i
      self.layers.append(_RSTB(channels[r], channels[r // 2], r, h, ENCODER_WINDOW, mlp_ratio, encoder_q_scale))
    self.norm = nn.LayerNorm(channels[4])
    self.final_layers = EqualLinear(
      channels[4] * 16, style_dim * self.n_latent, lr_mul=lr_mlp, activation='fused_lrelu'
    )
    self.condition_scale = nn.ModuleList([_condition_head(channels[size // 2 ** (i + 1)]) for i in range(self.n_enc)])
    self.condition_shift = nn.ModuleList([_condition_head(channels[size // 2 ** (i + 1)]) for i in range(self.n_enc)])
    self.register_buffer('centers', torch.zeros(n_centroids, style_dim), persistent=False)
    self.apply(_encoder_init)  # the public constructor does this before it builds the generator
    self.generator = TorchSynthesis(
      size, style_dim=style_dim, channel_multiplier=channel_multiplier, channel_base=channel_base, mlp_ratio=mlp_ratio
    )
    self.conv_deep = _Conv2D(c0, c0)
    self.conv_last = nn.Conv2d(c0, out_channels, 1, 1)

  def encode(self, x):
    """(shallow NCHW, per-stage encoder outputs NCHW, latents after SDT)."""
    shallow = self.conv2d(x)
    t = self.patch_embed(shallow)
    feats = []
    for i, layer in enumerate(self.layers):
      t = layer(t)
      r = self.size // 2 ** (i + 1)
      feats.append(t.transpose(1, 2).reshape(t.shape[0], -1, r, r))
    t = self.norm(t)
    latent = self.final_layers(t.reshape(t.shape[0], -1)).view(t.shape[0], -1, self.style_dim)
    return shallow, feats, sdt_truncate_torch(latent, self.centers, self.psi, self.sdt)

  def forward(self, x):
    shallow, feats, latent = self.encode(x)
    conditions = []
    for i, f in enumerate(feats):
      conditions = [self.condition_scale[i](f), self.condition_shift[i](f)] + conditions
    pairs = [(conditions[2 * k], conditions[2 * k + 1]) for k in range(self.n_enc)]
    dec = self.generator(latent, conditions=pairs)
    return self.conv_last(self.conv_deep(dec + shallow)) + x
