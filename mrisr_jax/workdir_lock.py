"""One run per workdir: WORKDIR/run.lock names the run that holds it (pid, host, start time).

Process 0 takes the lock for the whole run (a multi-host run holds one lock, not one per process)
and removes it when the run ends, however it ends short of SIGKILL. A lock left behind is taken over
with a warning when its holder is known to be gone: a dead pid on this host, an earlier run of the
same SLURM job (a requeue: another SLURM_RESTART_COUNT), or a heartbeat older than `STALE_AFTER_S` (the holder refreshes the file every
`HEARTBEAT_S` seconds, so a run killed on another host frees its workdir after a few minutes).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from absl import logging
from etils import epath

from mrisr_jax.errors import UserError

LOCK_NAME = 'run.lock'
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class WorkdirLockedError(UserError):
  """Another run holds the workdir."""


class WorkdirError(UserError):
  """The workdir cannot be used: a file, or not writable."""


def prepare(workdir: epath.Path) -> None:
  """Creates the workdir; one line when it is a file or cannot be created."""
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f'{workdir}: exists and is not a directory; pass a directory as --workdir')
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except (OSError, PermissionError) as e:
    raise WorkdirError(f'{workdir}: cannot create the workdir ({getattr(e, "strerror", None) or e})') from None


def _holder_info() -> dict:
  return {
    'pid': os.getpid(),
    'host': socket.gethostname(),
    'started': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
    'slurm_job_id': os.environ.get('SLURM_JOB_ID', ''),
    'slurm_restart_count': os.environ.get('SLURM_RESTART_COUNT', '0'),
  }


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  return True


def stale_reason(holder: dict, age_s: float, now_host: str | None = None) -> str | None:
  """Why a lock's holder is known to be gone, or None while it may still run."""
  host = now_host or socket.gethostname()
  if holder.get('host') == host and not _pid_alive(int(holder.get('pid', -1))):
    return f'process {holder.get("pid")} on {host} is not running'
  job, restart = os.environ.get('SLURM_JOB_ID', ''), os.environ.get('SLURM_RESTART_COUNT', '0')
  if job and holder.get('slurm_job_id') == job and holder.get('slurm_restart_count', '0') != restart:
    return f'it is an earlier run of this SLURM job ({job}), which was requeued'
  if age_s > STALE_AFTER_S:
    return f'its heartbeat stopped {age_s / 60:.0f} minutes ago'
  return None


def describe(holder: dict) -> str:
  return f'pid {holder.get("pid")} on {holder.get("host")}, started {holder.get("started")}'


class WorkdirLock:
  """Context manager: holds WORKDIR/run.lock while the run lasts (process 0 only)."""

  def __init__(self, workdir: epath.Path, enabled: bool = True):
    self.path = epath.Path(workdir) / LOCK_NAME
    self.enabled = enabled
    self.info = _holder_info()
    self._stop = threading.Event()
    self._thread = None
    self._held = False

  def __enter__(self):
    """Process 0 takes the lock; every process stops when it could not."""
    from mrisr_jax.checkpoint import _all_processes_agree

    error = None
    if self.enabled:
      try:
        self.acquire()
      except WorkdirLockedError as e:
        error = e
    if not _all_processes_agree(error is None):
      raise error or WorkdirLockedError(f'{self.path.parent}: process 0 could not take the workdir lock (see its log)')
    return self

  def __exit__(self, *exc):
    self.release()

  def _create(self) -> bool:
    try:
      return self._create_file()
    except OSError as e:  # _create_file answers an existing lock itself; this is a workdir we cannot write
      raise WorkdirError(f'{self.path.parent}: cannot write the workdir ({e.strerror or e})') from None

  def _create_file(self) -> bool:
    """Creates the lock file if absent (atomically on local disks); False when it exists."""
    text = json.dumps(self.info)
    if '://' in str(self.path):  # object stores have no exclusive create: check, then write
      if self.path.exists():
        return False
      self.path.write_text(text)
      return True
    try:
      fd = os.open(str(self.path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    return True

  def _read(self) -> tuple[dict, float]:
    try:
      holder = json.loads(self.path.read_text())
    except (OSError, ValueError):
      holder = {}
    try:
      age = time.time() - self.path.stat().mtime
    except (OSError, AttributeError):
      age = 0.0
    return holder, age

  def acquire(self) -> None:
    for _ in range(3):  # a takeover races with nobody but a crashed holder; a few tries suffice
      if self._create():
        self._held = True
        self._start_heartbeat()
        return
      holder, age = self._read()
      reason = stale_reason(holder, age)
      if reason is None:
        raise WorkdirLockedError(
          f'{self.path.parent}: in use by another run ({describe(holder)}; lock file {self.path}); wait for it to '
          f'end, or use another --workdir (delete the lock file only if that run is gone)'
        )
      logging.warning('%s: taking over the lock of %s: %s', self.path, describe(holder), reason)
      try:
        self.path.unlink()
      except FileNotFoundError:
        pass
    raise WorkdirLockedError(f'{self.path}: could not take the workdir lock (another run keeps creating it)')

  def _start_heartbeat(self) -> None:
    if '://' in str(self.path):
      return

    def beat():
      while not self._stop.wait(HEARTBEAT_S):
        try:
          os.utime(str(self.path))
        except OSError:
          return

    self._thread = threading.Thread(target=beat, name='mrisr-workdir-lock', daemon=True)
    self._thread.start()

  def release(self) -> None:
    self._stop.set()
    if not self._held:
      return
    self._held = False
    holder, _ = self._read()
    if holder.get('pid') == self.info['pid'] and holder.get('host') == self.info['host']:
      try:
        self.path.unlink()
      except OSError:
        pass
