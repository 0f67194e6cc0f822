"""StyleSwin discriminator: torch state_dict keys <-> flax variables of `mrisr_jax.models.styleswin_d`
(numpy only).

`styleswin_d_key_map(params)` -> {torch_key: (flax path incl. collection | None, transform)} in the
state_dict order of StyleSwin's Discriminator (= `interop.torch_styleswin_d.TorchStyleSwinDiscriminator`).
Every weight is kept in the torch layout by the flax model, so learned tensors are 'copy'; the Haar
filters and blur kernels are 'buffer' (path None; values from `styleswin_d_buffers`). With spectral
norm (detected by params['final_linear_2']): `weight_orig` <- params/.../weight, `weight_u` /
`weight_v` <- batch_stats/.../u, v ('copy'; the flax model keeps torch's u and v as they are).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

BLUR_KERNEL = (1, 3, 3, 1)


def _params(tree: Mapping[str, Any]) -> Mapping[str, Any]:
  """Accept the params dict or the whole variables dict."""
  return tree['params'] if 'params' in tree else tree


def _count(params: Mapping[str, Any], prefix: str) -> int:
  return sum(1 for k in params if re.fullmatch(rf'{prefix}_\d+', k))


def haar_buffers(inverse: bool = False) -> dict[str, np.ndarray]:
  """{ll, lh, hl, hh} as StyleSwin's get_haar_wavelet in float32 (inverse: lh, hl negated)."""
  lo = np.full((1, 2), 1 / (2**0.5), np.float32)
  hi = lo.copy()
  hi[0, 0] = -hi[0, 0]
  out = {'ll': lo.T * lo, 'lh': hi.T * lo, 'hl': lo.T * hi, 'hh': hi.T * hi}
  if inverse:
    out['lh'], out['hl'] = -out['lh'], -out['hl']
  return out


def blur_kernel() -> np.ndarray:
  """make_kernel([1, 3, 3, 1]): (4, 4) float32, sum 1."""
  k = np.asarray(BLUR_KERNEL, np.float32)
  k = k[None, :] * k[:, None]
  return k / k.sum()


def styleswin_d_key_map(params: Mapping[str, Any]) -> dict[str, tuple[tuple[str, ...] | None, str]]:
  params = _params(params)
  sn = 'final_linear_2' in params
  m: dict[str, tuple[tuple[str, ...] | None, str]] = {}

  def buffers(prefix, names):
    for n in names:
      m[f'{prefix}.{n}'] = (None, 'buffer')

  def conv_layer(prefix, module, first):
    """A ConvLayer's conv at Sequential index `first`, its FusedLeakyReLU at first + 1."""
    if sn:
      m[f'{prefix}.{first}.weight_orig'] = (('params',) + module + ('weight',), 'copy')
      m[f'{prefix}.{first}.weight_u'] = (('batch_stats',) + module + ('u',), 'copy')
      m[f'{prefix}.{first}.weight_v'] = (('batch_stats',) + module + ('v',), 'copy')
    else:
      m[f'{prefix}.{first}.weight'] = (('params',) + module + ('weight',), 'copy')
    m[f'{prefix}.{first + 1}.bias'] = (('params',) + module + ('bias',), 'copy')

  haar = ('ll', 'lh', 'hl', 'hh')
  buffers('dwt', haar)
  for i in range(_count(params, 'from_rgbs')):
    if i > 0:
      buffers(f'from_rgbs.{i}.iwt', haar)
      buffers(f'from_rgbs.{i}.downsample', ('kernel',))
      buffers(f'from_rgbs.{i}.dwt', haar)
    conv_layer(f'from_rgbs.{i}.conv', (f'from_rgbs_{i}', 'conv'), 0)
  for i in range(_count(params, 'convs')):
    conv_layer(f'convs.{i}.conv1', (f'convs_{i}', 'conv1'), 0)
    buffers(f'convs.{i}.conv2.0', ('kernel',))
    conv_layer(f'convs.{i}.conv2', (f'convs_{i}', 'conv2'), 1)
  conv_layer('final_conv', ('final_conv',), 0)
  if sn:
    for i in (0, 2):
      f = f'final_linear_{i}'
      m[f'final_linear.{i}.bias'] = (('params', f, 'bias'), 'copy')
      m[f'final_linear.{i}.weight_orig'] = (('params', f, 'weight'), 'copy')
      m[f'final_linear.{i}.weight_u'] = (('batch_stats', f, 'u'), 'copy')
      m[f'final_linear.{i}.weight_v'] = (('batch_stats', f, 'v'), 'copy')
      if i == 0:
        m['final_linear.1.bias'] = (('params', 'final_linear_1', 'bias'), 'copy')
  else:
    for i in (0, 1):
      for t in ('weight', 'bias'):
        m[f'final_linear.{i}.{t}'] = (('params', f'final_linear_{i}', t), 'copy')
  return m


def styleswin_d_buffers(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """{torch_key: value} for every 'buffer' key of `styleswin_d_key_map(params)` (float32, as torch's)."""
  fwd, inv, blur = haar_buffers(), haar_buffers(inverse=True), blur_kernel()
  out = {}
  for key, (path, _) in styleswin_d_key_map(params).items():
    if path is not None:
      continue
    module, name = key.rsplit('.', 1)
    if name == 'kernel':
      out[key] = blur.copy()
    else:
      out[key] = (inv if module.endswith('iwt') else fwd)[name].copy()
  return out
