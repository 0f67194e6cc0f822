"""One run per workdir, and workdirs that cannot be used: each stops with one line."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from etils import epath

from mrisr_jax import workdir_lock
from mrisr_jax.workdir_lock import WorkdirError, WorkdirLock, WorkdirLockedError
from tests.helpers import REPO, error_line, run_main


def _write_lock(workdir, **holder):
  path = workdir / workdir_lock.LOCK_NAME
  path.write_text(json.dumps({'pid': 1, 'host': socket.gethostname(), 'started': 'then', **holder}))
  return path


@pytest.mark.unit
def test_a_held_workdir_refuses_a_second_run_naming_the_holder(tmp_path):
  with WorkdirLock(epath.Path(tmp_path)):
    lock_file = tmp_path / workdir_lock.LOCK_NAME
    assert json.loads(lock_file.read_text())['pid'] == os.getpid()
    with pytest.raises(WorkdirLockedError) as e:
      WorkdirLock(epath.Path(tmp_path)).acquire()
    assert f'pid {os.getpid()} on {socket.gethostname()}' in str(e.value) and '\n' not in str(e.value)
  assert not lock_file.exists()  # released at the end of the run


@pytest.mark.unit
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  _write_lock(tmp_path, pid=dead.pid)
  with caplog.at_level('WARNING'), WorkdirLock(epath.Path(tmp_path)):
    assert json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())['pid'] == os.getpid()
  assert f'process {dead.pid} on {socket.gethostname()} is not running' in caplog.text


@pytest.mark.unit
def test_a_lock_from_another_host_is_kept_until_its_heartbeat_stops(tmp_path):
  path = _write_lock(tmp_path, pid=123, host='node-17')
  with pytest.raises(WorkdirLockedError, match='pid 123 on node-17'):
    WorkdirLock(epath.Path(tmp_path)).acquire()
  old = time.time() - workdir_lock.STALE_AFTER_S - 60
  os.utime(path, (old, old))
  with WorkdirLock(epath.Path(tmp_path)):
    assert json.loads(path.read_text())['host'] == socket.gethostname()


@pytest.mark.unit
def test_a_requeued_slurm_job_takes_over_its_earlier_runs_lock(tmp_path, monkeypatch):
  monkeypatch.setenv('SLURM_JOB_ID', '4242')
  monkeypatch.setenv('SLURM_RESTART_COUNT', '0')
  _write_lock(tmp_path, pid=77, host='node-3', slurm_job_id='4242', slurm_restart_count='0')
  with pytest.raises(WorkdirLockedError, match='pid 77 on node-3'):  # the same run: still running
    WorkdirLock(epath.Path(tmp_path)).acquire()
  monkeypatch.setenv('SLURM_RESTART_COUNT', '1')  # the job was requeued: its earlier run is gone
  with WorkdirLock(epath.Path(tmp_path)):
    assert json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())['slurm_restart_count'] == '1'


@pytest.mark.unit
def test_a_file_or_unwritable_workdir_is_one_line(tmp_path, monkeypatch):
  file = tmp_path / 'results.txt'
  file.write_text('keep me')
  with pytest.raises(WorkdirError, match='results.txt: exists and is not a directory'):
    workdir_lock.prepare(epath.Path(file))
  assert file.read_text() == 'keep me'

  def denied(*args, **kwargs):  # tests run as root here, where chmod cannot deny a write
    raise PermissionError(13, 'Permission denied')

  monkeypatch.setattr(workdir_lock.os, 'open', denied)
  with pytest.raises(WorkdirError, match='cannot write the workdir \\(Permission denied\\)'):
    WorkdirLock(epath.Path(tmp_path)).acquire()


@pytest.mark.e2e  # two processes
def test_a_second_run_on_a_workdir_in_use_exits_naming_the_first(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  holder = subprocess.Popen(
    [
      sys.executable,
      '-c',
      'import sys, time; from etils import epath; from mrisr_jax.workdir_lock import WorkdirLock\n'
      'with WorkdirLock(epath.Path(sys.argv[1])):\n  print("held", flush=True); time.sleep(120)',
      str(workdir),
    ],
    cwd=REPO,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == 'held'
    proc = run_main('--config', 'configs/casrgan.py:quick', '--workdir', str(workdir))
    assert proc.returncode == 2
    line = error_line(proc)
    assert f'in use by another run (pid {holder.pid} on {socket.gethostname()}' in line
    assert not (workdir / 'checkpoints').exists()
  finally:
    holder.kill()
    holder.wait()
