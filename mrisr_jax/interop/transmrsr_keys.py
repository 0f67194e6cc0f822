"""Key map between `TransMRSR` flax variables and the public TGP7 state_dict (numpy only).

`transmrsr_key_map(params)` -> {torch key: (flax path incl. 'params' | None, transform)} in the
torch state_dict order (reference Appendix B, minus the unused `MAB` and `fusion_convs`), transforms:
  'conv'    nn.Conv2d: flax HWIO <-> torch OIHW (conv2d, layers.{i}.conv, conv_deep, conv_last)
  'linear'  nn.Linear: flax (in, out) <-> torch (out, in) (encoder qkv, proj, fc1, fc2, reduction)
  'copy'    same array: biases, LayerNorm scale <-> weight, relative-position tables, and the
            Equal* layers (final_layers, condition_{scale,shift}), whose flax params are in torch layout
  'buffer'  generated, no flax variable (path None): relative_position_index, the shifted blocks'
            attn_mask; values from `transmrsr_buffers`
The decoder (`generator.*`) comes from `styleswin_keys.synthesis_key_map` with prefix 'generator.'.
The SDT centroids (batch_stats/sdt/centroids) are not in the torch state_dict (a plain tensor there).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from mrisr_jax.interop.convert import relative_position_index, swin_attn_mask
from mrisr_jax.interop.styleswin_keys import synthesis_buffers, synthesis_key_map

KeyMap = dict[str, tuple[tuple | None, str]]
ENCODER_WINDOW = 8


def _params(variables: Mapping[str, Any]) -> Mapping[str, Any]:
  return variables['params'] if 'params' in variables else variables


def _n_stages(params: Mapping[str, Any]) -> int:
  return sum(1 for k in params if re.fullmatch(r'layers_\d+', k))


def _stage_geometry(resolution: int) -> tuple[int, int]:
  """(window, shift of block 1) of an encoder stage (models.transmrsr.stage_geometry, without jax)."""
  if resolution <= ENCODER_WINDOW:
    return resolution, 0
  return ENCODER_WINDOW, ENCODER_WINDOW // 2


def _conv_block(km: KeyMap, torch_prefix: str, flax_prefix: tuple, n_blocks: int) -> None:
  km[f'{torch_prefix}.conv_L1.weight'] = (flax_prefix + ('conv_L1', 'kernel'), 'conv')
  km[f'{torch_prefix}.conv_L1.bias'] = (flax_prefix + ('conv_L1', 'bias'), 'copy')
  for j in range(n_blocks):
    for c in ('conv1', 'conv2'):
      km[f'{torch_prefix}.blk_L1.{j}.{c}.weight'] = (flax_prefix + (f'blk_L1_{j}', c, 'kernel'), 'conv')
      km[f'{torch_prefix}.blk_L1.{j}.{c}.bias'] = (flax_prefix + (f'blk_L1_{j}', c, 'bias'), 'copy')


def _layer_norm(km: KeyMap, torch_prefix: str, flax_path: tuple) -> None:
  km[f'{torch_prefix}.weight'] = (flax_path + ('scale',), 'copy')
  km[f'{torch_prefix}.bias'] = (flax_path + ('bias',), 'copy')


def _linear(km: KeyMap, torch_prefix: str, flax_path: tuple, bias: bool = True) -> None:
  km[f'{torch_prefix}.weight'] = (flax_path + ('kernel',), 'linear')
  if bias:
    km[f'{torch_prefix}.bias'] = (flax_path + ('bias',), 'copy')


def transmrsr_key_map(params: Mapping[str, Any]) -> KeyMap:
  """{torch key: (flax path, transform)} in state_dict order; `params` is the variables dict or its params."""
  p = _params(params)
  n = _n_stages(p)
  size = 2 ** (n + 2)
  n_blocks = sum(1 for k in p['conv2d'] if k.startswith('blk_L1_'))
  P = ('params',)
  km: KeyMap = {}
  _conv_block(km, 'conv2d', P + ('conv2d',), n_blocks)
  _layer_norm(km, 'patch_embed.norm', P + ('patch_embed',))
  for i in range(n):
    _, shift = _stage_geometry(size // 2**i)
    for j in range(2):
      t = f'layers.{i}.residual_group.blocks.{j}'
      f = P + (f'layers_{i}', f'blocks_{j}')
      if j % 2 and shift:
        km[f'{t}.attn_mask'] = (None, 'buffer')
      _layer_norm(km, f'{t}.norm1', f + ('norm1',))
      km[f'{t}.attn.relative_position_bias_table'] = (f + ('attn', 'relative_position_bias_table'), 'copy')
      km[f'{t}.attn.relative_position_index'] = (None, 'buffer')
      _linear(km, f'{t}.attn.qkv', f + ('attn', 'qkv'))
      _linear(km, f'{t}.attn.proj', f + ('attn', 'proj'))
      _layer_norm(km, f'{t}.norm2', f + ('norm2',))
      _linear(km, f'{t}.mlp.fc1', f + ('mlp', 'fc1'))
      _linear(km, f'{t}.mlp.fc2', f + ('mlp', 'fc2'))
    km[f'layers.{i}.conv.weight'] = (P + (f'layers_{i}', 'conv', 'kernel'), 'conv')
    km[f'layers.{i}.conv.bias'] = (P + (f'layers_{i}', 'conv', 'bias'), 'copy')
    _linear(km, f'layers.{i}.downsample.reduction', P + (f'layers_{i}', 'downsample', 'reduction'), bias=False)
    _layer_norm(km, f'layers.{i}.downsample.norm', P + (f'layers_{i}', 'downsample', 'norm'))
  _layer_norm(km, 'norm', P + ('norm',))
  km['final_layers.weight'] = (P + ('final_layers', 'weight'), 'copy')
  km['final_layers.bias'] = (P + ('final_layers', 'bias'), 'copy')
  for head in ('scale', 'shift'):
    for i in range(n):
      for k in (0, 2):
        for leaf in ('weight', 'bias'):
          km[f'condition_{head}.{i}.{k}.{leaf}'] = (P + (f'condition_{head}_{i}', f'conv_{k}', leaf), 'copy')
  km.update(synthesis_key_map(p['generator'], 'generator.', P + ('generator',)))
  _conv_block(km, 'conv_deep', P + ('conv_deep',), n_blocks)
  km['conv_last.weight'] = (P + ('conv_last', 'kernel'), 'conv')
  km['conv_last.bias'] = (P + ('conv_last', 'bias'), 'copy')
  return km


def transmrsr_buffers(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """{torch buffer key: value} as the public model computes them (encoder and decoder)."""
  p = _params(params)
  n = _n_stages(p)
  size = 2 ** (n + 2)
  out: dict[str, np.ndarray] = {}
  for i in range(n):
    r = size // 2**i
    w, shift = _stage_geometry(r)
    for j in range(2):
      t = f'layers.{i}.residual_group.blocks.{j}'
      if j % 2 and shift:
        out[f'{t}.attn_mask'] = swin_attn_mask(r, r, w, shift)
      out[f'{t}.attn.relative_position_index'] = relative_position_index(w)
  out.update(synthesis_buffers(p['generator'], 'generator.'))
  return out
