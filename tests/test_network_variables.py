"""mrisr_jax.network_variables.resolve_step: which checkpoint of a training workdir `infer`,
`evaluate` and `export` load (best by validation PSNR by default, `latest`, or a step number)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from mrisr_jax import network_variables
from mrisr_jax.checkpoint import BEST_METRIC, Checkpointer
from tests.helpers import REPO

pytestmark = pytest.mark.unit

# step -> validation PSNR saved with it (None: a checkpoint without validation, as at a stage end)
PSNR = {10: 30.0, 20: 33.25, 30: 31.0, 40: None}


def srcnn_config():
  sys.path.insert(0, str(REPO))
  from configs.srcnn import get_config

  return get_config('quick')


def _generator(step: int, config=None) -> dict:
  """A TrainState-like dict whose generator weights are all `step`, so a restore names its step."""
  like = network_variables.like_variables(config or srcnn_config())['params']
  params = {k: {n: np.full(v.shape, float(step), np.float32) for n, v in layer.items()} for k, layer in like.items()}
  return {'g_params': params}


def _workdir(path, psnr=PSNR, config=None):
  ckpt = Checkpointer(path, keep=10, async_save=False)
  for step, value in psnr.items():
    ckpt.save(
      step, _generator(step, config), {'stage': 'pretrain'}, {BEST_METRIC: value} if value is not None else None
    )
  ckpt.close()
  return path


def test_the_best_step_is_kept_on_disk_when_the_latest_has_no_validation(tmp_path):
  """Before issue 14 best_step() was the latest step and the metrics were never written, so a
  reopened (resumed, or inferring) run could not tell which step was best."""
  _workdir(tmp_path / 'run')
  ckpt = Checkpointer(tmp_path / 'run', async_save=False)  # reopened: only what is on disk
  try:
    assert ckpt.latest_step() == 40 and ckpt.best_step() == 20
    ckpt.save(50, _generator(50), {'stage': 'pretrain'}, None)  # a resumed run saves more, unvalidated
    assert ckpt.best_step() == 20
  finally:
    ckpt.close()


def test_best_latest_and_a_number_pick_their_step_and_say_why(tmp_path):
  run = _workdir(tmp_path / 'run')
  assert network_variables.resolve_step(run) == (20, 'best validation PSNR 33.25 dB; latest is 40')
  assert network_variables.resolve_step(run, 'best')[0] == 20
  step, why = network_variables.resolve_step(run, 'latest')
  assert step == 40 and why == 'the latest, as asked; best validation PSNR 33.25 dB is step 20'
  for asked in (30, '30', np.int64(30)):
    step, why = network_variables.resolve_step(run, asked)
    assert step == 30 and why == 'as asked; best validation PSNR 33.25 dB is step 20; latest is 40'
  line = network_variables.step_line(run, 20, 'best validation PSNR 33.25 dB; latest is 40')
  assert line == f'using step 20 of {run} (best validation PSNR 33.25 dB; latest is 40)'
  # the variables are those of the chosen step, and the choice is logged
  config, lines = srcnn_config(), []
  variables, chosen = network_variables.load_generator(config, run, log=lines.append)
  assert chosen == {'step': 20, 'reason': 'best validation PSNR 33.25 dB; latest is 40'}
  assert lines == [f'using step 20 of {run} (best validation PSNR 33.25 dB; latest is 40)']
  assert {float(np.unique(v['kernel'])[0]) for v in variables['params'].values()} == {20.0}
  latest = network_variables.load_generator_variables(config, run, step='latest', log=lines.append)
  assert {float(np.unique(v['kernel'])[0]) for v in latest['params'].values()} == {40.0}
  assert lines[-1].startswith('using step 40 of')


def test_without_any_validation_the_latest_is_used_and_so_said(tmp_path):
  run = _workdir(tmp_path / 'run', {2: None, 4: None})
  step, why = network_variables.resolve_step(run)
  assert step == 4 and 'no checkpoint has a validation PSNR saved with it' in why
  run = _workdir(tmp_path / 'single', {6: 28.5})
  assert network_variables.resolve_step(run) == (6, 'the latest, also the best validation PSNR 28.50 dB')


def test_bad_steps_are_one_line_listing_the_saved_steps(tmp_path):
  run = _workdir(tmp_path / 'run')
  for bad in ('foo', '-1', '1.5', '', True):
    with pytest.raises(network_variables.WeightsError) as e:
      network_variables.resolve_step(run, bad)
    message = str(e.value)
    assert 'use best, latest or a saved step number' in message and '(saved: 10, 20, 30, 40)' in message, bad
    assert '\n' not in message and message.startswith(str(run))
  with pytest.raises(network_variables.WeightsError, match=r'no checkpoint at step 25 \(saved: 10, 20, 30, 40\)'):
    network_variables.resolve_step(run, 25)
  with pytest.raises(network_variables.WeightsError, match='no checkpoints directory'):
    network_variables.resolve_step(tmp_path)
  (tmp_path / 'w.safetensors').write_bytes(b'')
  for step in ('best', 3):  # a file has no steps, whatever the value
    with pytest.raises(network_variables.WeightsError, match='--step applies to a training workdir, not a state_dict'):
      network_variables.load_generator_variables(srcnn_config(), tmp_path / 'w.safetensors', step=step)
