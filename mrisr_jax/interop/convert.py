"""flax variables <-> PyTorch state_dicts: the CASRGAN reference's SRCNN, DRRN, EDSR, RDN, CASR and
discriminator, and the mirrors in `torch_models` of FA-GAN, SR-DCGAN and PerceptualSRNet.

numpy only (no torch): state_dict values come out as numpy arrays in the torch layout (wrap with
`torch.from_numpy`), and torch tensors going in are read through `.detach().cpu().numpy()`.
Conv kernels are flax HWIO <-> torch OIHW; the flax->torch key tables are in the docstrings of
`mrisr_jax.models.{srcnn,drrn,edsr,rdn}` and in `discriminator.torch_key_map`.

CASR (`casr_key_map`) adds three things: its D AFEBs are one scanned flax module (params stacked
on a leading axis), so a key-map path may end in an int, the slice of the stacked leaf; Linear
weights are transposed ('linear'); and the reference keeps three buffers in its state_dict that
carry no learned values (`relative_position_index`, `attn_mask`, the AHPF `weight` of ones).
Export writes them exactly as the reference computes them; import checks them against those
values (a wrong shape or a wrong value is an error) and then drops them.

The other models have no reference checkpoint; their layout is exactly the `state_dict()` of their
`torch_models` mirror, keys named after its modules (tables in the models' docstrings):

  fagan          head, head_act (PReLU), lffbs.{i}.paths.{p}.{0,2,4}, lffbs.{i}.fuse, body_conv,
                 upsample.{i}.0 (conv), upsample.{i}.2 (PReLU), gffb.channel_attention.fc_{reduce,
                 expand} (Linear), gffb.self_attention.{gamma,f,g,h,v}, tail
  srdcgan        conv{i}, bn{i} (i = 1..7; conv3, conv6 ConvTranspose2d: 'deconv', (2, 3, 0, 1)), conv8
  srdcgan_d      conv1, conv{i} + bn{i} (i = 2..6), dense (Linear, input flattened in torch's CHW order)
  perceptual_sr  conv_in, bn_in, res_{i}.{conv1,bn1,conv2,bn2}, up_{i}.{deconv|conv,bn}, conv_out
  fagan_sn_d     convs.{i} (i = 0..7), dense.{0,1}: classic `torch.nn.utils.spectral_norm`, each
                 {bias, weight_orig, weight_u, weight_v}

BatchNorm2d: weight, bias <- params scale, bias; running_mean, running_var, num_batches_tracked <-
batch_stats mean, var, num_batches_tracked (int32 <-> int64).

Spectral norm: flax keeps `u` (1, O) and `sigma` in batch_stats and, in both modes, runs its power
iteration from `u` on every call (torch does that only in train mode). Export: weight_u = u,
weight_v = normalize(W^T u) with W = weight_orig.reshape(O, -1) (torch's order), so torch's eval sigma
u . W v is |W^T u|, flax's eval sigma once u has converged (the state training leaves). Import:
u = weight_u, sigma = weight_u . W weight_v (the sigma the torch model last divided by; flax only
records it, every call recomputes it); weight_v itself has no flax variable.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import numpy as np

from mrisr_jax import registry

# Every model in the registry has a layout; 'discriminator' is the reference JSON's name.
SUPPORTED = tuple(registry.MODELS)
KeyMap = dict[str, tuple[tuple | None, str]]  # torch key -> (flax path or None, transform)
_ALIASES = {'discriminator': 'casrgan_d'}
_SHOWN = 3  # keys named per category in an error message
# The reference builds its shifted blocks' `attn_mask` for a (REFERENCE_HR_SIZE // scale)-pixel
# grid (the HR training crop over the scale), not for the token grid the block sees.
REFERENCE_HR_SIZE = 384
# models.srdcgan.TRANSPOSED_LAYERS, repeated so that this module needs no jax (a test keeps them equal)
SRDCGAN_TRANSPOSED = (3, 6)


def _canonical(model_name: str) -> str:
  name = _ALIASES.get(model_name, model_name)
  if name not in SUPPORTED:
    raise ValueError(f'no state_dict conversion for {model_name!r}; supported: {", ".join(SUPPORTED)}')
  return name


def _leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
  """(path, leaf) in the tree's own order (flax's creation order, which is torch's)."""
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from _leaves(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def key_map(model_name: str, like_variables: Mapping[str, Any]) -> KeyMap:
  """{torch key: (flax path incl. collection, transform)}; transform is 'conv', 'deconv'
  (ConvTranspose2d), 'linear', 'copy', 'count', 'const_nchw' / 'rgb_bias' (StyleSwin's (1, C, H, W)
  constant and ToRGB bias, NHWC in flax), for a generated buffer 'buffer' (path None: no flax
  variable), or for spectral norm 'sn_u' (path: `u`) and 'sn_v' (path: the kernel; no flax
  variable). A path ending in an int names that slice of a stacked (scanned) leaf.

  The registry names each model's table (the `*_key_map` functions below). The tables depend on
  the depth (EDSR's body_conv is model_2.{n_resblocks}), which is read off `like_variables`.
  """
  return registry.key_map_function(_canonical(model_name))(like_variables['params'])


def _rules_key_map(name: str, rules: list, params: Mapping[str, Any]) -> KeyMap:
  """The reference's plain-conv models: each flax conv module renamed by the first rule that matches."""
  out = {}
  for path, _ in _leaves(params):
    module = '/'.join(path[:-1])
    for pattern, repl in rules:
      m = re.fullmatch(pattern, module)
      if m:
        prefix = m.expand(repl) if isinstance(repl, str) else repl(m)
        break
    else:
      raise ValueError(f'{name}: no reference key for flax param {"/".join(path)}')
    if path[-1] == 'kernel':
      out[f'{prefix}.weight'] = (('params',) + path, 'conv')
    elif path[-1] == 'bias':
      out[f'{prefix}.bias'] = (('params',) + path, 'copy')
    else:
      raise ValueError(f'{name}: unexpected flax param {"/".join(path)}')
  return out


def srcnn_key_map(params: Mapping[str, Any]) -> KeyMap:
  return _rules_key_map('srcnn', [(r'(\w+)', r'\1')], params)


def drrn_key_map(params: Mapping[str, Any]) -> KeyMap:
  return _rules_key_map(
    'drrn',
    [
      (r'block_(\d+)/entry', r'rbs.\1.conv1.1'),
      (r'block_(\d+)/residual_unit/conv_(\d+)', lambda m: f'rbs.{m[1]}.residule_unit.conv.{2 * int(m[2]) + 1}'),
      (r'recon', 'recon.1'),
    ],
    params,
  )


def edsr_key_map(params: Mapping[str, Any]) -> KeyMap:
  n_resblocks = _count(params, r'body_\d+')
  return _rules_key_map(
    'edsr',
    [
      (r'head', 'model_1.0'),
      (r'body_(\d+)/conv_(\d+)', lambda m: f'model_2.{m[1]}.model.{2 * int(m[2])}'),
      (r'body_conv', f'model_2.{n_resblocks}'),
      (r'upsampler/conv_(\d+)', lambda m: f'model_3.0.model.{2 * int(m[1])}'),
      (r'tail', 'model_3.1'),
    ],
    params,
  )


def rdn_key_map(params: Mapping[str, Any]) -> KeyMap:
  return _rules_key_map(
    'rdn',
    [
      (r'sfe(\d)', r'SFE\1'),
      (r'rdb_(\d+)/conv_(\d+)', r'RDBs.\1.convs.\2.conv.0'),
      (r'rdb_(\d+)/lff', r'RDBs.\1.LFF'),
      (r'gff_(\d)', r'GFF.\1'),
      (r'upscale_(\d)', r'upscale.\1'),
    ],
    params,
  )


def casrgan_d_key_map(params: Mapping[str, Any]) -> KeyMap:
  """The reference discriminator's table, `models.discriminator.torch_key_map` (imports jax)."""
  del params  # fixed: the reference discriminator has one shape
  from mrisr_jax.models.discriminator import torch_key_map  # pylint: disable=import-outside-toplevel

  return {k: (spec.path, spec.transform) for k, spec in torch_key_map().items()}


def _casr_meta(params: Mapping[str, Any]) -> dict[str, int]:
  """The CASR hyper-parameters the key table and the buffers depend on, read off param shapes."""
  g0 = params['sfe']['kernel'].shape[-1]
  ups = sorted(k for k in params['upsampler'] if re.fullmatch(r'conv_\d+', k))
  r2 = params['upsampler']['conv_0']['kernel'].shape[-1] // g0
  return dict(
    g0=g0,
    depth=params['afebs']['ahpf']['hp_factor'].shape[0],
    rdb_depth=sum(1 for k in params['afebs']['rdb'] if re.fullmatch(r'conv_\d+', k)),
    n_stb=sum(1 for k in params['sab'] if re.fullmatch(r'stb_\d+', k)),
    window=math.isqrt(params['sab']['stb_0']['attn']['relative_position_bias_table'].shape[0]) // 2 + 1,
    scale=3 if r2 == 9 else 2 ** len(ups),
  )


def casr_key_map(params: Mapping[str, Any]) -> KeyMap:
  """CASR's table, in the reference's state_dict order (the flax tree's order differs)."""
  m = _casr_meta(params)
  out: dict[str, tuple[tuple | None, str]] = {}

  def add(prefix, module, kind='conv', bias=True, index=None):
    idx = () if index is None else (index,)
    out[f'{prefix}.weight'] = (('params',) + module + ('kernel',) + idx, kind)
    if bias:
      out[f'{prefix}.bias'] = (('params',) + module + ('bias',) + idx, 'copy')

  def norm(prefix, module):
    out[f'{prefix}.weight'] = (('params',) + module + ('scale',), 'copy')
    out[f'{prefix}.bias'] = (('params',) + module + ('bias',), 'copy')

  add('sfe.0', ('sfe',))
  for i in range(m['depth']):
    a = f'AFEs.{i}'
    for p in ('hp_factor', 'beta'):
      out[f'{a}.adaptive_high_pass.{p}'] = (('params', 'afebs', 'ahpf', p, i), 'copy')
    out[f'{a}.adaptive_high_pass.weight'] = (None, 'buffer')
    for j in (0, 2):
      add(f'{a}.se.se_excitation.{j}', ('afebs', 'se', f'excite_{j}'), index=i)
    for c in range(m['rdb_depth']):
      add(f'{a}.rdb.convs.{c}.conv.0', ('afebs', 'rdb', f'conv_{c}'), index=i)
    add(f'{a}.rdb.LFF', ('afebs', 'rdb', 'lff'), index=i)
  add('GFF.0', ('gff_0',))
  add('GFF.1', ('gff_1',))
  add('SAB.patch_embed.proj', ('sab', 'patch_embed'))
  add('SAB.patch_unembed.proj', ('sab', 'patch_unembed'))
  for j in range(m['n_stb']):
    t, f = f'SAB.transformers.{j}', ('sab', f'stb_{j}')
    if j % 2 and m['window'] // 2:  # shifted block
      out[f'{t}.attn_mask'] = (None, 'buffer')
    norm(f'{t}.norm_1', f + ('norm_1',))
    out[f'{t}.attn.relative_position_bias_table'] = (('params',) + f + ('attn', 'relative_position_bias_table'), 'copy')
    out[f'{t}.attn.relative_position_index'] = (None, 'buffer')
    add(f'{t}.attn.qkv', f + ('attn', 'qkv'), 'linear')
    add(f'{t}.attn.proj', f + ('attn', 'proj'), 'linear')
    norm(f'{t}.norm_2', f + ('norm_2',))
    add(f'{t}.mlp.fc_1', f + ('mlp', 'fc_1'), 'linear')
    add(f'{t}.mlp.fc_2', f + ('mlp', 'fc_2'), 'linear')
  add('SAB.conv1.0', ('sab', 'conv1'))
  add('SAB.conv2.0', ('sab', 'conv2'))
  for k in range(sum(1 for k in params['upsampler'] if re.fullmatch(r'conv_\d+', k))):
    add(f'upscale.upscale.0.model.{2 * k}', ('upsampler', f'conv_{k}'), bias=False)
  add('upscale.upscale.1', ('tail',))
  return out


class _Table(dict):
  """{torch key: (flax path, transform)} built module by module, in the mirror's state_dict order."""

  def __init__(self, params: Mapping[str, Any]):
    super().__init__()
    self.params = params

  def layer(self, prefix: str, module: tuple, kind: str = 'conv') -> None:
    """Conv2d ('conv'), ConvTranspose2d ('deconv') or Linear ('linear'); bias if the flax one has one."""
    self[f'{prefix}.weight'] = (('params',) + module + ('kernel',), kind)
    if 'bias' in _get(self.params, module):
      self[f'{prefix}.bias'] = (('params',) + module + ('bias',), 'copy')

  def bn(self, prefix: str, module: tuple) -> None:
    for t, f in (('weight', 'scale'), ('bias', 'bias')):
      self[f'{prefix}.{t}'] = (('params',) + module + (f,), 'copy')
    for t, f in (('running_mean', 'mean'), ('running_var', 'var')):
      self[f'{prefix}.{t}'] = (('batch_stats',) + module + (f,), 'copy')
    self[f'{prefix}.num_batches_tracked'] = (('batch_stats',) + module + ('num_batches_tracked',), 'count')

  def sn(self, prefix: str, name: str, kind: str) -> None:
    """A classic spectral_norm layer: own params (bias, weight_orig), then buffers (u, v)."""
    kernel = ('params', name, 'kernel')
    self[f'{prefix}.bias'] = (('params', name, 'bias'), 'copy')
    self[f'{prefix}.weight_orig'] = (kernel, kind)
    self[f'{prefix}.weight_u'] = (_sn_state(kernel, 'u'), 'sn_u')
    self[f'{prefix}.weight_v'] = (kernel, 'sn_v')


def _count(params: Mapping[str, Any], pattern: str) -> int:
  return sum(1 for k in params if re.fullmatch(pattern, k))


def _sn_state(kernel_path: tuple, leaf: str) -> tuple:
  """flax SpectralNorm's batch_stats path of `u` / `sigma` for params/{m}/kernel."""
  m = kernel_path[1]
  return ('batch_stats', f'sn_{m}', f'{m}/kernel/{leaf}')


def fagan_key_map(params: Mapping[str, Any]) -> _Table:
  t = _Table(params)
  t.layer('head', ('head',))
  t['head_act.weight'] = (('params', 'head_act', 'weight'), 'copy')
  for i in range(_count(params, r'lffb_\d+')):
    lffb = params[f'lffb_{i}']
    for p in range(_count(lffb, r'path_\d+')):
      for j in range(3):
        t.layer(f'lffbs.{i}.paths.{p}.{2 * j}', (f'lffb_{i}', f'path_{p}', f'conv_{j}'))
    t.layer(f'lffbs.{i}.fuse', (f'lffb_{i}', 'fuse'))
  t.layer('body_conv', ('body_conv',))
  for i in range(_count(params, r'upsample_\d+')):
    t.layer(f'upsample.{i}.0', (f'upsample_{i}', 'conv'))
    t[f'upsample.{i}.2.weight'] = (('params', f'upsample_{i}', 'prelu', 'weight'), 'copy')
  for fc in ('fc_reduce', 'fc_expand'):
    t.layer(f'gffb.channel_attention.{fc}', ('gffb', 'channel_attention', fc), 'linear')
  t['gffb.self_attention.gamma'] = (('params', 'gffb', 'self_attention', 'gamma'), 'copy')
  for c in 'fghv':
    t.layer(f'gffb.self_attention.{c}', ('gffb', 'self_attention', c))
  t.layer('tail', ('tail',))
  return t


def fagan_sn_d_key_map(params: Mapping[str, Any]) -> _Table:
  t = _Table(params)
  for i in range(_count(params, r'conv_\d+')):
    t.sn(f'convs.{i}', f'conv_{i}', 'conv')
  for i in range(_count(params, r'dense_\d+')):
    t.sn(f'dense.{i}', f'dense_{i}', 'linear')
  return t


def srdcgan_key_map(params: Mapping[str, Any]) -> _Table:
  t = _Table(params)
  for i in range(1, 8):
    t.layer(f'conv{i}', (f'conv{i}',), 'deconv' if i in SRDCGAN_TRANSPOSED else 'conv')
    t.bn(f'bn{i}', (f'bn{i}',))
  t.layer('conv8', ('conv8',))
  return t


def srdcgan_d_key_map(params: Mapping[str, Any]) -> _Table:
  t = _Table(params)
  for i in range(1, _count(params, r'conv\d+') + 1):
    t.layer(f'conv{i}', (f'conv{i}',))
    if f'bn{i}' in params:
      t.bn(f'bn{i}', (f'bn{i}',))
  t.layer('dense', ('dense',), 'linear')
  return t


def perceptual_sr_key_map(params: Mapping[str, Any]) -> _Table:
  t = _Table(params)
  t.layer('conv_in', ('conv_in',))
  t.bn('bn_in', ('bn_in',))
  for i in range(_count(params, r'res_\d+')):
    for j in (1, 2):
      t.layer(f'res_{i}.conv{j}', (f'res_{i}', f'conv{j}'))
      t.bn(f'res_{i}.bn{j}', (f'res_{i}', f'bn{j}'))
  for i in range(_count(params, r'up_\d+')):
    if 'deconv' in params[f'up_{i}']:
      t.layer(f'up_{i}.deconv', (f'up_{i}', 'deconv'), 'deconv')
    else:
      t.layer(f'up_{i}.conv', (f'up_{i}', 'conv'))
    t.bn(f'up_{i}.bn', (f'up_{i}', 'bn'))
  t.layer('conv_out', ('conv_out',))
  return t


def _torch_weight(kernel: np.ndarray, transform: str) -> np.ndarray:
  """A flax conv / Linear kernel as torch's weight, float32."""
  return np.asarray(np.transpose(kernel, (3, 2, 0, 1)) if transform == 'conv' else kernel.T, np.float32)


def _sn_v(weight: np.ndarray, u: np.ndarray) -> np.ndarray:
  """normalize(W^T u), W = weight.reshape(O, -1), with torch's eps (F.normalize, 1e-12)."""
  v = weight.reshape(weight.shape[0], -1).T @ np.asarray(u, np.float32).reshape(-1)
  return np.array(v / max(float(np.linalg.norm(v)), 1e-12), np.float32)


def _sn_sigma(weight: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """torch's eval-mode sigma: u . (W v)."""
  return np.array(np.dot(u.reshape(-1), weight.reshape(weight.shape[0], -1) @ v), np.float32)


def relative_position_index(w: int) -> np.ndarray:
  """The standard Swin relative-position index buffer, (w*w, w*w) int64."""
  coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing='ij')).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (w - 1)
  return (rel[..., 0] * (2 * w - 1) + rel[..., 1]).astype(np.int64)


def swin_attn_mask(h: int, wd: int, w: int, shift: int) -> np.ndarray:
  """The standard Swin region mask for an (h, wd) grid: (nW, w*w, w*w) float32, 0 or -100."""
  img = np.zeros((h, wd), np.float32)
  cnt = 0
  for hs in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
    for ws in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
      img[hs, ws] = cnt
      cnt += 1
  win = img.reshape(h // w, w, wd // w, w).transpose(0, 2, 1, 3).reshape(-1, w * w)
  diff = win[:, None, :] - win[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


def reference_attn_mask(window: int, scale: int) -> np.ndarray:
  """The reference's `attn_mask` buffer: sized for a REFERENCE_HR_SIZE // scale pixel grid."""
  side = REFERENCE_HR_SIZE // scale
  return swin_attn_mask(side, side, window, window // 2)


def _casr_buffer_spec(key: str, m: Mapping[str, int]) -> tuple[tuple[int, ...], str]:
  w = m['window']
  if key.endswith('.adaptive_high_pass.weight'):
    return (m['g0'], m['g0'], 3, 3), 'float32'
  if key.endswith('.relative_position_index'):
    return (w * w, w * w), 'int64'
  side = REFERENCE_HR_SIZE // m['scale']
  return ((side // w) ** 2, w * w, w * w), 'float32'


def _casr_buffer(key: str, m: Mapping[str, int]) -> np.ndarray:
  if key.endswith('.adaptive_high_pass.weight'):
    return np.ones((m['g0'], m['g0'], 3, 3), np.float32)
  if key.endswith('.relative_position_index'):
    return relative_position_index(m['window'])
  return reference_attn_mask(m['window'], m['scale'])


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _like_shape(like_variables, path) -> tuple[int, ...]:
  """The flax shape at `path`; a trailing int (a stacked slice) drops the leading axis."""
  if isinstance(path[-1], int):
    return tuple(_get(like_variables, path[:-1]).shape)[1:]
  return tuple(_get(like_variables, path).shape)


def _torch_shape(shape: tuple[int, ...], transform: str) -> tuple[int, ...]:
  if transform == 'conv':
    return tuple(shape[i] for i in (3, 2, 0, 1))
  if transform == 'deconv':  # flax (kh, kw, in, out) <-> torch ConvTranspose2d (in, out, kh, kw)
    return tuple(shape[i] for i in (2, 3, 0, 1))
  if transform in ('const_nchw', 'rgb_bias'):  # flax (1, H, W, C) <-> torch (1, C, H, W)
    return tuple(shape[i] for i in (0, 3, 1, 2))
  if transform == 'sn_u':  # flax (1, O) <-> torch (O,)
    return tuple(shape[1:])
  if transform == 'sn_v':  # from the kernel's shape: the in * kh * kw of torch's W.reshape(O, -1)
    return (math.prod(shape[:-1]),)
  return tuple(shape[::-1]) if transform == 'linear' else tuple(shape)


def state_dict_shapes(model_name: str, like_variables: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
  """{torch key: (shape, dtype name)} that `flax_to_state_dict` gives for variables shaped like
  `like_variables` (arrays or `jax.ShapeDtypeStruct`s, e.g. from `jax.eval_shape`)."""
  name = _canonical(model_name)
  table = key_map(name, like_variables)
  if name == 'casr':
    meta = _casr_meta(like_variables['params'])
    buffers = {k: _casr_buffer_spec(k, meta) for k, (_, t) in table.items() if t == 'buffer'}
  else:  # generated from the shapes alone
    buffers = {k: (tuple(v.shape), str(v.dtype)) for k, v in _buffers(name, table, like_variables['params']).items()}
  return {
    k: (
      buffers[k]
      if t == 'buffer'
      else (_torch_shape(_like_shape(like_variables, path), t), 'int64' if t == 'count' else 'float32')
    )
    for k, (path, t) in table.items()
  }


# torch buffers that hold no value (fairseq's SinusoidalPositionalEmbedding `_float_tensor` is
# allocated uninitialised): import checks their shape only
_VALUELESS_BUFFERS = ('._float_tensor',)


def _buffers(name: str, table: KeyMap, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The generated values of the table's 'buffer' keys: CASR's here, other models' from their key-map
  module (`registry.buffers_function`)."""
  keys = [k for k, (_, t) in table.items() if t == 'buffer']
  if not keys:
    return {}
  if name == 'casr':
    meta = _casr_meta(params)
    return {k: _casr_buffer(k, meta) for k in keys}
  return registry.buffers_function(name)(params)


def flax_to_state_dict(model_name: str, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """flax variables -> reference state_dict of fresh, writable numpy arrays (float32; the BN
  `num_batches_tracked` and `relative_position_index` int64; buffers generated)."""
  table = key_map(model_name, variables)
  buffers = _buffers(_canonical(model_name), table, variables['params'])
  out = {}
  for k, (path, t) in table.items():
    if t == 'buffer':
      out[k] = np.array(buffers[k], order='C')
      continue
    if t in ('const_nchw', 'rgb_bias'):
      out[k] = np.array(np.transpose(np.asarray(_get(variables, path)), (0, 3, 1, 2)), np.float32, order='C')
      continue
    v = np.asarray(_get(variables, path))
    if t == 'conv':
      out[k] = np.array(np.transpose(v, (3, 2, 0, 1)), np.float32, order='C')
    elif t == 'deconv':
      out[k] = np.array(np.transpose(v, (2, 3, 0, 1)), np.float32, order='C')
    elif t == 'sn_u':
      out[k] = np.array(v.reshape(-1), np.float32)
    elif t == 'sn_v':  # path is the kernel: v from it and u
      kind = table[k.removesuffix('_v') + '_orig'][1]
      out[k] = _sn_v(_torch_weight(v, kind), np.asarray(_get(variables, _sn_state(path, 'u'))))
    elif t == 'linear':
      out[k] = np.array(v.T, np.float32, order='C')
    elif t == 'count':
      out[k] = np.array(v, np.int64).reshape(())
    else:
      out[k] = np.array(v, np.float32)
  return out


def _to_numpy(v) -> np.ndarray:
  if hasattr(v, 'detach'):  # a torch.Tensor, without importing torch
    v = v.detach().cpu().numpy()
  return np.asarray(v)


def _names(items: list[str]) -> str:
  return ', '.join(items[:_SHOWN]) + (', ...' if len(items) > _SHOWN else '')


def state_dict_to_flax(model_name: str, state_dict: Mapping[str, Any], like_variables: Mapping[str, Any]) -> dict:
  """Reference state_dict (numpy or torch) -> flax variables {'params': ..., ['batch_stats': ...]}
  of numpy arrays, with the structure and dtypes of `like_variables` (arrays or ShapeDtypeStructs).

  Strict: missing keys, unexpected keys, shape mismatches and (CASR) buffers whose values differ
  from the reference's are all collected and raised as one ValueError, so a wrong-scale or
  wrong-model checkpoint says at once what does not fit. CASR's buffers are checked, then dropped.
  Spectral norm: `sigma` is set to weight_u . W weight_v (see the module docstring).
  """
  name = _canonical(model_name)
  table = key_map(name, like_variables)
  buffers = _buffers(name, table, like_variables['params'])
  missing = [k for k in table if k not in state_dict]
  unexpected = [k for k in state_dict if k not in table]
  mismatched, differing, out, stacked, sn_v = [], [], {}, {}, {}
  for k, (path, t) in table.items():
    if k not in state_dict:
      continue
    v = _to_numpy(state_dict[k])
    if t == 'buffer':
      want = tuple(np.shape(buffers[k]))
      if tuple(v.shape) != want:
        mismatched.append(f'{k}: file {tuple(v.shape)}, model {want}')
      elif not k.endswith(_VALUELESS_BUFFERS) and not np.array_equal(v, buffers[k]):
        differing.append(k)
      continue
    if t in ('const_nchw', 'rgb_bias'):  # torch (1, C, H, W) -> flax (1, H, W, C)
      want = _torch_shape(_like_shape(like_variables, path), t)
      if tuple(v.shape) != want:
        mismatched.append(f'{k}: file {tuple(v.shape)}, model {want}')
      else:
        _put(out, path, np.array(np.transpose(v, (0, 2, 3, 1)), np.float32, order='C'))
      continue
    want = _torch_shape(_like_shape(like_variables, path), t)
    if tuple(v.shape) != want:
      mismatched.append(f'{k}: file {tuple(v.shape)}, model {want}')
      continue
    if t == 'conv':
      v = np.transpose(v, (2, 3, 1, 0))
    elif t == 'deconv':
      v = np.transpose(v, (2, 3, 0, 1))
    elif t == 'linear':
      v = v.T
    elif t == 'sn_u':
      v = v.reshape(1, -1)
    elif t == 'sn_v':  # no flax variable: it gives sigma, below
      sn_v[k] = (path, v)
      continue
    if isinstance(path[-1], int):  # one slice of a scanned leaf: stacked below
      stacked.setdefault(path[:-1], {})[path[-1]] = v
      continue
    _put(out, path, np.array(v, dtype=np.dtype(_get(like_variables, path).dtype), order='C'))
  if missing or unexpected or mismatched or differing:
    parts = []
    if missing:
      parts.append(f'missing {len(missing)} keys ({_names(missing)})')
    if unexpected:
      parts.append(f'unexpected {len(unexpected)} ({_names(unexpected)})')
    if mismatched:
      parts.append(f'shape mismatch {len(mismatched)} ({_names(mismatched)})')
    if differing:
      parts.append(f'buffer differs from the reference {len(differing)} ({_names(differing)})')
    raise ValueError(f'checkpoint does not fit {model_name}: {"; ".join(parts)}')
  for path, slices in stacked.items():
    like = _get(like_variables, path)
    _put(out, path, np.stack([slices[i] for i in range(like.shape[0])]).astype(np.dtype(like.dtype)))
  for k, (path, v) in sn_v.items():
    prefix = k.removesuffix('_v')
    weight = _to_numpy(state_dict[prefix + '_orig']).astype(np.float32)
    u = _to_numpy(state_dict[prefix + '_u']).astype(np.float32)
    _put(out, _sn_state(path, 'sigma'), _sn_sigma(weight, u, np.asarray(v, np.float32)))
  return out


def _put(tree: dict, path: tuple, value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value
