"""mrisr_jax.predictor: a tiny generator through Predictor against its direct apply, tiled against
untiled, and the validation route (a mesh-sharded compiled predict) against the default jit."""

from __future__ import annotations

import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from mrisr_jax import sharding, steps
from mrisr_jax.predictor import Geometry, Predictor
from mrisr_jax.validation import Validator

pytestmark = pytest.mark.unit


class Tiny(nn.Module):
  """A 3x3 conv to scale^2 channels and a pixel shuffle: it sees one LR pixel each way."""

  scale: int = 2
  size_multiple: ClassVar[int] = 4
  upsampled_input: ClassVar[bool] = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    s = self.scale
    y = nn.Conv(s * s, (3, 3), padding='SAME')(x)
    b, h, w, _ = y.shape
    y = y.reshape(b, h, w, s, s).transpose(0, 1, 3, 2, 4).reshape(b, h * s, w * s, 1)
    return nn.sigmoid(y + x.repeat(s, 1).repeat(s, 2))


def _smooth(shape, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.random(shape)
  for axis in (-1, -2):
    x = (x + np.roll(x, 1, axis) + np.roll(x, -1, axis)) / 3
  return x.astype(np.float32)


@pytest.fixture(scope='module')
def tiny():
  model = Tiny()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  return model, jax.tree.map(np.asarray, variables)


def test_predictor_matches_the_direct_apply(tiny):
  model, variables = tiny
  lr = _smooth((3, 16, 12))  # multiples of the size multiple: no padding
  direct = np.asarray(model.apply(variables, lr[..., None]))[..., 0]
  sr = Predictor(model, variables)(lr)
  assert sr.shape == (3, 32, 24)
  np.testing.assert_allclose(sr, direct, atol=1e-6)
  # the models' NHWC layout (one channel) comes back as it went in
  np.testing.assert_allclose(Predictor(model, variables)(lr[..., None])[..., 0], sr, atol=1e-6)
  # a side that is not a multiple of 4 is edge-padded and cropped back
  odd = Predictor(model, variables)(lr[:, :13, :10])
  assert odd.shape == (3, 26, 20)


def test_tiled_equals_untiled(tiny):
  model, variables = tiny
  # sides that are multiples of 4: untiled pads nothing, so both see the same zero border
  lr = _smooth((2, 36, 28), seed=1)
  whole = Predictor(model, variables)(lr)
  seen = []
  done = []
  tiled = Predictor(model, variables, tile=12, overlap=2, batch=3)
  out = tiled(lr, progress=done.append)
  np.testing.assert_allclose(out, whole, atol=1e-5)  # overlap 2 covers the 1-pixel reach
  assert done[-1] == 2
  counted = Predictor(
    model,
    variables,
    tile=12,
    overlap=2,
    batch=3,
    apply=lambda v, x: seen.append(x.shape) or steps.predict(v, x, g_model=model),
  )
  np.testing.assert_allclose(counted(lr), whole, atol=1e-5)
  assert set(seen) == {(3, 12, 12, 1)}  # one tile shape, batches filled by repeats


def test_validation_route_matches_the_default_jit(tiny):
  """Validator hands Predictor a Geometry and training's sharded predict: same SR as infer's path."""
  model, variables = tiny
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1))
  lr = _smooth((3, 10, 14), seed=2)
  hr = np.clip(np.repeat(np.repeat(lr, 2, 1), 2, 2), 0, 1)
  validator = Validator([{'name': 'v', 'hr': hr, 'lr': lr}], 2, model.size_multiple, mesh, 2)
  predict = jax.jit(functools.partial(steps.predict, g_model=model))
  sr = validator.super_resolve(predict, variables, lr)
  np.testing.assert_allclose(sr, Predictor(model, variables)(lr), atol=1e-6)
  geometry = Geometry(2, model.size_multiple)
  again = Predictor(geometry, variables, apply=predict)(lr)
  np.testing.assert_allclose(again, sr, atol=1e-6)
