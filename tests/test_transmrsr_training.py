"""TransMRSR's training parts outside the networks: the stage-1 step (R1, EMA, the image space), the
prior's data (R1 against finite differences: test_styleswin_d.py), the data path's padding, fixed-size tiling, the cubic-spline baseline, early stopping
and the SR state taking its decoder and centroids from a prior."""

from __future__ import annotations

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrisr_jax import prior_steps, prior_train, tiling, train
from mrisr_jax.data import degrade, pipeline

pytestmark = pytest.mark.unit


def test_prior_image_pads_to_a_square_then_reduces():
  x = np.random.default_rng(0).uniform(0.1, 1.0, (192, 168)).astype(np.float32)
  out = prior_train.prior_image(x, 64)
  square = np.zeros((192, 192), np.float32)
  square[:, 12:180] = x
  np.testing.assert_allclose(out, degrade.area_downsample(square, 3), atol=1e-6)
  small = prior_train.prior_image(np.ones((41, 30), np.float32), 64)
  rows, cols = np.nonzero(small)
  assert (rows.min(), rows.max(), cols.min(), cols.max()) == (12, 52, 17, 46)  # the extra pixel top/left


def test_pad_to_patch_centres_the_slice():
  image = np.ones((40, 30), np.float32)
  padded = pipeline.pad_to(image, 64, 64)
  assert padded.shape == (64, 64)
  assert padded[12:52, 17:47].all() and padded.sum() == 40 * 30
  pair = pipeline.MakeTrainingPair((64, 64), 4, False, ('thick:axis=1,profile=box',), True, False, True)
  out = pair.random_map({'image': image, 'volume': 'v', 'slice': 0}, np.random.default_rng(0))
  assert out['hr'].shape == (64, 64, 1) and out['lr'].shape == (64, 64, 1)
  np.testing.assert_array_equal(out['hr'][..., 0], padded)


def test_transposes_carry_the_thick_axis_for_upsampled_input_models():
  image = np.random.default_rng(5).uniform(0, 1, (32, 32)).astype(np.float32)
  steps = ('thick:axis=1,profile=box',)
  pair = pipeline.MakeTrainingPair((32, 32), 4, False, steps, True, True)
  seen = set()
  for seed in range(8):
    out = pair.random_map({'image': image, 'volume': 'v', 'slice': 0}, np.random.default_rng(seed))
    hr, lr = out['hr'][..., 0], out['lr'][..., 0]
    transposed = not np.array_equal(hr, image)
    seen.add(transposed)
    thick = degrade.make_lr(image, 4, steps)  # (32, 8): thick along columns
    want = thick.T if transposed else thick  # transposed: thick along rows, brought back along rows
    np.testing.assert_allclose(lr, np.clip(degrade.bicubic_resize(want, 32, 32), 0, 1), atol=1e-6)
    np.testing.assert_array_equal(hr, image.T if transposed else image)
  assert seen == {False, True}
  with pytest.raises(pipeline.DataError, match='transposes'):
    pipeline.MakeTrainingPair((32, 32), 4, False, steps, False, True)


def test_prior_space_round_trip():
  x = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (2, 4, 4, 1)), jnp.float32)
  for channels in (1, 3):
    y = prior_steps.to_prior_space(x, channels)
    assert y.shape[-1] == channels
    np.testing.assert_allclose(prior_steps.from_prior_space(y), x, atol=1e-6)


def _tiny_prior():
  import ml_collections

  return ml_collections.ConfigDict(
    dict(
      size=16,
      style_dim=16,
      n_mlp=2,
      channel_multiplier=1,
      channel_base=32,
      lr_mlp=0.01,
      channels=1,
      d_channel_multiplier=1,
      d_channel_base=32,
      lr=2e-3,
      r1_every=2,
      r1_gamma=10.0,
      d_clip=5.0,
      ema_decay=0.9,
    )
  )


def test_prior_step_regularises_lazily_and_keeps_the_ema():
  p = _tiny_prior()
  g, d, g_tx, d_tx, init = prior_train.state_fns(p)
  state = jax.jit(init)(jax.random.PRNGKey(0))
  hp = prior_steps.PriorHparams(style_dim=16, r1_gamma=10.0, r1_every=2, d_clip=5.0, ema_decay=0.9)
  step = jax.jit(functools.partial(prior_steps.prior_step, g_model=g, d_model=d, g_tx=g_tx, d_tx=d_tx, hp=hp))
  real = prior_steps.to_prior_space(jnp.asarray(np.random.default_rng(3).uniform(0, 1, (4, 16, 16, 1))), 1)
  ema0 = state.g_ema_params
  s1, m1 = step(state, {'hr': real})
  s2, m2 = step(s1, {'hr': real})
  assert float(m1['r1']) > 0 and float(m2['r1']) == 0  # steps 0, 2, ... regularise
  assert all(np.isfinite(float(v)) for v in {**m1, **m2}.values())
  want = jax.tree.map(lambda e, q: 0.9 * e + 0.1 * q, ema0, s1.g_params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), s1.g_ema_params, want)
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.d_params, s1.d_params))
  assert any(changed)
  # the same step and rng give the same latents: a resumed run repeats an uninterrupted one
  s1b, m1b = step(state, {'hr': real})
  assert float(m1b['loss_g']) == float(m1['loss_g'])
  imgs = prior_steps.sample(s2.g_ema_params, jax.random.normal(jax.random.PRNGKey(1), (2, 16)), g_model=g)
  assert imgs.shape == (2, 16, 16, 1) and float(imgs.min()) >= 0 and float(imgs.max()) <= 1


def test_fixed_size_models_are_tiled_in_the_hr_grid():
  seen = []

  def predict(x):  # a fixed-size "model": the identity on tiles no larger than 32
    seen.append(x.shape)
    assert x.shape[1] <= 32 and x.shape[2] <= 32
    return x

  lr = np.random.default_rng(4).uniform(0, 1, (2, 20, 70)).astype(np.float32)
  bic = np.clip(degrade.bicubic_resize(lr, 80, 70), 0, 1).astype(np.float32)
  out = tiling.super_resolve(predict, lr, 4, 1, True, factors=(4, 1), bicubic=bic, fixed_size=32)
  np.testing.assert_allclose(out, bic, atol=1e-6)
  assert {s[1:3] for s in seen} == {(32, 32)}
  small = tiling.super_resolve(predict, lr[:, :5, :20], 4, 1, True, factors=(4, 1), fixed_size=32)
  assert small.shape == (2, 20, 20) and seen[-1][1:3] == (20, 20)  # smaller slices go whole (the model pads)


def test_spline_resize_reproduces_smooth_signals_inside():
  y, x = np.mgrid[0:24, 0:16].astype(np.float64)
  lr = np.sin(y / 5.0) + 0.1 * x
  hr_y = (np.arange(96) - 1.5) / 4  # the LR sample grid inside the HR grid (centred blocks)
  out = degrade.spline_resize(lr[None], 96, 16)[0]
  want = np.sin(hr_y / 5.0)[:, None] + 0.1 * x[:1]
  np.testing.assert_allclose(out[16:80], want[16:80], atol=2e-4)
  assert out.dtype == np.float32


def test_early_stopping_counts_validations_without_enough_gain():
  run = types.SimpleNamespace(
    config=types.SimpleNamespace(early_stop_patience=3, early_stop_min_delta=0.05),
    early_best=-float('inf'),
    stale_evals=0,
    stopped_early=False,
  )
  history = [30.0, 30.2, 30.24, 30.3, 30.26, 30.28, 30.34]  # +0.2, +0.04, +0.1, worse, +0.08 (< .05 over 30.3)
  stops = [train._early_stop(run, p) for p in history]
  assert stops == [False, False, False, False, False, False, True]
  assert run.early_best == 30.3 and run.stale_evals == 3
  off = types.SimpleNamespace(config=types.SimpleNamespace(early_stop_patience=0, early_stop_min_delta=0.0))
  assert not train._early_stop(off, 1.0)


def test_sr_stage_without_a_prior_stops_in_one_line(tmp_path):
  import sys

  from mrisr_jax import transmrsr_run
  from mrisr_jax.errors import ConfigError
  from tests.helpers import REPO

  sys.path.insert(0, str(REPO))
  from configs.transmrsr import get_config

  c = get_config('stage=sr,quick')
  with pytest.raises(ConfigError, match='prior_workdir and prior_weights are both empty'):
    transmrsr_run.run(c, str(tmp_path / 'sr'))
  c.transmrsr.prior_workdir = str(tmp_path / 'no_prior')
  with pytest.raises(ConfigError, match='no_prior: no prior checkpoint to restore'):
    transmrsr_run.prior_synthesis(c)
  assert not (tmp_path / 'no_prior').exists()  # nothing created on the way
