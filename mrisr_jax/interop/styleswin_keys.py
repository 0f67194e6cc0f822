"""State-dict key maps between the flax StyleSwin (`mrisr_jax.models.styleswin`) and the public torch layout.

numpy only. A key map is `{torch_key: (flax_path | None, transform)}` in the torch `state_dict()` order;
the flax path starts with the collection ('params', ...). Transforms:
  'conv'        flax HWIO kernel <-> torch OIHW weight (ToRGB's 1x1 conv)
  'linear'      flax Dense kernel (in, out) <-> torch Linear weight (out, in)
  'copy'        the same array (biases, LayerNorm scale/bias, alpha, bias tables, EqualLinear weights,
                which the flax module keeps in torch layout)
  'const_nchw'  ConstantInput (1, 4, 4, C) <-> (1, C, 4, 4)
  'rgb_bias'    ToRGB bias (1, 1, 1, 3) <-> (1, 3, 1, 1)
  'buffer'      path None: a torch buffer that carries no learned value; `*_buffers` gives its value
Sizes (layer count, widths, windows, heads) are read off the params' shapes, so any size, channel
multiplier or channel_base works.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

# the standard Swin buffers, numpy-only (this module imports no jax)
from mrisr_jax.interop.convert import relative_position_index, swin_attn_mask

KeyMap = dict[str, tuple[tuple | None, str]]


def _is_synthesis(tree: Any) -> bool:
  return isinstance(tree, Mapping) and 'input' in tree and 'layers_0' in tree


def _walk(tree: Any, path: tuple) -> Any:
  for p in path:
    if not isinstance(tree, Mapping) or p not in tree:
      return None
    tree = tree[p]
  return tree


def _find(tree: Any, path: tuple, check) -> Any:
  """The subtree at `path` in `tree`, where `tree` may be the variables, the 'params' collection or the
  subtree itself."""
  for cand in (_walk(tree, path), _walk(tree, path[1:]), tree):
    if cand is not None and check(cand):
      return cand
  raise ValueError(f'no StyleSwin subtree at {path} (top-level keys: {sorted(tree)[:8]})')


def _find_synthesis(params: Any, flax_prefix: tuple | None) -> Any:
  paths = [tuple(flax_prefix)] if flax_prefix else []
  paths += [('params', 'synthesis'), ('params', 'generator')]
  for path in paths:
    for cand in (_walk(params, path), _walk(params, path[1:])):
      if _is_synthesis(cand):
        return cand
  if _is_synthesis(params):
    return params
  raise ValueError(f'no StyleSwin synthesis subtree (input, layers_0) at {flax_prefix}')


def _n_layers(syn: Mapping) -> int:
  n = 0
  while f'layers_{n}' in syn:
    n += 1
  return n


def _window(table_rows: int) -> int:
  return (int(round(np.sqrt(table_rows))) + 1) // 2


def _block_geometry(syn: Mapping, k: int) -> tuple[int, int, int]:
  """(resolution, window, shift) of the blocks of layer k."""
  res = 4 * 2**k
  ws = _window(np.shape(syn[f'layers_{k}']['blocks_0']['attn_0']['relative_position_bias_table'])[0])
  return res, ws, (ws // 2 if res > ws else 0)


def upsample_kernel() -> np.ndarray:
  """ToRGB's `upsample.kernel`: [1,3,3,1] outer [1,3,3,1] / 64 * 4, float32."""
  k = np.asarray([1, 3, 3, 1], np.float32)
  k = k[None, :] * k[:, None]
  return (k / k.sum() * 4).astype(np.float32)


def synthesis_key_map(params: Any, prefix: str = '', flax_prefix: tuple = ('params', 'synthesis')) -> KeyMap:
  """Keys `{prefix}input.input`, `{prefix}layers.*` <- flax paths under `flax_prefix`.

  `params`: the variables, the 'params' collection, or the synthesis subtree itself (sizes are read from it);
  `flax_prefix` is where the synthesis lives in the full variables ('params', 'generator' in TransMRSR)."""
  syn = _find_synthesis(params, flax_prefix)
  fp = tuple(flax_prefix)
  out: KeyMap = {f'{prefix}input.input': (fp + ('input', 'input'), 'const_nchw')}
  for k in range(_n_layers(syn)):
    lt, lf = f'{prefix}layers.{k}.', fp + (f'layers_{k}',)
    _, _, shift = _block_geometry(syn, k)
    for j in range(2):
      bt, bf = f'{lt}blocks.{j}.', lf + (f'blocks_{j}',)
      if shift:
        out[bt + 'attn_mask2'] = (None, 'buffer')
      out[f'{bt}norm1.style.weight'] = (bf + ('norm1', 'style', 'weight'), 'copy')
      out[f'{bt}norm1.style.bias'] = (bf + ('norm1', 'style', 'bias'), 'copy')
      for lin in ('qkv', 'proj'):
        out[f'{bt}{lin}.weight'] = (bf + (lin, 'kernel'), 'linear')
        out[f'{bt}{lin}.bias'] = (bf + (lin, 'bias'), 'copy')
      for b in range(2):
        table = bf + (f'attn_{b}', 'relative_position_bias_table')
        out[f'{bt}attn.{b}.relative_position_bias_table'] = (table, 'copy')
        out[f'{bt}attn.{b}.relative_position_index'] = (None, 'buffer')
      out[f'{bt}norm2.style.weight'] = (bf + ('norm2', 'style', 'weight'), 'copy')
      out[f'{bt}norm2.style.bias'] = (bf + ('norm2', 'style', 'bias'), 'copy')
      for fc in ('fc1', 'fc2'):
        out[f'{bt}mlp.{fc}.weight'] = (bf + ('mlp', fc, 'kernel'), 'linear')
        out[f'{bt}mlp.{fc}.bias'] = (bf + ('mlp', fc, 'bias'), 'copy')
    if 'upsample' in syn[f'layers_{k}']:
      ut, uf = f'{lt}upsample.', lf + ('upsample',)
      out[ut + 'alpha'] = (uf + ('alpha',), 'copy')
      out[ut + 'norm.weight'] = (uf + ('norm', 'scale'), 'copy')
      out[ut + 'norm.bias'] = (uf + ('norm', 'bias'), 'copy')
      out[ut + 'reduction.weight'] = (uf + ('reduction', 'kernel'), 'linear')
      out[ut + 'sin_pos_embed._float_tensor'] = (None, 'buffer')
  return out


def synthesis_buffers(params: Any, prefix: str = '', flax_prefix: tuple | None = None) -> dict[str, np.ndarray]:
  """The torch buffers of `synthesis_key_map`: relative_position_index (int64), attn_mask2 (float32), and
  sin_pos_embed._float_tensor (float32 (1,); torch leaves it uninitialised, written here as 0)."""
  syn = _find_synthesis(params, flax_prefix)
  out = {}
  for k in range(_n_layers(syn)):
    res, ws, shift = _block_geometry(syn, k)
    for j in range(2):
      bt = f'{prefix}layers.{k}.blocks.{j}.'
      if shift:
        out[bt + 'attn_mask2'] = swin_attn_mask(res, res, ws, shift)
      for b in range(2):
        out[f'{bt}attn.{b}.relative_position_index'] = relative_position_index(ws)
    if 'upsample' in syn[f'layers_{k}']:
      out[f'{prefix}layers.{k}.upsample.sin_pos_embed._float_tensor'] = np.zeros((1,), np.float32)
  return out


def _generator_params(params: Any) -> Mapping:
  return _find(params, ('params',), lambda t: 'style' in t and 'synthesis' in t)


def styleswin_g_key_map(params: Any) -> KeyMap:
  """g_ema (StyleSwin `Generator`) <- `StyleSwinGenerator` params: style.{i}, input, layers.*, to_rgbs.{k}.

  `params`: the variables or their 'params' collection."""
  gp = _generator_params(params)
  out: KeyMap = {}
  n_mlp = 0
  while f'layers_{n_mlp + 1}' in gp['style']:
    n_mlp += 1
  for i in range(1, n_mlp + 1):
    out[f'style.{i}.weight'] = (('params', 'style', f'layers_{i}', 'weight'), 'copy')
    out[f'style.{i}.bias'] = (('params', 'style', f'layers_{i}', 'bias'), 'copy')
  out.update(synthesis_key_map(gp['synthesis'], '', ('params', 'synthesis')))
  n_layers = _n_layers(gp['synthesis'])
  for k in range(n_layers):
    rt, rf = f'to_rgbs.{k}.', ('params', f'to_rgbs_{k}')
    out[rt + 'bias'] = (rf + ('bias',), 'rgb_bias')
    if k < n_layers - 1:
      out[rt + 'upsample.kernel'] = (None, 'buffer')
    out[rt + 'conv.weight'] = (rf + ('conv', 'kernel'), 'conv')
    out[rt + 'conv.bias'] = (rf + ('conv', 'bias'), 'copy')
  return out


def styleswin_g_buffers(params: Any) -> dict[str, np.ndarray]:
  """The torch buffers of `styleswin_g_key_map` (synthesis buffers + to_rgbs.{k}.upsample.kernel)."""
  gp = _generator_params(params)
  out = synthesis_buffers(gp['synthesis'], '')
  n_layers = _n_layers(gp['synthesis'])
  for k in range(n_layers - 1):
    out[f'to_rgbs.{k}.upsample.kernel'] = upsample_kernel()
  return out


def styleswin_synthesis_key_map(params: Any) -> KeyMap:
  """A standalone `Synthesis` (TransMRSR's decoder as a prior: g_ema without style.* and to_rgbs.*)."""
  return synthesis_key_map(params, '', ('params',))


def styleswin_synthesis_buffers(params: Any) -> dict[str, np.ndarray]:
  return synthesis_buffers(params, '', ('params',))
