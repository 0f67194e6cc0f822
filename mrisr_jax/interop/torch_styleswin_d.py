"""A torch.nn mirror of StyleSwin's wavelet Discriminator (S:models/discriminator.py, basic_layers.py,
op/upfirdn2d.py's upfirdn2d_native, op/fused_act.py's CPU path), NCHW.

`TorchStyleSwinDiscriminator(size, channel_multiplier, channel_base, in_channels, sn).state_dict()`
has StyleSwin's Discriminator keys, order, shapes and buffers (at channel_base=512, in_channels=3),
e.g. dwt.{ll,lh,hl,hh} (2, 2), from_rgbs.{i}.{iwt.*, downsample.kernel, dwt.*} (i >= 1),
from_rgbs.{i}.conv.0.weight (C, 12, 1, 1), from_rgbs.{i}.conv.1.bias, convs.{i}.conv1.{0.weight,
1.bias}, convs.{i}.conv2.{0.kernel, 1.weight, 2.bias}, final_conv.{0.weight, 1.bias},
final_linear.{0,1}.{weight, bias}; with sn=True the convs / linears are classic
`torch.nn.utils.spectral_norm` (weight_orig, weight_u, weight_v) and final_linear is
{0: Linear, 1: FusedLeakyReLU, 2: Linear}. The forward computes what StyleSwin computes on CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BLUR_KERNEL = (1, 3, 3, 1)


def styleswin_d_channels(size: int, channel_multiplier: int = 2, channel_base: int = 512) -> dict[int, int]:
  base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
  return {r: (c * channel_multiplier if r >= 64 else c) * channel_base // 512 for r, c in base.items() if r <= size}


def upfirdn2d_native(x, kernel, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1):
  """StyleSwin's upfirdn2d_native, same operations in the same order."""
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
  """StyleSwin's op.upfirdn2d CPU path: only pad[0], pad[1] are used, for both axes."""
  return upfirdn2d_native(x, kernel, up, up, down, down, pad[0], pad[1], pad[0], pad[1])


def fused_leaky_relu(x, bias, negative_slope=0.2, scale=2**0.5):
  rest = [1] * (x.ndim - bias.ndim - 1)
  return F.leaky_relu(x + bias.view(1, bias.shape[0], *rest), negative_slope=negative_slope) * scale


class FusedLeakyReLU(nn.Module):
  def __init__(self, channel):
    super().__init__()
    self.bias = nn.Parameter(torch.zeros(channel))

  def forward(self, x):
    return fused_leaky_relu(x, self.bias)


def make_kernel(k):
  k = torch.tensor(k, dtype=torch.float32)
  if k.ndim == 1:
    k = k[None, :] * k[:, None]
  k /= k.sum()
  return k


class Blur(nn.Module):
  def __init__(self, kernel, pad):
    super().__init__()
    self.register_buffer('kernel', make_kernel(kernel))
    self.pad = pad

  def forward(self, x):
    return upfirdn2d(x, self.kernel, pad=self.pad)


class Downsample(nn.Module):
  def __init__(self, kernel, factor=2):
    super().__init__()
    self.factor = factor
    self.register_buffer('kernel', make_kernel(kernel))
    p = len(kernel) - factor
    self.pad = ((p + 1) // 2, p // 2)

  def forward(self, x):
    return upfirdn2d(x, self.kernel, down=self.factor, pad=self.pad)


class EqualConv2d(nn.Module):
  def __init__(self, in_channel, out_channel, kernel_size, stride=1, padding=0, bias=True):
    super().__init__()
    self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
    self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
    self.stride, self.padding = stride, padding
    self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

  def forward(self, x):
    return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
  def __init__(self, in_dim, out_dim, bias=True, bias_init=0, lr_mul=1, activation=None):
    super().__init__()
    self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
    self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init)) if bias else None
    self.activation = activation
    self.scale = (1 / math.sqrt(in_dim)) * lr_mul
    self.lr_mul = lr_mul

  def forward(self, x):
    if self.activation:
      return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
    return F.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)


class ConvLayer(nn.Sequential):
  """StyleSwin D's ConvLayer with bias=True, activate=True (the only use in the D)."""

  def __init__(self, in_channel, out_channel, kernel_size, downsample=False, blur_kernel=BLUR_KERNEL, sn=False):
    layers = []
    if downsample:
      p = (len(blur_kernel) - 2) + (kernel_size - 1)
      layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
      stride, padding = 2, 0
    else:
      stride, padding = 1, kernel_size // 2
    if sn:
      conv = nn.Conv2d(in_channel, out_channel, kernel_size, padding=padding, stride=stride, bias=False)
      layers.append(nn.utils.spectral_norm(conv))
    else:
      layers.append(EqualConv2d(in_channel, out_channel, kernel_size, padding=padding, stride=stride, bias=False))
    layers.append(FusedLeakyReLU(out_channel))
    super().__init__(*layers)


class ConvBlock(nn.Module):
  def __init__(self, in_channel, out_channel, blur_kernel=BLUR_KERNEL, sn=False):
    super().__init__()
    self.conv1 = ConvLayer(in_channel, in_channel, 3, sn=sn)
    self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel, sn=sn)

  def forward(self, x):
    return self.conv2(self.conv1(x))


def get_haar_wavelet():
  lo = 1 / (2**0.5) * torch.ones(1, 2)
  hi = 1 / (2**0.5) * torch.ones(1, 2)
  hi[0, 0] = -1 * hi[0, 0]
  return lo.T * lo, hi.T * lo, lo.T * hi, hi.T * hi


class HaarTransform(nn.Module):
  def __init__(self):
    super().__init__()
    ll, lh, hl, hh = get_haar_wavelet()
    self.register_buffer('ll', ll)
    self.register_buffer('lh', lh)
    self.register_buffer('hl', hl)
    self.register_buffer('hh', hh)

  def forward(self, x):
    return torch.cat([upfirdn2d(x, k, down=2) for k in (self.ll, self.lh, self.hl, self.hh)], 1)


class InverseHaarTransform(nn.Module):
  def __init__(self):
    super().__init__()
    ll, lh, hl, hh = get_haar_wavelet()
    self.register_buffer('ll', ll)
    self.register_buffer('lh', -lh)
    self.register_buffer('hl', -hl)
    self.register_buffer('hh', hh)

  def forward(self, x):
    ll, lh, hl, hh = x.chunk(4, 1)
    ll = upfirdn2d(ll, self.ll, up=2, pad=(1, 0, 1, 0))
    lh = upfirdn2d(lh, self.lh, up=2, pad=(1, 0, 1, 0))
    hl = upfirdn2d(hl, self.hl, up=2, pad=(1, 0, 1, 0))
    hh = upfirdn2d(hh, self.hh, up=2, pad=(1, 0, 1, 0))
    return ll + lh + hl + hh


class FromRGB(nn.Module):
  def __init__(self, out_channel, in_channels=3, downsample=True, blur_kernel=BLUR_KERNEL, sn=False):
    super().__init__()
    self.downsample = downsample
    if downsample:
      self.iwt = InverseHaarTransform()
      self.downsample = Downsample(blur_kernel)
      self.dwt = HaarTransform()
    self.conv = ConvLayer(in_channels * 4, out_channel, 1, sn=sn)

  def forward(self, x, skip=None):
    if self.downsample:
      x = self.dwt(self.downsample(self.iwt(x)))
    out = self.conv(x)
    if skip is not None:
      out = out + skip
    return x, out


class TorchStyleSwinDiscriminator(nn.Module):
  def __init__(self, size=256, channel_multiplier=2, channel_base=512, in_channels=3, sn=False):
    super().__init__()
    channels = styleswin_d_channels(size, channel_multiplier, channel_base)
    self.dwt = HaarTransform()
    self.from_rgbs = nn.ModuleList()
    self.convs = nn.ModuleList()
    log_size = int(math.log(size, 2)) - 1
    in_channel = channels[size]
    for i in range(log_size, 2, -1):
      out_channel = channels[2 ** (i - 1)]
      self.from_rgbs.append(FromRGB(in_channel, in_channels, downsample=i != log_size, sn=sn))
      self.convs.append(ConvBlock(in_channel, out_channel, sn=sn))
      in_channel = out_channel
    self.from_rgbs.append(FromRGB(channels[4], in_channels, sn=sn))
    self.stddev_group = 4
    self.stddev_feat = 1
    self.final_conv = ConvLayer(in_channel + 1, channels[4], 3, sn=sn)
    c4 = channels[4]
    if sn:
      self.final_linear = nn.Sequential(
        nn.utils.spectral_norm(nn.Linear(c4 * 4 * 4, c4)),
        FusedLeakyReLU(c4),
        nn.utils.spectral_norm(nn.Linear(c4, 1)),
      )
    else:
      self.final_linear = nn.Sequential(EqualLinear(c4 * 4 * 4, c4, activation='fused_lrelu'), EqualLinear(c4, 1))

  def forward(self, x):
    x = self.dwt(x)
    out = None
    for from_rgb, conv in zip(self.from_rgbs, self.convs):
      x, out = from_rgb(x, out)
      out = conv(out)
    _, out = self.from_rgbs[-1](x, out)

    batch, channel, height, width = out.shape
    group = min(batch, self.stddev_group)
    stddev = out.view(group, -1, self.stddev_feat, channel // self.stddev_feat, height, width)
    stddev = torch.sqrt(stddev.var(0, unbiased=False) + 1e-8)
    stddev = stddev.mean([2, 3, 4], keepdims=True).squeeze(2)
    stddev = stddev.repeat(group, 1, height, width)
    out = torch.cat([out, stddev], 1)
    out = self.final_conv(out)
    out = out.view(batch, -1)
    return self.final_linear(out)
