"""Normalisation layers that reproduce PyTorch's numerics exactly.

`TorchBatchNorm` is `torch.nn.BatchNorm2d` (eps 1e-5, momentum 0.1, affine, running statistics)
on NHWC input. It differs from `flax.linen.BatchNorm` in three ways that matter for parity and
for checkpoint interop:

* momentum is PyTorch's convention: running = (1 - 0.1) * running + 0.1 * batch
  (flax's `momentum=0.9` is the same update written the other way round);
* the running variance is the UNBIASED batch variance (times n / (n - 1)), as PyTorch tracks it,
  while the normalisation in training uses the biased batch variance;
* it keeps `num_batches_tracked`, so a PyTorch state_dict round-trips key for key.

Variables:
  params:      `scale` (C,) init 1  (torch `weight`), `bias` (C,) init 0 (torch `bias`)
  batch_stats: `mean` (C,) init 0   (torch `running_mean`),
               `var`  (C,) init 1   (torch `running_var`, unbiased),
               `num_batches_tracked` () int32 (torch int64; incremented once per training call).

Statistics are `jnp.mean` over axes (0, 1, 2). Under `jax.jit` with the batch sharded over a mesh,
that mean is the mean over the whole global batch (XLA inserts the cross-device reduction), which
is what a single-device PyTorch run computes. Running statistics are not updated while the module
is being initialised (`Module.init`), so a fresh model has `num_batches_tracked == 0` as in PyTorch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any


class TorchBatchNorm(nn.Module):
  """`torch.nn.BatchNorm2d` on NHWC input (channels last).

  Attributes:
    use_running_average: True = eval mode (use running statistics), False = training mode (batch
      statistics, running statistics updated; apply with `mutable=['batch_stats']`). May be left
      None and given per call, like `flax.linen.BatchNorm`.
    momentum: PyTorch momentum (weight of the new batch statistic), 0.1.
    epsilon: 1e-5, PyTorch's default.
    dtype: computation dtype of the output (statistics are always computed in float32).
  """

  use_running_average: bool | None = None
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    use_ra = nn.merge_param('use_running_average', self.use_running_average, use_running_average)
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    nbt = self.variable('batch_stats', 'num_batches_tracked', lambda: jnp.zeros((), jnp.int32))

    reduce_axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.float32)
    if use_ra:
      mean, var = ra_mean.value, ra_var.value
    else:
      n = 1
      for a in reduce_axes:
        n *= x.shape[a]
      if n < 2:
        raise ValueError(
          f'TorchBatchNorm: expected more than 1 value per channel when training, got input '
          f'shape {tuple(x.shape)} (as torch.nn.BatchNorm2d)'
        )
      mean = jnp.mean(xf, axis=reduce_axes)
      var = jnp.mean(jnp.square(xf - mean), axis=reduce_axes)  # biased, used to normalise
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
        ra_var.value = (1.0 - m) * ra_var.value + m * var * (n / (n - 1))
        nbt.value = nbt.value + 1

    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    y = (xf - mean) * mul + bias
    return y.astype(self.dtype or x.dtype)
