"""Training runs at the edges: nothing to train, data missing, no room on the disk, and what the log says."""

import collections
import errno
import os
import shutil

import pytest

from mrisr_jax import checkpoint, recipe, train
from mrisr_jax.checkpoint import Checkpointer, DiskFullError
from mrisr_jax.data.errors import DataError
from mrisr_jax.errors import ConfigError
from tests.helpers import REPO, error_line, run_main, tiny_config


@pytest.mark.unit
def test_a_run_with_no_training_step_is_refused_and_writes_no_report(tmp_path):
  config = tiny_config()
  for stage in ('pretrain', 'finetune', 'gan'):
    config.stages[stage].epochs = 0
  with pytest.raises(ConfigError, match='every stage has 0 epochs'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run' / 'report').exists() and not (tmp_path / 'run' / 'checkpoints').exists()


@pytest.mark.unit
def test_a_missing_validation_folder_stops_before_any_model_is_initialised(tmp_path, monkeypatch):
  shutil.copytree(REPO / 'mrisr_jax' / 'sample_data' / 'train', tmp_path / 'data' / 'train')
  config = tiny_config()
  config.data.root = str(tmp_path / 'data')

  def built(*args, **kwargs):
    raise AssertionError('a model was initialised before the data was checked')

  monkeypatch.setattr(recipe, 'init_state_fn', built)
  monkeypatch.setattr(recipe, 'load_perceptual', built)
  with pytest.raises(DataError, match='val: the split directory does not exist'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


@pytest.mark.unit
def test_a_write_that_runs_out_of_space_is_one_line(tmp_path, monkeypatch):
  ckpt = Checkpointer(tmp_path, async_save=False)

  def full(*args, **kwargs):
    try:
      raise OSError(errno.ENOSPC, 'No space left on device')
    except OSError as e:
      raise RuntimeError('tensorstore write failed') from e  # as orbax wraps it

  monkeypatch.setattr(ckpt.manager, 'save', full)
  with pytest.raises(DiskFullError, match='no space left to save step 3 .*no checkpoint was saved yet'):
    ckpt.save(3, {'w': __import__('numpy').zeros(4)}, {})
  ckpt.manager.close()


@pytest.mark.integration  # training loop
def test_disk_full_stops_in_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  config = tiny_config()
  config.stages.finetune.epochs = config.stages.gan.epochs = 0
  config.stages.pretrain.epochs = 1
  config.eval_every_steps = config.image_every_steps = 100
  workdir = str(tmp_path / 'run')
  config.stop_after_steps = 2
  train.train_and_evaluate(config, workdir)
  config.stop_after_steps = 0
  usage = collections.namedtuple('usage', 'total used free')
  monkeypatch.setattr(checkpoint.shutil, 'disk_usage', lambda path: usage(1 << 30, (1 << 30) - (1 << 20), 1 << 20))
  with pytest.raises(DiskFullError) as e:
    train.train_and_evaluate(config, workdir)
  line = str(e.value)
  assert '\n' not in line and f'{workdir}/checkpoints: no space left to save step 4 (1 MiB free' in line
  assert 'the last good checkpoint (step 2) is kept' in line
  monkeypatch.undo()
  ckpt = Checkpointer(workdir, async_save=False)
  assert list(ckpt.manager.all_steps()) == [2]
  assert ckpt.restore_unsharded(2)['g_params']
  ckpt.close()
  assert not os.path.exists(os.path.join(workdir, 'run.lock'))  # the lock went with the failed run


@pytest.mark.unit
def test_a_file_as_workdir_is_one_line_from_the_command(tmp_path):
  file = tmp_path / 'notes.txt'
  file.write_text('keep')
  proc = run_main('--config', 'configs/casrgan.py:quick', '--workdir', str(file))
  assert proc.returncode == 2
  assert error_line(proc) == f'mrisr_jax: error: {file}: exists and is not a directory; pass a directory as --workdir'
  assert file.read_text() == 'keep'
