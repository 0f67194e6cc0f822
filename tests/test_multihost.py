"""Two local processes (2 CPU devices each) train one sharded job through jax.distributed + gloo."""
import os
import subprocess

from tests.helpers import REPO


def test_two_processes_train_checkpoint_and_resume(tmp_path):
  workdir = tmp_path / 'mh'
  args = ['bash', str(REPO / 'launch/local_multihost.sh'), '2', '2', '--', '--config',
          'configs/casrgan_x4.py:quick', '--workdir', str(workdir), '--config.model.depth=2',
          '--config.data.val_max_slices=1', '--config.log_every_steps=2',
          '--config.eval_every_steps=4', '--config.image_every_steps=4', '--config.checkpoint_every_steps=2']
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'}
  first = subprocess.run(args + ['--config.stop_after_steps=4'], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-4000:]
  assert '2 processes, 4 devices (2 local)' in first.stderr
  assert "mesh {'data': 4} over 4 devices (2 processes)" in first.stderr
  assert (workdir / 'checkpoints' / '4').is_dir()
  # each process saved its own data-iterator state
  assert len(list((workdir / 'checkpoints' / '4' / 'data_iter').iterdir())) >= 2

  second = subprocess.run(args + ['--config.stop_after_steps=6'], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
  assert second.returncode == 0, second.stderr[-4000:]
  assert 'resumed from' in second.stderr
  assert (workdir / 'checkpoints' / '6').is_dir()
