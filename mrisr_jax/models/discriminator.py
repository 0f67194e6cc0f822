"""The CASRGAN discriminator (the reference's `GANDiscriminator`), in NHWC.

Architecture (identical to the PyTorch reference, padding 1 on every 3x3 conv):

  conv1:    conv3x3 C_in -> 64, LeakyReLU(0.01)
  down_k:   k = 0..6, [conv3x3 (stride s), BatchNorm2d, LeakyReLU(0.01)] with
            (out, s) = (64,2) (128,1) (128,2) (256,1) (256,2) (512,1) (512,2)
  head:     global average pool -> conv1x1 512 -> 1024 (`head_conv1`) -> LeakyReLU(0.01)
            -> conv1x1 1024 -> 1 (`head_conv2`) [-> Sigmoid in the reference]

`__call__(x, train)` returns LOGITS of shape (B,): the reference's output is
D(x) = sigmoid(logits). Losses should use the logit form (e.g.
`optax.sigmoid_binary_cross_entropy(logits, labels)`, and -log D(x) = softplus(-logits)),
which is numerically stable where the sigmoid saturates. `probs` (or
`jax.nn.sigmoid(logits)`) gives the probabilities.

Variables: `params` (5,214,273 numbers, the reference count) and `batch_stats` (the BatchNorm
running statistics). Training mode uses batch statistics and needs `mutable=['batch_stats']`:

  logits, updates = D.apply(variables, x, True, mutable=['batch_stats'])
  logits = D.apply(variables, x, False)          # eval mode, running statistics

`torch_key_map()` maps every key of the reference state_dict to its flax variable, and
`from_torch_state_dict` / `to_torch_state_dict` convert whole state_dicts with it.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mrisr_jax.models.layers import Conv2d
from mrisr_jax.models.norm import TorchBatchNorm

Dtype = Any

# (out_channels, stride) of the seven down blocks.
DOWN_BLOCKS: tuple[tuple[int, int], ...] = ((64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1), (512, 2))
STEM_FEATURES = 64
HEAD_FEATURES = 1024
NUM_PARAMS = 5_214_273  # reference count for a 1-channel input


class _DownBlock(nn.Module):
  features: int
  stride: int
  negative_slope: float = 0.01
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = Conv2d(self.features, 3, stride=self.stride, padding=1, dtype=self.dtype, name='conv')(x)
    x = TorchBatchNorm(use_running_average=not train, dtype=self.dtype, name='bn')(x)
    return nn.leaky_relu(x, self.negative_slope)


class CASRGANDiscriminator(nn.Module):
  """CASRGAN conv discriminator; `__call__(x, train) -> logits (B,)`, D(x) = sigmoid(logits).

  Attributes:
    in_channels: unused (the input channel count is inferred from `x`); kept for config symmetry.
    negative_slope: LeakyReLU slope, 0.01 as the reference (PyTorch's default).
    dtype: computation dtype (e.g. jnp.bfloat16); params and BN statistics stay float32 and the
      logits are returned in float32.
  """

  in_channels: int | None = None
  negative_slope: float = 0.01
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """x: (B, H, W, C) images; train: batch statistics (True) or running statistics (False)."""
    if x.ndim != 4:
      raise ValueError(f'CASRGANDiscriminator expects NHWC input, got shape {tuple(x.shape)}')
    x = Conv2d(STEM_FEATURES, 3, padding=1, dtype=self.dtype, name='conv1')(x)
    x = nn.leaky_relu(x, self.negative_slope)
    for i, (features, stride) in enumerate(DOWN_BLOCKS):
      x = _DownBlock(features, stride, self.negative_slope, self.dtype, name=f'down_{i}')(x, train)
    # AdaptiveAvgPool2d(1), averaged in float32.
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
    x = Conv2d(HEAD_FEATURES, 1, padding=0, dtype=self.dtype, name='head_conv1')(x)
    x = nn.leaky_relu(x, self.negative_slope)
    x = Conv2d(1, 1, padding=0, dtype=self.dtype, name='head_conv2')(x)
    return x.reshape(x.shape[0]).astype(jnp.float32)

  def probs(self, x: jax.Array, train: bool) -> jax.Array:
    """The reference's output D(x) = sigmoid(logits), shape (B,). Use via `method='probs'`."""
    return jax.nn.sigmoid(self(x, train))


# ---------------------------------------------------------------------------------------------
# PyTorch state_dict interop
# ---------------------------------------------------------------------------------------------


class TorchKey(NamedTuple):
  """Where a reference state_dict entry lives in the flax variables, and how it is transformed.

  path: (collection, module, ..., leaf), e.g. ('params', 'down_0', 'conv', 'kernel').
  transform:
    'conv'  - conv weight OIHW (torch) <-> HWIO (flax): to flax transpose (2, 3, 1, 0),
              to torch transpose (3, 2, 0, 1);
    'copy'  - same array both sides (biases, BN weight->scale, running_mean->mean,
              running_var->var);
    'count' - num_batches_tracked: torch int64 scalar <-> flax int32 scalar.
  """

  path: tuple[str, ...]
  transform: str


def torch_key_map() -> dict[str, TorchKey]:
  """Every key of the reference `GANDiscriminator` state_dict, in the reference order."""
  m: dict[str, TorchKey] = {}
  m['conv1.0.weight'] = TorchKey(('params', 'conv1', 'kernel'), 'conv')
  m['conv1.0.bias'] = TorchKey(('params', 'conv1', 'bias'), 'copy')
  for i in range(len(DOWN_BLOCKS)):
    t, f = f'down.{i}.layer', f'down_{i}'
    m[f'{t}.0.weight'] = TorchKey(('params', f, 'conv', 'kernel'), 'conv')
    m[f'{t}.0.bias'] = TorchKey(('params', f, 'conv', 'bias'), 'copy')
    m[f'{t}.1.weight'] = TorchKey(('params', f, 'bn', 'scale'), 'copy')
    m[f'{t}.1.bias'] = TorchKey(('params', f, 'bn', 'bias'), 'copy')
    m[f'{t}.1.running_mean'] = TorchKey(('batch_stats', f, 'bn', 'mean'), 'copy')
    m[f'{t}.1.running_var'] = TorchKey(('batch_stats', f, 'bn', 'var'), 'copy')
    m[f'{t}.1.num_batches_tracked'] = TorchKey(('batch_stats', f, 'bn', 'num_batches_tracked'), 'count')
  m['dense.1.weight'] = TorchKey(('params', 'head_conv1', 'kernel'), 'conv')
  m['dense.1.bias'] = TorchKey(('params', 'head_conv1', 'bias'), 'copy')
  m['dense.3.weight'] = TorchKey(('params', 'head_conv2', 'kernel'), 'conv')
  m['dense.3.bias'] = TorchKey(('params', 'head_conv2', 'bias'), 'copy')
  return m


def _to_numpy(v) -> np.ndarray:
  if hasattr(v, 'detach'):  # torch.Tensor, without importing torch
    v = v.detach().cpu().numpy()
  return np.asarray(v)


def _torch_to_flax(v: np.ndarray, transform: str) -> np.ndarray:
  if transform == 'conv':
    return np.ascontiguousarray(np.transpose(v, (2, 3, 1, 0))).astype(np.float32)
  if transform == 'count':
    return np.asarray(v, np.int32).reshape(())
  if transform == 'copy':
    return np.asarray(v, np.float32)
  raise ValueError(f'unknown transform {transform!r}')


def _flax_to_torch(v: np.ndarray, transform: str) -> np.ndarray:
  # np.array copies: the result is writable (torch.from_numpy warns on read-only arrays)
  if transform == 'conv':
    return np.array(np.transpose(v, (3, 2, 0, 1)), np.float32, order='C')
  if transform == 'count':
    return np.array(v, np.int64).reshape(())
  if transform == 'copy':
    return np.array(v, np.float32)
  raise ValueError(f'unknown transform {transform!r}')


def from_torch_state_dict(state_dict: Mapping[str, Any], template: Mapping[str, Any] | None = None) -> dict:
  """Reference state_dict (torch tensors or numpy) -> {'params': ..., 'batch_stats': ...}.

  Strict: missing or unexpected keys raise ValueError. If `template` (flax variables, e.g. from
  `init` or `jax.eval_shape`) is given, every shape is checked against it.
  """
  key_map = torch_key_map()
  missing = [k for k in key_map if k not in state_dict]
  unexpected = [k for k in state_dict if k not in key_map]
  if missing or unexpected:
    raise ValueError(
      f'discriminator state_dict mismatch: missing {missing[:5]}'
      f'{"..." if len(missing) > 5 else ""}, unexpected {unexpected[:5]}'
      f'{"..." if len(unexpected) > 5 else ""}'
    )
  out: dict = {}
  bad = []
  for k, (path, transform) in key_map.items():
    v = _torch_to_flax(_to_numpy(state_dict[k]), transform)
    if template is not None:
      ref = template
      for p in path:
        ref = ref[p]
      if tuple(ref.shape) != v.shape:
        bad.append(f'{k}: {v.shape} vs expected {tuple(ref.shape)}')
        continue
    node = out
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = jnp.asarray(v)
  if bad:
    raise ValueError(f'discriminator state_dict shape mismatch: {bad[:5]}')
  return out


def to_torch_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """flax variables -> reference state_dict as numpy arrays (float32; num_batches_tracked int64),
  in the reference key order. Wrap with `torch.from_numpy` for `load_state_dict(strict=True)`."""
  out = {}
  for k, (path, transform) in torch_key_map().items():
    v = variables
    for p in path:
      v = v[p]
    out[k] = _flax_to_torch(np.asarray(jax.device_get(v)), transform)
  return out
