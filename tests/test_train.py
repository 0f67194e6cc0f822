"""The training path: overfitting, sharding invariance, exact resume, non-finite losses."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mrisr_jax import steps, train
from mrisr_jax.models.casr import CASR
from mrisr_jax.schedules import make_schedule
from mrisr_jax.train_state import TrainState
from tests.helpers import REPO, error_line, run_main, tiny_config

pytestmark = pytest.mark.unit


def test_small_generator_overfits_one_batch():
  model = CASR(
    scale=2,
    growth_rate0=16,
    depth=2,
    growth_rate=8,
    rdb_depth=2,
    embed_dim=12,
    patch_size=2,
    num_heads=2,
    window_size=2,
    scan_unroll=2,
  )
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:32, 0:32] / 32.0
  hr = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (f * xx + g * yy)) for f, g in rng.uniform(0.5, 2, (4, 2))])
  hr = jnp.asarray(hr[..., None], jnp.float32)
  lr = hr.reshape(4, 16, 2, 16, 2, 1).mean(axis=(2, 4))
  params = model.init(jax.random.PRNGKey(0), lr)['params']
  tx = optax.adam(1e-3)
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    g_params=params,
    g_batch_stats={},
    d_params={},
    d_batch_stats={},
    g_opt_state=tx.init(params),
    d_opt_state=(),
    rng=jax.random.PRNGKey(1),
  )
  step = jax.jit(functools.partial(steps.generator_step, g_model=model, g_tx=tx))
  batch = {'lr': lr, 'hr': hr}
  state, first = step(state, batch)
  for _ in range(300):
    state, last = step(state, batch)
  assert float(last['loss_g']) * 10 <= float(first['loss_g']), (first['loss_g'], last['loss_g'])


def test_schedules_halve_by_epoch():
  step = make_schedule('step', 1e-4, steps_per_epoch=10, every_epochs=30)
  assert float(step(0)) == pytest.approx(1e-4)
  assert float(step(299)) == pytest.approx(1e-4)
  assert float(step(300)) == pytest.approx(5e-5)
  assert float(step(600)) == pytest.approx(2.5e-5)
  linear = make_schedule('linear', 1e-4, steps_per_epoch=10, every_epochs=30)
  assert float(linear(0)) == pytest.approx(1e-4)
  assert float(linear(159)) == pytest.approx(1e-4 * (1 - 0.5 * 15 / 30))  # epoch 15
  assert float(linear(10_000)) == pytest.approx(5e-5)


@pytest.mark.integration  # multi-device script in a subprocess
def test_one_device_and_eight_devices_give_the_same_losses():
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  # timeout: a hang guard, not a speed test (the script takes ~50 s on 2 busy cores)
  proc = subprocess.run(
    [sys.executable, str(REPO / 'tests/scripts/devices_parity.py'), str(REPO)],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['devices'] == 8
  # Losses and loss terms must agree to 1e-5: L1 steps over a free-running 3-step trajectory, GAN
  # steps from a shared state each step (see the script's docstring for why). Gradient norms are
  # diagnostics, not losses: their near-zero D entries differ by summation order.
  for mode in ('free', 'forced'):
    for one, many in zip(out[mode]['one'], out[mode]['all']):
      for key in (k for k in one if not k.startswith('grad_norm')):
        assert many[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), (mode, key, one[key], many[key])
  assert len(out['free']['one']) == len(out['forced']['one']) == 3


def _final_params(workdir, config):
  from mrisr_jax.checkpoint import Checkpointer

  ckpt = Checkpointer(workdir, async_save=False)
  step = ckpt.latest_step()
  state = ckpt.restore_unsharded(step)
  ckpt.close()
  return step, state


@pytest.mark.integration  # training loop
def test_resume_reproduces_an_uninterrupted_run(tmp_path):
  config = tiny_config()
  # GAN stage only (the L1 stages' exact resume after a signal is tests/test_preemption.py's)
  config.stages.pretrain.epochs = 0
  config.stages.finetune.epochs = 0
  config.stages.gan.epochs = 1  # 36 slices / batch 4 = 9 steps per epoch
  total = 9
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))

  config.stop_after_steps = 5  # stop inside the GAN stage
  train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  config.stop_after_steps = 0
  resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))

  assert resumed == straight
  s1, a = _final_params(tmp_path / 'straight', config)
  s2, b = _final_params(tmp_path / 'resumed', config)
  assert s1 == s2 == total
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.integration  # trainings in a subprocess
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / 'run')
  quick = [
    '--config',
    'configs/casrgan_x4.py:quick',
    '--workdir',
    workdir,
    '--config.model.depth=2',
    '--config.data.val_max_slices=1',
    '--config.log_every_steps=1',
    '--config.checkpoint_every_steps=2',
    '--config.eval_every_steps=100',
    '--config.image_every_steps=100',
  ]
  proc = run_main(*quick, '--config.stop_after_steps=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.endswith('stopped at step 2 of 432 (config.stop_after_steps=2); rerun the same command to resume')
  good = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  assert good == ['2']
  # another learning rate changes what the saved optimizer state means (tests/test_resume_guard.py)
  # (stop_after_steps keeps the run in pretrain, so the later stages are not compiled for nothing)
  bad_lr = ('--config.stages.pretrain.lr_g=1e30', '--allow_config_change', '--config.stop_after_steps=20')
  proc = run_main(*quick, *bad_lr, '--config.max_consecutive_skipped_steps=3')
  assert proc.returncode != 0
  assert 'non-finite' in error_line(proc)
  assert sorted(d for d in os.listdir(os.path.join(workdir, 'checkpoints')) if not d.startswith('.')) == ['2']
  step, state = _final_params(workdir, None)
  assert step == 2
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state['g_params']))
