"""Frozen VGG feature extractor for perceptual losses: torchvision `vgg16/vgg19().features[:k]`.

`VGGFeatures(arch, last_layer)` runs torchvision's `features` Sequential up to and including index
`last_layer` (torchvision indices: every conv, ReLU and max-pool counts). CASRGAN uses
`VGGFeatures('vgg19', 16)` = `vgg19().features[:17]`, ending at conv3_4 before its ReLU, on the
grey image repeated to 3 channels, with NO ImageNet mean/std normalisation
(`normalize_input=False`).

`VGGFeatures(arch, taps=(i, j, ...))` instead runs up to `max(taps)` (`last_layer` is then ignored)
and returns a tuple of the activations right after each tapped index, in the order of `taps`: a conv
index taps before its ReLU, a ReLU index after it. `vgg_layer_index(arch, 'relu2_2')` names them.
`VGGFeatures.depth` is the last index run; pass it as `last_layer` to the weight loaders.

torchvision indices (conv layers; each is followed by its ReLU at idx + 1):
  vgg16: 0 2 | pool 4 | 5 7 | pool 9 | 10 12 14 | pool 16 | 17 19 21 | pool 23 | 24 26 28 | pool 30
  vgg19: 0 2 | pool 4 | 5 7 | pool 9 | 10 12 14 16 | pool 18 | 19 21 23 25 | pool 27 |
         28 30 32 34 | pool 36

Weights:
  * `load_vgg_params(path, arch, last_layer)` reads ImageNet weights from torchvision's
    `vgg19-dcbb9e9d.pth` / `vgg16-397923af.pth` (download.pytorch.org/models/...; needs torch) or
    from a `.npz` made by `tools/convert_vgg.py` (numpy only). Nothing is ever downloaded here.
  * `init_vgg_params(rng, arch, last_layer)` gives RANDOM weights (PyTorch default init). A loss
    on random VGG features is only a smoke-test stand-in for quick configs, not a perceptual loss.

Both return the inner params dict {'features_{idx}': {'kernel': HWIO, 'bias': (out,)}}; apply with
`VGGFeatures(...).apply({'params': params}, x)`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mrisr_jax.errors import UserError
from mrisr_jax.models.layers import Conv2d

Dtype = Any

# torchvision `cfgs`: 'D' = vgg16, 'E' = vgg19 ('M' = MaxPool2d(2, 2)).
VGG_CFGS: dict[str, tuple] = {
  'vgg16': (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'),
  'vgg19': (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M'),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_HINT = (
  "download torchvision's ImageNet weights (e.g. "
  'https://download.pytorch.org/models/vgg19-dcbb9e9d.pth) and set '
  'config.loss.vgg_weights=PATH (a .pth, or a .npz made by tools/convert_vgg.py)'
)


class VGGWeightsError(UserError, ValueError):
  """The perceptual loss cannot get its weights (none configured, unreadable, or the wrong layout)."""


def vgg_layers(arch: str) -> list[tuple]:
  """torchvision `features` as a list indexed like it: ('conv', in, out) | ('relu',) | ('pool',)."""
  if arch not in VGG_CFGS:
    raise ValueError(f'unknown VGG arch {arch!r}; expected one of {sorted(VGG_CFGS)}')
  layers: list[tuple] = []
  in_ch = 3
  for v in VGG_CFGS[arch]:
    if v == 'M':
      layers.append(('pool',))
    else:
      layers.append(('conv', in_ch, v))
      layers.append(('relu',))
      in_ch = v
  return layers


def vgg_layer_names(arch: str) -> dict[str, int]:
  """'conv{block}_{n}' / 'relu{block}_{n}' / 'pool{block}' -> torchvision `features` index."""
  names, block, conv = {}, 1, 0
  for i, layer in enumerate(vgg_layers(arch)):
    if layer[0] == 'conv':
      conv += 1
      names[f'conv{block}_{conv}'] = i
    elif layer[0] == 'relu':
      names[f'relu{block}_{conv}'] = i
    else:
      names[f'pool{block}'] = i
      block, conv = block + 1, 0
  return names


def vgg_layer_index(arch: str, name: str) -> int:
  """torchvision `features` index of a named layer: vgg19 'conv3_4' -> 16, vgg16 'relu2_2' -> 8."""
  from mrisr_jax import registry  # pylint: disable=import-outside-toplevel

  return registry.lookup(vgg_layer_names(arch), f'{arch} layer', name)


def _check_last_layer(arch: str, last_layer: int) -> list[tuple]:
  layers = vgg_layers(arch)
  if not 0 <= last_layer < len(layers):
    raise ValueError(f'last_layer={last_layer} is out of range for {arch} features (0..{len(layers) - 1})')
  return layers[: last_layer + 1]


def vgg_torch_shapes(arch: str, last_layer: int) -> dict[str, tuple[int, ...]]:
  """The torchvision state_dict keys (and shapes) that `features[:last_layer + 1]` needs."""
  shapes = {}
  for i, layer in enumerate(_check_last_layer(arch, last_layer)):
    if layer[0] == 'conv':
      _, cin, cout = layer
      shapes[f'features.{i}.weight'] = (cout, cin, 3, 3)
      shapes[f'features.{i}.bias'] = (cout,)
  return shapes


class VGGFeatures(nn.Module):
  """torchvision VGG `features[:last_layer + 1]` in NHWC. Input (B, H, W, 3).

  Returns the last activation, or with `taps` a tuple with one activation per tap.

  Attributes:
    arch: 'vgg19' or 'vgg16'.
    last_layer: torchvision `features` index of the last layer run (inclusive); ignored with taps.
    taps: torchvision `features` indices whose outputs are returned, in this order (any order,
      repeats allowed); the network runs up to max(taps). Empty: return the last_layer output.
    normalize_input: subtract the ImageNet mean and divide by its std (input in [0, 1]) before the
      first conv. CASRGAN does not.
    dtype: computation dtype (params stay float32).
  """

  arch: str = 'vgg19'
  last_layer: int = 16
  taps: tuple[int, ...] = ()
  normalize_input: bool = False
  dtype: Dtype | None = None

  @property
  def depth(self) -> int:
    """The last `features` index run; the `last_layer` the weight loaders need."""
    return max(self.taps) if self.taps else self.last_layer

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array | tuple[jax.Array, ...]:
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(
        f'VGGFeatures expects NHWC input with 3 channels (repeat a grey image to '
        f'3 channels first), got shape {tuple(x.shape)}'
      )
    if self.normalize_input:
      mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
      std = jnp.asarray(IMAGENET_STD, jnp.float32)
      x = (x.astype(jnp.float32) - mean) / std
    n_layers = len(vgg_layers(self.arch))
    if any(not 0 <= t < n_layers for t in self.taps):
      raise ValueError(f'taps={self.taps} is out of range for {self.arch} features (0..{n_layers - 1})')
    outputs = {}
    for i, layer in enumerate(_check_last_layer(self.arch, self.depth)):
      if layer[0] == 'conv':
        x = Conv2d(layer[2], 3, padding=1, dtype=self.dtype, name=f'features_{i}')(x)
      elif layer[0] == 'relu':
        x = nn.relu(x)
      else:  # MaxPool2d(2, 2): floor mode, as torch
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
      if i in self.taps:
        outputs[i] = x
    if self.taps:
      return tuple(outputs[t] for t in self.taps)
    return x


def init_vgg_params(rng: jax.Array, arch: str = 'vgg19', last_layer: int = 16) -> dict:
  """RANDOM VGG weights with torchvision's VGG init, for quick configs and tests only.

  torchvision initialises VGG convs with kaiming_normal_(mode='fan_out', nonlinearity='relu') and
  zero biases, which keeps activations at unit scale through the ReLUs; with PyTorch's default
  uniform init the features (and so the perceptual loss) shrink by orders of magnitude per layer.
  Random features are still no ImageNet perceptual metric: use `load_vgg_params` for real training.
  """
  layers = _check_last_layer(arch, last_layer)
  params = {}
  for i, layer in enumerate(layers):
    if layer[0] == 'conv':
      rng, key = jax.random.split(rng)
      in_ch, out_ch = layer[1], layer[2]
      std = (2.0 / (out_ch * 9)) ** 0.5
      params[f'features_{i}'] = {
        'kernel': std * jax.random.normal(key, (3, 3, in_ch, out_ch), jnp.float32),
        'bias': jnp.zeros((out_ch,), jnp.float32),
      }
  return params


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
  if path.endswith('.npz'):
    try:
      with np.load(path, allow_pickle=False) as data:
        return {k: np.asarray(data[k]) for k in data.files}
    except Exception as e:  # not a zip, pickled objects, truncated
      raise ValueError(
        f'could not read {path} as a .npz of arrays: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
      ) from e
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      f'reading {path} needs PyTorch: install the torch extra (pip install "mrisr_jax[torch]") '
      f'or convert it to .npz with tools/convert_vgg.py on a machine with torch'
    ) from e
  try:
    sd = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pickle errors, truncated files, non-tensor contents
    raise ValueError(
      f'could not read {path} as a PyTorch state_dict: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
    ) from e
  if isinstance(sd, Mapping) and 'state_dict' in sd and isinstance(sd['state_dict'], Mapping):
    sd = sd['state_dict']
  if not isinstance(sd, Mapping):
    raise ValueError(f'{path} does not hold a state_dict (got {type(sd).__name__})')
  out = {}
  for k, v in sd.items():
    if hasattr(v, 'detach'):
      out[str(k)] = v.detach().cpu().float().numpy() if v.is_floating_point() else v.numpy()
  return out


def _normalise_keys(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Accept `features.{i}.*` (full model, `classifier.*` ignored), `module.features.*`, or a bare
  `features` Sequential's `{i}.*`."""
  out = {}
  for k, v in sd.items():
    if k.startswith('module.'):
      k = k[len('module.') :]
    if k.startswith('features.'):
      out[k] = v
    elif k.split('.', 1)[0].isdigit():
      out['features.' + k] = v
  return out


def load_vgg_params(path: str | os.PathLike, arch: str = 'vgg19', last_layer: int = 16) -> dict:
  """Load torchvision VGG weights for `VGGFeatures(arch, last_layer)`.

  path: a torchvision `.pth` state_dict (the full model's, `classifier.*` ignored; read with
  `torch.load(weights_only=True)`), or a `.npz` with the same `features.{i}.weight/bias` keys (see
  tools/convert_vgg.py). Returns {'features_{i}': {'kernel': (3, 3, in, out), 'bias': (out,)}}.

  Raises FileNotFoundError if the file is missing, ValueError on missing keys or wrong shapes
  (e.g. a vgg16 file read as vgg19, or a batch-norm `vgg19_bn` file).
  """
  path = os.fspath(path)
  expected = vgg_torch_shapes(arch, last_layer)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'VGG weights not found at {path!r}: {WEIGHTS_HINT}')
  sd = _normalise_keys(_read_state_dict(path))
  if any(k.endswith('running_mean') for k in sd):
    raise ValueError(f'{path} holds a batch-norm VGG (vgg*_bn); only plain torchvision {arch} weights are supported')
  missing = [k for k in expected if k not in sd]
  if missing:
    raise ValueError(
      f'{path} lacks {len(missing)} key(s) needed by {arch} features[:'
      f'{last_layer + 1}]: {missing[:4]}{"..." if len(missing) > 4 else ""}'
    )
  bad = [f'{k} {tuple(sd[k].shape)} != {shape}' for k, shape in expected.items() if tuple(sd[k].shape) != shape]
  if bad:
    raise ValueError(f'{path} does not match {arch} (wrong shapes): {bad[:4]}{"..." if len(bad) > 4 else ""}')
  params = {}
  for k in expected:
    if k.endswith('.weight'):
      i = int(k.split('.')[1])
      w = np.asarray(sd[k], np.float32)
      params[f'features_{i}'] = {
        'kernel': jnp.asarray(np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))),
        'bias': jnp.asarray(np.asarray(sd[f'features.{i}.bias'], np.float32)),
      }
  return params
