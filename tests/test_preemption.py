"""Preemption, damaged checkpoints and elastic resume, run as a cluster user meets them.

A SIGTERM at a random step (printed in failure messages) must make every process save the same
step and exit 0; running the same command again must continue exactly where an uninterrupted run
would be. A checkpoint written by 2 processes x 2 devices resumes on 1 x 1 and 1 x 4.
"""

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from mrisr_jax import run_curves
from tests.helpers import REPO

pytestmark = pytest.mark.integration  # multi-process jobs, signals, resumed trainings
CONFIG = 'tests/configs/tiny_casrgan.py'
TOTAL = 18
TIMEOUT = 900  # a guard against hangs: these runs take 1-2 minutes on 2 busy cores
LOSS_TAGS = ('train/loss_g', 'train/pixel')


class Job:
  """`processes` local processes of `python -m mrisr_jax.main`, each with `devices` CPU devices."""

  def __init__(self, workdir, processes=1, devices=1, extra=()):
    port = 20000 + random.randrange(20000)
    env = {
      **os.environ,
      'JAX_PLATFORMS': 'cpu',
      'TF_CPP_MIN_LOG_LEVEL': '3',
      'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
    }
    self.procs, self.lines = [], []
    for i in range(processes):
      args = [sys.executable, '-m', 'mrisr_jax.main', '--config', CONFIG, '--workdir', str(workdir), *extra]
      if processes > 1:
        args += [
          '--coordinator_address',
          f'127.0.0.1:{port}',
          '--num_processes',
          str(processes),
          '--process_id',
          str(i),
        ]
      proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      lines: list[str] = []
      threading.Thread(target=lambda p=proc, out=lines: out.extend(p.stderr), daemon=True).start()
      self.procs.append(proc)
      self.lines.append(lines)

  def wait_for(self, pattern: str, process: int = 0) -> None:
    deadline = time.time() + TIMEOUT
    while not any(re.search(pattern, line) for line in list(self.lines[process])):
      assert time.time() < deadline, f'no {pattern!r} in time'
      assert self.procs[process].poll() is None, ''.join(self.lines[process])[-3000:]
      time.sleep(0.05)

  def finish(self) -> list[int]:
    codes = [p.wait(timeout=TIMEOUT) for p in self.procs]
    time.sleep(0.2)  # let the reader threads take the last lines
    return codes

  def log(self, process: int = 0) -> str:
    return ''.join(self.lines[process])


def run_to_end(workdir, **kw) -> None:
  job = Job(workdir, **kw)
  codes = job.finish()
  assert codes == [0] * len(codes), job.log()[-4000:]


def preempt(workdir, at: int, signalled: int = 0, sig=signal.SIGTERM, **kw) -> int:
  """Starts a run, signals process `signalled` once step `at` is logged; returns the saved step."""
  job = Job(workdir, **kw)
  job.wait_for(rf'\] step {at}/{TOTAL} ')
  job.procs[signalled].send_signal(sig)
  codes = job.finish()
  assert codes == [0] * len(codes), (at, job.log(signalled)[-4000:])
  saved = [re.findall(r'preempted: saved step (\d+)', job.log(i)) for i in range(len(job.procs))]
  assert all(len(s) == 1 for s in saved), (at, saved, job.log()[-3000:])
  steps = {int(s[0]) for s in saved}
  assert len(steps) == 1, f'processes saved different steps: {saved}'
  step = steps.pop()
  assert at <= step < TOTAL, (at, step)
  assert sorted(os.listdir(workdir / 'checkpoints'))[-1] == str(step) or (workdir / 'checkpoints' / str(step)).is_dir()
  return step


def losses(workdir) -> dict:
  scalars = run_curves.read_scalars(workdir)
  return {tag: dict(zip(scalars[tag][0].tolist(), scalars[tag][1].tolist())) for tag in LOSS_TAGS if tag in scalars}


def assert_same_losses(a: dict, b: dict, steps, rel: float = 0.0) -> None:
  for tag in a:
    for step in steps:
      if step in a[tag]:
        assert b[tag][step] == pytest.approx(a[tag][step], rel=rel, abs=0), (tag, step, a[tag][step], b[tag][step])


def test_sigterm_single_process_saves_and_resumes_exactly(tmp_path):
  rng = random.Random()
  at = rng.randint(2, 12)
  run_to_end(tmp_path / 'straight')
  saved = preempt(tmp_path / 'cut', at)
  run_to_end(tmp_path / 'cut')
  straight, cut = losses(tmp_path / 'straight'), losses(tmp_path / 'cut')
  assert sorted(cut['train/loss_g']) == list(range(1, TOTAL + 1)), f'preempted at {at}, saved {saved}'
  assert_same_losses(straight, cut, range(1, TOTAL + 1))  # bit-exact, before and after the cut


def test_sigint_during_the_first_compile_saves_after_one_step(tmp_path):
  job = Job(tmp_path / 'run')
  job.wait_for(r'new run: generator')  # the compile of every stage's step follows
  job.procs[0].send_signal(signal.SIGINT)
  assert job.finish() == [0], job.log()[-3000:]
  assert 'preempted: saved step 1 ' in job.log()
  assert (tmp_path / 'run' / 'checkpoints' / '1').is_dir()


@pytest.fixture(scope='module')
def two_by_two(tmp_path_factory):
  """An uninterrupted 2-process x 2-device run, and one preempted in pre-training and resumed."""
  root = tmp_path_factory.mktemp('mh')
  rng = random.Random()
  at, signalled = rng.randint(2, 12), rng.randint(0, 1)
  job = Job(root / 'straight', processes=2, devices=2)
  assert job.finish() == [0, 0], job.log()[-4000:]
  assert '2 processes, 4 devices (2 local)' in job.log()
  assert "mesh {'data': 4, 'fsdp': 1} over 4 devices (2 processes)" in job.log()
  saved = preempt(root / 'cut', at, signalled=signalled, processes=2, devices=2)
  shutil.copytree(root / 'cut', root / 'at_cut')  # the checkpoint as the preempted job left it
  run_to_end(root / 'cut', processes=2, devices=2)
  return {'root': root, 'saved': saved, 'at': at, 'signalled': signalled}


def test_sigterm_to_one_of_two_processes_both_save_and_resume_exactly(two_by_two):
  root = two_by_two['root']
  straight, cut = losses(root / 'straight'), losses(root / 'cut')
  assert sorted(cut['train/loss_g']) == list(range(1, TOTAL + 1)), two_by_two
  assert_same_losses(straight, cut, range(1, TOTAL + 1))


@pytest.mark.parametrize('devices', [1, 4])
def test_a_two_process_checkpoint_resumes_on_one_process(two_by_two, devices, tmp_path):
  root, saved = two_by_two['root'], two_by_two['saved']
  workdir = tmp_path / 'elastic'
  shutil.copytree(root / 'at_cut', workdir)
  job = Job(workdir, devices=devices)
  assert job.finish() == [0], job.log()[-4000:]
  assert (
    f'resumed from {workdir / "checkpoints"} at step {saved} (stage pretrain), data position {saved * 4}' in job.log()
  )
  straight, elastic = losses(root / 'straight'), losses(workdir)
  # Same batches, same state: the losses differ only by float32 summation order over other
  # device counts, which Adam's steps carry forward slowly.
  assert_same_losses(straight, elastic, range(saved + 1, min(saved + 4, TOTAL + 1)), rel=1e-5)
  assert_same_losses(straight, elastic, range(saved + 1, TOTAL + 1), rel=1e-4)


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one_and_profiling(tmp_path, caplog):
  from mrisr_jax import train
  from tests.helpers import tiny_config

  config = tiny_config()
  config.stages.pretrain.epochs = 1
  config.stages.finetune.epochs = 0
  config.stages.gan.epochs = 0
  config.stop_after_steps = 4
  config.profile_steps = '1:3'  # the same run checks the profiler trace (steps 2 and 3)
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  traces = list((tmp_path / 'run' / 'profile').rglob('*.xplane.pb'))
  assert len(traces) == 1 and traces[0].stat().st_size > 0, traces
  config.profile_steps = ''
  ckpts = tmp_path / 'run' / 'checkpoints'
  assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ['2', '4']
  damaged = [
    p for p in (ckpts / '4' / 'state').rglob('*') if p.is_file() and p.stat().st_size > 0 and p.parent.name == 'd'
  ]
  assert damaged, list((ckpts / '4' / 'state').rglob('*'))
  for p in damaged:  # array files overwritten
    p.write_bytes(b'\x00garbage' * 64)
  config.stop_after_steps = 6
  with caplog.at_level('INFO'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  warnings = [r.getMessage() for r in caplog.records if 'does not restore' in r.getMessage()]
  assert len(warnings) == 1 and 'checkpoint step 4 at' in warnings[0], warnings
  assert '\n' not in warnings[0]
  moved = list((tmp_path / 'run' / 'checkpoints_damaged').iterdir())
  assert [p.name.split('-')[0] for p in moved] == ['4']  # moved aside, not deleted
  assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ['2', '4', '6']
  assert any('resumed from' in r.getMessage() and 'at step 2 ' in r.getMessage() for r in caplog.records)
