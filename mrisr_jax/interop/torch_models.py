"""Plain torch.nn mirrors of the CASRGAN reference's SRCNN, DRRN, EDSR, RDN, CASR and discriminator.

Their `state_dict()` keys, shapes and dtypes are exactly the reference's (see
/work/shared/reference/reference_state_dicts.json), so a checkpoint exported with
`convert.flax_to_state_dict` loads into them, and into the reference, with `strict=True`.
Constructor arguments are named as the flax modules' fields; NCHW in, NCHW out.

FA-GAN (generator, spectrally normalised discriminator), SR-DCGAN (generator, discriminator) and
PerceptualSRNet have no reference checkpoint: their mirrors are plain torch.nn ports whose
`state_dict()` is the layout `convert` documents for them (keys named after these modules).
"""

from __future__ import annotations

import inspect
import math

import ml_collections
import torch
from torch import nn
from torch.nn import functional as F

from mrisr_jax import registry
from mrisr_jax.interop import convert


def _conv(cin: int, cout: int, k: int, bias: bool = True) -> nn.Conv2d:
  """The reference's default_conv: padding k // 2."""
  return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


class TorchSRCNN(nn.Module):
  """9-1-5 SRCNN; `scale` only selects the data."""

  def __init__(self, scale: int = 4, in_channels: int = 1, out_channels: int = 1):
    super().__init__()
    self.scale = scale
    self.patch_extraction = nn.Conv2d(in_channels, 64, 9, padding=4)
    self.non_linear_mapping = nn.Conv2d(64, 32, 1)
    self.reconstruction = nn.Conv2d(32, out_channels, 5, padding=2)

  def forward(self, x):
    x = torch.relu(self.patch_extraction(x))
    return self.reconstruction(torch.relu(self.non_linear_mapping(x)))


class _DRRNResidualUnit(nn.Module):
  def __init__(self, ngf: int, k: int):
    super().__init__()
    self.conv = nn.Sequential(nn.ReLU(), _conv(ngf, ngf, k), nn.ReLU(), _conv(ngf, ngf, k))

  def forward(self, x):
    return self.conv(x)


class _DRRNRecursiveBlock(nn.Module):
  def __init__(self, cin: int, ngf: int, units: int, k: int):
    super().__init__()
    self.units = units
    self.conv1 = nn.Sequential(nn.ReLU(), _conv(cin, ngf, k))
    self.residule_unit = _DRRNResidualUnit(ngf, k)  # sic: the reference's key

  def forward(self, x):
    h0 = self.conv1(x)
    h = h0
    for _ in range(self.units):  # one unit, shared weights
      h = self.residule_unit(h) + h0
    return h


class TorchDRRN(nn.Module):
  """DRRN B{num_recursive_blocks}U{num_units}; output = input + recon."""

  def __init__(
    self,
    scale: int = 4,
    in_channels: int = 1,
    out_channels: int = 1,
    num_recursive_blocks: int = 1,
    num_units: int = 25,
    features: int = 128,
    kernel_size: int = 3,
  ):
    super().__init__()
    self.scale = scale
    f, k = features, kernel_size
    self.rbs = nn.Sequential(
      *[_DRRNRecursiveBlock(in_channels if b == 0 else f, f, num_units, k) for b in range(num_recursive_blocks)]
    )
    self.recon = nn.Sequential(nn.ReLU(), _conv(f, out_channels, k))

  def forward(self, x):
    return x + self.recon(self.rbs(x))


class _EDSRResBlock(nn.Module):
  def __init__(self, f: int, k: int, res_scale: float):
    super().__init__()
    self.res_scale = res_scale
    self.model = nn.Sequential(_conv(f, f, k), nn.ReLU(), _conv(f, f, k))

  def forward(self, x):
    return self.model(x) * self.res_scale + x


class _Upsampler(nn.Module):
  """Reference Upsampler: [conv3x3 f -> r*r*f (no bias), PixelShuffle(r)] per stage."""

  def __init__(self, scale: int, f: int):
    super().__init__()
    if scale == 3:
      layers = [_conv(f, 9 * f, 3, bias=False), nn.PixelShuffle(3)]
    elif scale in (2, 4, 8):
      layers = []
      for _ in range(int(math.log2(scale))):
        layers += [_conv(f, 4 * f, 3, bias=False), nn.PixelShuffle(2)]
    else:
      raise ValueError(f'Upsampler: scale {scale!r} is not supported; supported scales: 2, 3, 4')
    self.model = nn.Sequential(*layers)

  def forward(self, x):
    return self.model(x)


class TorchEDSR(nn.Module):
  """EDSR without mean shift: model_1 head, model_2 body (+ head), model_3 upsampler + tail."""

  def __init__(
    self,
    scale: int = 4,
    in_channels: int = 1,
    out_channels: int = 1,
    n_resblocks: int = 32,
    n_feats: int = 256,
    res_scale: float = 0.1,
    kernel_size: int = 3,
  ):
    super().__init__()
    self.scale = scale
    f, k = n_feats, kernel_size
    self.model_1 = nn.Sequential(_conv(in_channels, f, k))
    self.model_2 = nn.Sequential(*[_EDSRResBlock(f, k, res_scale) for _ in range(n_resblocks)], _conv(f, f, k))
    self.model_3 = nn.Sequential(_Upsampler(scale, f), _conv(f, out_channels, k))

  def forward(self, x):
    x = self.model_1(x)
    return self.model_3(self.model_2(x) + x)


class _RDBConv(nn.Module):
  def __init__(self, cin: int, g: int):
    super().__init__()
    self.conv = nn.Sequential(nn.Conv2d(cin, g, 3, padding=1), nn.ReLU())

  def forward(self, x):
    return torch.cat((x, self.conv(x)), 1)


class _RDB(nn.Module):
  def __init__(self, g0: int, g: int, c: int):
    super().__init__()
    self.convs = nn.Sequential(*[_RDBConv(g0 + i * g, g) for i in range(c)])
    self.LFF = nn.Conv2d(g0 + c * g, g0, 1)

  def forward(self, x):
    return self.LFF(self.convs(x)) + x


class TorchRDN(nn.Module):
  """RDN: SFE1, SFE2, D RDBs, GFF, upscale."""

  def __init__(
    self,
    scale: int = 4,
    in_channels: int = 1,
    out_channels: int = 1,
    growth_rate0: int = 64,
    growth_rate: int = 32,
    num_layers: int = 6,
    num_blocks: int = 20,
    kernel_size: int = 3,
  ):
    super().__init__()
    self.scale = scale
    g0, g, c, d, k = growth_rate0, growth_rate, num_layers, num_blocks, kernel_size
    pad = (k - 1) // 2
    self.SFE1 = nn.Conv2d(in_channels, g0, k, padding=pad)
    self.SFE2 = nn.Conv2d(g0, g0, k, padding=pad)
    self.RDBs = nn.ModuleList([_RDB(g0, g, c) for _ in range(d)])
    self.GFF = nn.Sequential(nn.Conv2d(d * g0, g0, 1), nn.Conv2d(g0, g0, k, padding=pad))
    if scale == 4:
      self.upscale = nn.Sequential(
        nn.Conv2d(g0, g * 4, k, padding=pad),
        nn.PixelShuffle(2),
        nn.Conv2d(g, g * 4, k, padding=pad),
        nn.PixelShuffle(2),
        nn.Conv2d(g, out_channels, k, padding=pad),
      )
    elif scale in (2, 3):
      self.upscale = nn.Sequential(
        nn.Conv2d(g0, g * scale * scale, k, padding=pad),
        nn.PixelShuffle(scale),
        nn.Conv2d(g, out_channels, k, padding=pad),
      )
    else:
      raise ValueError(f'RDN: scale {scale!r} is not supported; supported scales: 2, 3, 4')

  def forward(self, x):
    f1 = self.SFE1(x)
    h = self.SFE2(f1)
    outs = []
    for block in self.RDBs:
      h = block(h)
      outs.append(h)
    return self.upscale(self.GFF(torch.cat(outs, 1)) + f1)


class _TorchDown(nn.Module):
  def __init__(self, cin: int, cout: int, stride: int, negative_slope: float):
    super().__init__()
    self.layer = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(negative_slope))

  def forward(self, x):
    return self.layer(x)


class TorchGANDiscriminator(nn.Module):
  """The reference `GANDiscriminator`: `forward` gives sigmoid probabilities (B, 1, 1, 1)."""

  def __init__(self, in_channels: int | None = None, negative_slope: float = 0.01):
    super().__init__()
    from mrisr_jax.models.discriminator import DOWN_BLOCKS, HEAD_FEATURES, STEM_FEATURES

    self.conv1 = nn.Sequential(nn.Conv2d(in_channels or 1, STEM_FEATURES, 3, 1, 1), nn.LeakyReLU(negative_slope))
    blocks, cin = [], STEM_FEATURES
    for cout, s in DOWN_BLOCKS:
      blocks.append(_TorchDown(cin, cout, s, negative_slope))
      cin = cout
    self.down = nn.Sequential(*blocks)
    self.dense = nn.Sequential(
      nn.AdaptiveAvgPool2d(1),
      nn.Conv2d(cin, HEAD_FEATURES, 1),
      nn.LeakyReLU(negative_slope),
      nn.Conv2d(HEAD_FEATURES, 1, 1),
      nn.Sigmoid(),
    )

  def logits(self, x):
    """(B,) pre-sigmoid outputs, as the flax module's `__call__`."""
    h = self.down(self.conv1(x))
    for layer in list(self.dense)[:-1]:
      h = layer(h)
    return h.reshape(h.shape[0])

  def forward(self, x):
    return self.dense(self.down(self.conv1(x)))


class _AHPF(nn.Module):
  """ReLU(x - conv(x, weight * hp_factor, pad 1) - beta), the dense all-ones conv as the reference."""

  def __init__(self, g0: int):
    super().__init__()
    self.hp_factor = nn.Parameter(torch.full((1,), 0.1))
    self.beta = nn.Parameter(torch.full((1,), 0.01))
    self.register_buffer('weight', torch.ones(g0, g0, 3, 3))

  def forward(self, x):
    return torch.relu(x - F.conv2d(x, self.weight * self.hp_factor, padding=1) - self.beta)


class _SE(nn.Module):
  def __init__(self, c: int, reduction: int = 4):
    super().__init__()
    self.se_excitation = nn.Sequential(
      nn.Conv2d(c, c // reduction, 1), nn.ReLU(), nn.Conv2d(c // reduction, c, 1), nn.Sigmoid()
    )

  def forward(self, x):
    return x * self.se_excitation(F.adaptive_avg_pool2d(x, 1))


class _AFEB(nn.Module):
  def __init__(self, g0: int, g: int, c: int):
    super().__init__()
    self.adaptive_high_pass = _AHPF(g0)
    self.se = _SE(g0)
    self.rdb = _RDB(g0, g, c)

  def forward(self, x):
    return self.rdb(self.se(self.adaptive_high_pass(x) + x)) + x


class _WindowAttention(nn.Module):
  def __init__(self, dim: int, heads: int, w: int, reference_compat: bool, dropout: float):
    super().__init__()
    self.heads, self.w, self.reference_compat = heads, w, reference_compat
    self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * w - 1) ** 2, heads))
    nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
    self.register_buffer('relative_position_index', torch.from_numpy(convert.relative_position_index(w)))
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)
    self.proj_drop = nn.Dropout(dropout)

  def forward(self, x, mask):
    """x: (B_, N, C) windows; mask: (nW, N, N) or None."""
    b_, n, c = x.shape
    hd = c // self.heads
    q, k, v = self.qkv(x).reshape(b_, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
    # the reference multiplies by head_dim ** +0.5; Swin divides by sqrt(head_dim)
    q = q * (hd**0.5 if self.reference_compat else hd**-0.5)
    attn = q @ k.transpose(-2, -1)
    bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
    attn = attn + bias.view(n, n, -1).permute(2, 0, 1)[None]
    if mask is not None:
      nw = mask.shape[0]
      attn = (attn.view(b_ // nw, nw, self.heads, n, n) + mask[None, :, None]).view(b_, self.heads, n, n)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b_, n, c)
    return self.proj_drop(self.proj(out))


class _MLP(nn.Module):
  def __init__(self, dim: int, hidden: int, dropout: float):
    super().__init__()
    self.fc_1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.drop = nn.Dropout(dropout)
    self.fc_2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.drop(self.fc_2(self.drop(self.act(self.fc_1(x)))))


class _STB(nn.Module):
  """The reference STB on a (B, H, W, C) token grid, in both of the flax SwinBlock's modes.

  `attn_mask` is a state_dict buffer sized as the reference's (a 384 // scale pixel grid); like the
  reference for any other size, forward recomputes the mask for the token grid it is given.
  """

  def __init__(
    self,
    dim: int,
    heads: int,
    w: int,
    shift: int,
    mlp_ratio: float,
    alpha: float,
    beta: float | None,
    norm_before: bool,
    reference_compat: bool,
    dropout: float,
    scale: int,
  ):
    super().__init__()
    self.w, self.shift, self.alpha = w, shift, alpha
    self.norm_before, self.reference_compat = norm_before, reference_compat
    self.register_buffer('attn_mask', torch.from_numpy(convert.reference_attn_mask(w, scale)) if shift else None)
    self.norm_1 = nn.LayerNorm(dim)
    self.attn = _WindowAttention(dim, heads, w, reference_compat, dropout)
    self.norm_2 = nn.LayerNorm(dim)
    self.mlp = _MLP(dim, int(dim * mlp_ratio), dropout)
    if beta is not None:  # DeepNorm init
      for lin in (self.attn.qkv, self.attn.proj, self.mlp.fc_1, self.mlp.fc_2):
        nn.init.xavier_normal_(lin.weight, gain=beta)

  def _attention(self, x):
    b, h, wd, c = x.shape
    w, s = self.w, self.shift
    mask = None
    if s:
      x = torch.roll(x, (-s, -s), (1, 2))
      mask = torch.from_numpy(convert.swin_attn_mask(h, wd, w, s)).to(x)
    win = x.reshape(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)
    out = self.attn(win, mask)
    if self.reference_compat:  # the reference's window reverse: no transpose
      x = out.reshape(b, h, wd, c)
    else:
      x = out.reshape(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, wd, c)
    return torch.roll(x, (s, s), (1, 2)) if s else x

  def _residual(self, skip, branch):
    # the reference puts alpha on the branch; DeepNet puts it on the skip
    return skip + self.alpha * branch if self.reference_compat else self.alpha * skip + branch

  def forward(self, x):
    if self.norm_before:
      x = self._residual(x, self._attention(self.norm_1(x)))
      return self._residual(x, self.mlp(self.norm_2(x)))
    x = self.norm_1(self._residual(x, self._attention(x)))
    return self.norm_2(self._residual(x, self.mlp(x)))


class _Proj(nn.Module):
  def __init__(self, conv: nn.Conv2d):
    super().__init__()
    self.proj = conv

  def forward(self, x):
    return self.proj(x)


class _SAB(nn.Module):
  def __init__(
    self,
    g0: int,
    embed_dim: int,
    patch_size: int,
    num_heads: int,
    window_size: int,
    n_stb: int,
    mlp_ratio: float,
    alpha: float,
    beta: float | None,
    norm_before: bool,
    reference_compat: bool,
    dropout: float,
    scale: int,
  ):
    super().__init__()
    p, w = patch_size, window_size
    self.p, self.w = p, w
    self.patch_embed = _Proj(nn.Conv2d(g0, embed_dim, p, stride=p))
    self.patch_unembed = _Proj(nn.Conv2d(embed_dim, g0 * p * p, 1))
    self.transformers = nn.ModuleList(
      [
        _STB(
          embed_dim,
          num_heads,
          w,
          0 if i % 2 == 0 else w // 2,
          mlp_ratio,
          alpha,
          beta,
          norm_before,
          reference_compat,
          dropout,
          scale,
        )
        for i in range(n_stb)
      ]
    )
    self.conv1 = nn.Sequential(_conv(g0, g0, 3), nn.ReLU())
    self.conv2 = nn.Sequential(_conv(g0, g0, 3), nn.ReLU())

  def forward(self, y):
    t = self.patch_embed(y).permute(0, 2, 3, 1)  # (B, h, w, E) token grid
    if t.shape[1] % self.w or t.shape[2] % self.w:
      raise ValueError(
        f'token grid {t.shape[1]}x{t.shape[2]} is not divisible by window_size {self.w}: '
        f'the LR input side must be a multiple of patch_size * window_size'
      )
    for block in self.transformers:
      t = block(t)
    t = F.pixel_shuffle(self.patch_unembed(t.permute(0, 3, 1, 2)), self.p)
    return self.conv2(self.conv1(t)) * 0.1 + y


class _CASRUpscale(nn.Module):
  def __init__(self, scale: int, g0: int, out_channels: int):
    super().__init__()
    self.upscale = nn.Sequential(_Upsampler(scale, g0), _conv(g0, out_channels, 3))

  def forward(self, x):
    return self.upscale(x)


class TorchCASR(nn.Module):
  """The reference CASR: sfe, D AFEBs, GFF, SAB, upscale; `reference_compat` as the flax CASR."""

  def __init__(
    self,
    scale: int = 4,
    in_channels: int = 1,
    out_channels: int = 1,
    growth_rate0: int = 128,
    depth: int = 20,
    growth_rate: int = 32,
    rdb_depth: int = 6,
    n_stb: int = 2,
    embed_dim: int = 96,
    patch_size: int = 6,
    num_heads: int = 6,
    window_size: int = 4,
    mlp_ratio: float = 4.0,
    deepnorm: bool = True,
    deepnorm_alpha: float | None = None,
    norm_before: bool = False,
    reference_compat: bool = False,
    dropout: float = 0.0,
  ):
    super().__init__()
    if scale not in (2, 3, 4):
      raise ValueError(f'model.scale={scale!r}: CASR supports 2, 3 or 4')
    self.scale = scale
    g0 = growth_rate0
    alpha = deepnorm_alpha
    if alpha is None:
      alpha = (2.0 * n_stb) ** 0.25 if deepnorm else 1.0
    beta = (8.0 * n_stb) ** -0.25 if deepnorm else None
    self.sfe = nn.Sequential(_conv(in_channels, g0, 3), nn.ReLU())
    self.AFEs = nn.ModuleList([_AFEB(g0, growth_rate, rdb_depth) for _ in range(depth)])
    self.GFF = nn.Sequential(_conv(depth * g0, g0, 1), _conv(g0, g0, 3))
    self.SAB = _SAB(
      g0,
      embed_dim,
      patch_size,
      num_heads,
      window_size,
      n_stb,
      mlp_ratio,
      alpha,
      beta,
      norm_before,
      reference_compat,
      dropout,
      scale,
    )
    self.upscale = _CASRUpscale(scale, g0, out_channels)

  def forward(self, x):
    x = self.sfe(x)
    shortcut, h, outs = x, x, []
    for block in self.AFEs:
      h = block(h)
      outs.append(h)
    y = self.SAB(self.GFF(torch.cat(outs, 1)))
    return self.upscale(y + shortcut)


# --- FA-GAN, SR-DCGAN, PerceptualSRNet: the layouts of `convert` (keys named after these modules) ---


class _FAGANPath(nn.Sequential):
  """conv_s-ReLU-conv_s-ReLU-conv_s: convs at indices 0, 2, 4."""

  def __init__(self, f: int, k: int):
    super().__init__(_conv(f, f, k), nn.ReLU(), _conv(f, f, k), nn.ReLU(), _conv(f, f, k))


class _FAGANLFFB(nn.Module):
  def __init__(self, f: int, kernel_sizes: tuple[int, ...]):
    super().__init__()
    self.paths = nn.ModuleList([_FAGANPath(f, k) for k in kernel_sizes])
    self.fuse = nn.Conv2d(len(kernel_sizes) * f, f, 1)

  def forward(self, x):
    return self.fuse(torch.cat([p(x) for p in self.paths], 1)) + x


class _FAGANChannelAttention(nn.Module):
  def __init__(self, c: int, reduction: int):
    super().__init__()
    self.fc_reduce = nn.Linear(c, max(1, c // reduction))
    self.fc_expand = nn.Linear(max(1, c // reduction), c)

  def forward(self, x):
    s = torch.sigmoid(self.fc_expand(torch.relu(self.fc_reduce(x.mean((2, 3))))))
    return x * s[:, :, None, None]


class _FAGANSelfAttention(nn.Module):
  """SAGAN: gamma * v(o) + x, o_j = sum_i softmax_i(g(x_j) . f(x_i)) h(x_i)."""

  def __init__(self, c: int):
    super().__init__()
    ck = max(1, c // 8)
    self.f, self.g = nn.Conv2d(c, ck, 1), nn.Conv2d(c, ck, 1)
    self.h, self.v = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)
    self.gamma = nn.Parameter(torch.zeros(1))

  def forward(self, x):
    b, c, hh, ww = x.shape
    key, query, value = self.f(x).flatten(2), self.g(x).flatten(2), self.h(x).flatten(2)
    attn = torch.softmax(query.transpose(1, 2) @ key, -1)  # (B, N_j, N_i)
    o = (value @ attn.transpose(1, 2)).reshape(b, c, hh, ww)
    return self.gamma * self.v(o) + x


class _FAGANGFFB(nn.Module):
  def __init__(self, c: int, reduction: int, connection: str, alpha: float, beta: float):
    super().__init__()
    self.connection, self.alpha, self.beta = connection, alpha, beta
    self.channel_attention = _FAGANChannelAttention(c, reduction)
    self.self_attention = _FAGANSelfAttention(c)

  def forward(self, x):
    r, y = self.channel_attention(x), self.self_attention(x)
    if self.connection == 'direct':
      return self.alpha * r + self.beta * y
    w = torch.softmax(torch.stack([self.alpha * r, self.beta * y], -1), -1)
    return w[..., 0] * r + w[..., 1] * y


class TorchFAGANGenerator(nn.Module):
  """FA-GAN generator (`models.fagan`): head, lffbs, body_conv, upsample, gffb, tail."""

  def __init__(
    self,
    scale: int = 4,
    in_channels: int = 1,
    out_channels: int = 1,
    n_feats: int = 64,
    n_lffb: int = 8,
    kernel_sizes: tuple[int, ...] = (3, 5, 7),
    reduction: int = 16,
    attention_at: str = 'lr',
    connection: str = 'weighted',
    alpha: float = 0.5,
    beta: float = 0.5,
  ):
    super().__init__()
    if scale not in (2, 4, 8) or attention_at not in ('lr', 'hr') or connection not in ('weighted', 'direct'):
      raise ValueError(
        f'FAGANGenerator: unsupported scale={scale!r}, attention_at={attention_at!r} or connection={connection!r}'
      )
    f = n_feats
    self.attention_at = attention_at
    self.head = nn.Conv2d(in_channels, f, 9, padding=4)
    self.head_act = nn.PReLU()
    self.lffbs = nn.ModuleList([_FAGANLFFB(f, tuple(kernel_sizes)) for _ in range(n_lffb)])
    self.body_conv = _conv(f, f, 3)
    self.upsample = nn.ModuleList(
      [nn.Sequential(_conv(f, 4 * f, 3), nn.PixelShuffle(2), nn.PReLU()) for _ in range(int(math.log2(scale)))]
    )
    self.gffb = _FAGANGFFB(f, reduction, connection, alpha, beta)
    self.tail = nn.Conv2d(f, out_channels, 9, padding=4)

  def forward(self, x):
    x = self.head_act(self.head(x))
    h = x
    for block in self.lffbs:
      h = block(h)
    h = self.body_conv(h) + x
    if self.attention_at == 'lr':
      h = self.gffb(h)
    for stage in self.upsample:
      h = stage(h)
    if self.attention_at == 'hr':
      h = self.gffb(h)
    return self.tail(h)


class TorchFAGANDiscriminator(nn.Module):
  """FA-GAN discriminator with the classic `torch.nn.utils.spectral_norm` on every conv/Linear.

  `forward` gives the logits (B,), as the flax module. In train mode torch runs `power_iterations`
  steps from `weight_u` per call, which is what flax does in both modes; in eval mode torch uses the
  stored u and v as they are (sigma = u . W v), which equals flax's eval output once u has converged.
  """

  def __init__(self, base_features: int = 64, power_iterations: int = 1, in_channels: int = 1):
    super().__init__()
    from mrisr_jax.models.fagan import D_BLOCKS, D_HEAD_MULTIPLIER, D_NEGATIVE_SLOPE

    def sn(module):
      return nn.utils.spectral_norm(module, n_power_iterations=power_iterations)

    f = base_features
    convs, cin = [sn(nn.Conv2d(in_channels, f, 3, 1, 1))], f
    for mult, stride in D_BLOCKS:
      convs.append(sn(nn.Conv2d(cin, mult * f, 3, stride, 1)))
      cin = mult * f
    self.convs = nn.ModuleList(convs)
    self.dense = nn.ModuleList([sn(nn.Linear(cin, D_HEAD_MULTIPLIER * f)), sn(nn.Linear(D_HEAD_MULTIPLIER * f, 1))])
    self.negative_slope = D_NEGATIVE_SLOPE

  def forward(self, x):
    for conv in self.convs:
      x = F.leaky_relu(conv(x), self.negative_slope)
    x = F.leaky_relu(self.dense[0](x.mean((2, 3))), self.negative_slope)
    return self.dense[1](x)[:, 0]


class TorchSRDCGANGenerator(nn.Module):
  """SR-DCGAN generator (`models.srdcgan`): conv{i} + bn{i} (i = 1..7), conv3/conv6 transposed, conv8."""

  def __init__(
    self,
    scale: int = 4,
    in_channels: int = 1,
    out_channels: int = 1,
    features: int = 64,
    input_mean: float = 0.5,
    input_std: float = 0.5,
  ):
    super().__init__()
    from mrisr_jax.models.srdcgan import TRANSPOSED_LAYERS

    if scale != 4:
      raise ValueError(f'model.scale={scale!r}: SRDCGANGenerator supports scales (4,)')
    self.input_mean, self.input_std = input_mean, input_std
    f = features
    for i in range(1, 8):
      cin = in_channels if i == 1 else f
      conv = (
        nn.ConvTranspose2d(cin, f, 4, 2, 1, bias=False)
        if i in TRANSPOSED_LAYERS
        else nn.Conv2d(cin, f, 3, 1, 1, bias=False)
      )
      setattr(self, f'conv{i}', conv)
      setattr(self, f'bn{i}', nn.BatchNorm2d(f))
    self.conv8 = nn.Conv2d(f, out_channels, 3, 1, 1)

  def forward(self, x):
    x = (x - self.input_mean) / self.input_std
    for i in range(1, 8):
      x = torch.relu(getattr(self, f'bn{i}')(getattr(self, f'conv{i}')(x)))
    return torch.tanh(self.conv8(x)) * self.input_std + self.input_mean


class TorchSRDCGANDiscriminator(nn.Module):
  """SR-DCGAN discriminator: conv1..conv6, bn2..bn6, dense; logits (B,).

  The dense layer's input size is fixed by `image_size` (H, W), as the flax module's by the image it
  was initialised on; the flax module has no such field, so `build_torch_discriminator` gives the
  seed's 240x256 (build the class directly for another size).
  """

  def __init__(
    self,
    features: tuple[int, ...] = (64, 64, 128, 128, 256, 256),
    negative_slope: float = 0.2,
    input_mean: float = 0.5,
    input_std: float = 0.5,
    in_channels: int = 1,
    image_size: tuple[int, int] = (240, 256),
  ):
    super().__init__()
    from mrisr_jax.models.srdcgan import DISCRIMINATOR_STRIDES

    if len(features) != len(DISCRIMINATOR_STRIDES):
      raise ValueError(
        f'SRDCGANDiscriminator needs {len(DISCRIMINATOR_STRIDES)} conv widths, got features={tuple(features)}'
      )
    self.negative_slope, self.input_mean, self.input_std = negative_slope, input_mean, input_std
    cin, (h, w) = in_channels, image_size
    for i, (cout, s) in enumerate(zip(features, DISCRIMINATOR_STRIDES), start=1):
      setattr(self, f'conv{i}', nn.Conv2d(cin, cout, 3, s, 1, bias=i == 1))
      if i > 1:
        setattr(self, f'bn{i}', nn.BatchNorm2d(cout))
      cin, h, w = cout, (h - 1) // s + 1, (w - 1) // s + 1
    self.dense = nn.Linear(cin * h * w, 1)

  def forward(self, x):
    x = (x - self.input_mean) / self.input_std
    for i in range(1, 7):
      x = getattr(self, f'conv{i}')(x)
      if i > 1:
        x = getattr(self, f'bn{i}')(x)
      x = F.leaky_relu(x, self.negative_slope)
    return self.dense(torch.flatten(x, 1))[:, 0]


class _PerceptualRes(nn.Module):
  def __init__(self, f: int):
    super().__init__()
    self.conv1, self.bn1 = nn.Conv2d(f, f, 3, 1, 1, bias=False), nn.BatchNorm2d(f)
    self.conv2, self.bn2 = nn.Conv2d(f, f, 3, 1, 1, bias=False), nn.BatchNorm2d(f)

  def forward(self, x):
    return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x


class _PerceptualUp(nn.Module):
  def __init__(self, f: int, mode: str):
    super().__init__()
    self.mode = mode
    if mode == 'transposed':
      self.deconv = nn.ConvTranspose2d(f, f, 3, 2, 1, output_padding=1, bias=False)
    else:
      self.conv = nn.Conv2d(f, f, 3, 1, 1, bias=False)
    self.bn = nn.BatchNorm2d(f)

  def forward(self, x):
    if self.mode == 'transposed':
      x = self.deconv(x)
    else:
      x = self.conv(F.interpolate(x, scale_factor=2, mode='nearest'))
    return torch.relu(self.bn(x))


class TorchPerceptualSRNet(nn.Module):
  """Johnson et al.'s SR network (`models.perceptual_sr`): conv_in, bn_in, res_{i}, up_{i}, conv_out."""

  def __init__(
    self,
    scale: int = 4,
    in_channels: int = 1,
    out_channels: int = 1,
    features: int = 64,
    num_resblocks: int = 4,
    upsample: str = 'transposed',
  ):
    super().__init__()
    if scale not in (2, 4) or upsample not in ('transposed', 'nearest'):
      raise ValueError(f'PerceptualSRNet: unsupported scale={scale!r} or upsample={upsample!r}')
    f = features
    self.num_resblocks, self.num_up = num_resblocks, int(math.log2(scale))
    self.conv_in, self.bn_in = nn.Conv2d(in_channels, f, 9, 1, 4, bias=False), nn.BatchNorm2d(f)
    for i in range(num_resblocks):
      setattr(self, f'res_{i}', _PerceptualRes(f))
    for i in range(self.num_up):
      setattr(self, f'up_{i}', _PerceptualUp(f, upsample))
    self.conv_out = nn.Conv2d(f, out_channels, 9, 1, 4)

  def forward(self, x):
    x = torch.relu(self.bn_in(self.conv_in(x)))
    for i in range(self.num_resblocks):
      x = getattr(self, f'res_{i}')(x)
    for i in range(self.num_up):
      x = getattr(self, f'up_{i}')(x)
    return self.conv_out(x)


def _mirror(name: str, kind: str, known: dict, build) -> nn.Module:
  """The registry's torch mirror of `name` with the field values of the flax module `build()` gives
  (registry did the validation); mirror arguments the flax module lacks (a discriminator's
  in_channels, image_size) keep their defaults."""
  if name not in known:
    raise ValueError(f'no torch mirror of {kind} {name!r}; supported: {", ".join(sorted(known))}')
  cls, flax_module = registry.torch_mirror_class(name), build()
  names = [p for p in inspect.signature(cls.__init__).parameters if p != 'self' and hasattr(flax_module, p)]
  return cls(**{n: getattr(flax_module, n) for n in names})


def build_torch_generator(model_cfg: ml_collections.ConfigDict) -> nn.Module:
  """The torch mirror of `registry.build_generator(model_cfg)` (same fields, same checks)."""
  return _mirror(model_cfg.name, 'generator', registry.GENERATORS, lambda: registry.build_generator(model_cfg))


def build_torch_discriminator(config: ml_collections.ConfigDict) -> nn.Module:
  """The torch mirror of `registry.build_discriminator(config)`."""
  return _mirror(
    config.discriminator.name, 'discriminator', registry.DISCRIMINATORS, lambda: registry.build_discriminator(config)
  )
