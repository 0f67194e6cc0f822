"""mrisr_jax.import_torch: a reference-layout state_dict becomes a checkpoint that training continues."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest

from mrisr_jax import export, import_torch, train
from mrisr_jax.checkpoint import Checkpointer
from tests.helpers import REPO

pytestmark = pytest.mark.unit


def config(arg='quick', seed=0):
  sys.path.insert(0, str(REPO))
  from configs.srcnn import get_config

  c = get_config(arg)
  c.seed = seed
  c.data.val_max_slices = 1
  c.data.val_max_volumes = 1
  return c


def restored(workdir, step):
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    return ckpt.restore_unsharded(step), ckpt.has_data_iter(step)
  finally:
    ckpt.close()


@pytest.mark.integration  # training loop
def test_imported_generator_is_what_training_continues_from(tmp_path):
  export.export(config(seed=7), tmp_path / 'g.safetensors')  # stands in for a PyTorch checkpoint
  out = import_torch.import_checkpoint(config(seed=0), tmp_path / 'g.safetensors', tmp_path / 'run')
  assert out['step'] == 0 and out['stage'] == 'pretrain'
  state, has_iter = restored(tmp_path / 'run', 0)
  assert not has_iter
  from mrisr_jax.interop import state_dict_io

  sd = state_dict_io.load_state_dict(tmp_path / 'g.safetensors')
  np.testing.assert_array_equal(
    state['g_params']['reconstruction']['kernel'], np.transpose(sd['reconstruction.weight'], (2, 3, 1, 0))
  )
  c = config(seed=0)
  c.stop_after_steps = 1
  train.train_and_evaluate(c, tmp_path / 'run')
  after, has_iter = restored(tmp_path / 'run', 1)
  assert has_iter
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), after['g_params'], state['g_params'])
  assert 0 < max(jax.tree.leaves(moved)) < 1e-2  # one Adam step from the imported weights


def test_stage_choice_and_errors_write_nothing(tmp_path):
  from mrisr_jax.interop import state_dict_io

  export.export(config(seed=1), tmp_path / 'g.pth')
  out = import_torch.import_checkpoint(config('quick,gan'), tmp_path / 'g.pth', tmp_path / 'gan', stage='gan')
  assert out['stage'] == 'gan' and out['step'] > 0
  with pytest.raises(import_torch.TorchImportError, match="--stage 'finetune' is not a stage"):
    import_torch.import_checkpoint(config(), tmp_path / 'g.pth', tmp_path / 'x', stage='finetune')
  with pytest.raises(import_torch.TorchImportError, match='already holds checkpoints'):
    import_torch.import_checkpoint(config('quick,gan'), tmp_path / 'g.pth', tmp_path / 'gan')
  sd = state_dict_io.load_state_dict(tmp_path / 'g.pth')  # another model's layout: renamed keys
  state_dict_io.save_state_dict(
    {k.replace('patch_extraction', 'head'): v for k, v in sd.items()}, tmp_path / 'other.pth'
  )
  with pytest.raises(import_torch.TorchImportError) as err:
    import_torch.import_checkpoint(config(), tmp_path / 'other.pth', tmp_path / 'y')
  assert str(tmp_path / 'other.pth') in str(err.value) and '\n' not in str(err.value)
  assert 'missing' in str(err.value) and 'unexpected' in str(err.value)
  assert not (tmp_path / 'y' / 'checkpoints').exists()
