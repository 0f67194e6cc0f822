"""JAX's persistent compilation cache, on by default for every entry point and tool (`cli.run`, `cli.guard`).

A second run of the same model on the same shapes reads its compiled programs from disk instead of
compiling them again. Where the cache lives (`cache_dir`, the first rule that applies):

  JAX_COMPILATION_CACHE_DIR     JAX's own variable: JAX uses it and nothing here changes it
  MRISR_JAX_COMPILATION_CACHE   `off` (or `0`, `false`, `no`, any case) turns the cache off; any other
                                non-empty value is the directory (`~` expanded)
  otherwise                     $XDG_CACHE_HOME/mrisr_jax/xla, or ~/.cache/mrisr_jax/xla

JAX keys each entry on the program, the jax/jaxlib version, the devices and the compile options, so a
stale entry is never used; the directory can be deleted at any time. A directory that cannot be created
or written is one logged warning naming it, and the run goes on without the cache. Which directory is
used (or that the cache is off) is logged at INFO when the first program compiles, so a run that stops
on a user error before that still prints one line.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile
from typing import Mapping

ENV = 'MRISR_JAX_COMPILATION_CACHE'
JAX_ENV = 'JAX_COMPILATION_CACHE_DIR'
OFF = frozenset({'off', '0', 'false', 'no'})

# Only programs that took at least this long to compile are written. A model's forward or train step
# takes seconds (measured on 2 loaded CPU cores: the CASR x4 quick forward 5.6 s, its init 49 s,
# EDSR x2 quick's init 5.5 s); the small jits around them (casts, PRNG seeds and splits, unstacking)
# take 0.003-0.1 s, up to ~0.25 s as a process's very first compile, and a tiny model's forward
# (SRCNN 0.12 s, EDSR quick 0.23 s) saves no more than that: none of them is worth a file. JAX's own
# default, 1 s, would miss mid-size forwards on a fast machine.
MIN_COMPILE_TIME_SECS = 0.5
# No size floor (-1: JAX does not raise it either): how long a compile takes is what a hit saves;
# a small executable can be a slow compile.
MIN_ENTRY_SIZE_BYTES = -1
# set by the user in the environment, JAX's own values win over the two above
_JAX_SETTING_ENVS = {
  'jax_persistent_cache_min_compile_time_secs': ('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', MIN_COMPILE_TIME_SECS),
  'jax_persistent_cache_min_entry_size_bytes': ('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', MIN_ENTRY_SIZE_BYTES),
}


@dataclasses.dataclass(frozen=True)
class Choice:
  """Where the cache is: `path` (None: off, or JAX's own variable decides) and which rule chose it."""

  path: pathlib.Path | None
  source: str  # JAX_ENV, ENV, 'default', 'off' or (enable: the directory cannot be used) 'unusable'

  def describe(self, environ: Mapping[str, str] | None = None) -> str:
    """The log line: where the cache is, or that it is off (JAX's variable read from `environ`)."""
    if self.source == 'off':
      return f'JAX compilation cache: off ({ENV}=off)'
    if self.source == 'unusable':
      return 'JAX compilation cache: off (its directory cannot be used)'
    if self.source == JAX_ENV:
      jax_dir = (os.environ if environ is None else environ).get(JAX_ENV)
      return f'JAX compilation cache: {jax_dir or "off"} (from {JAX_ENV})'
    where = f' (from {ENV})' if self.source == ENV else ''
    return f'JAX compilation cache: {self.path}{where}'


def cache_dir(environ: Mapping[str, str] | None = None, home: str | os.PathLike | None = None) -> Choice:
  """Which directory the cache uses under `environ` (default os.environ); `home` is ~ (default the
  user's). Pure: reads nothing else, creates nothing."""
  env = os.environ if environ is None else environ
  if JAX_ENV in env:
    return Choice(None, JAX_ENV)
  value = env.get(ENV, '').strip()
  if value.lower() in OFF:
    return Choice(None, 'off')
  home = pathlib.Path(home) if home is not None else pathlib.Path.home()
  if value:
    path = pathlib.Path(str(home) + value[1:]) if value == '~' or value.startswith('~/') else pathlib.Path(value)
    return Choice(path, ENV)
  xdg = env.get('XDG_CACHE_HOME', '')
  base = pathlib.Path(xdg) if xdg and os.path.isabs(xdg) else home / '.cache'  # XDG: a relative one is ignored
  return Choice(base / 'mrisr_jax' / 'xla', 'default')


def _writable(path: pathlib.Path) -> str | None:
  """None when `path` exists (created if need be) and a file can be written in it, else why not."""
  try:
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    return e.strerror or str(e)
  return None


_enabled: Choice | None = None


def enable(environ: Mapping[str, str] | None = None, home: str | os.PathLike | None = None) -> Choice:
  """Turns the persistent cache on as `cache_dir` chooses, before anything compiles. Once per process:
  a later call returns the first call's choice. Never raises for the directory: one that cannot be used
  is a logged warning, and the cache stays off (`Choice(None, 'unusable')` is returned)."""
  global _enabled
  if _enabled is not None:
    return _enabled
  from absl import logging
  import jax

  env = os.environ if environ is None else environ
  choice = cache_dir(env, home)
  if choice.path is not None:
    problem = _writable(choice.path)
    if problem is not None:
      logging.warning(
        'JAX compilation cache: cannot use %s (%s); running without it (%s=DIR moves it, %s=off turns it off)',
        choice.path,
        problem,
        ENV,
        ENV,
      )
      _enabled = Choice(None, 'unusable')
      return _enabled
    jax.config.update('jax_compilation_cache_dir', str(choice.path))
  if choice.path is not None or (choice.source == JAX_ENV and env.get(JAX_ENV)):
    for setting, (variable, value) in _JAX_SETTING_ENVS.items():
      if variable not in env:
        jax.config.update(setting, value)
  _log_before_first_compile(choice.describe(env))
  _enabled = choice
  return choice


def _log_before_first_compile(message: str) -> None:
  """Logs `message` (INFO) once, when JAX first traces or compiles a program: a run that stops before
  (a missing input, weights that do not fit) keeps its one-line error."""
  from absl import logging
  from jax import monitoring

  pending = [message]

  def listener(event: str, duration_secs: float, **kwargs) -> None:
    if pending and event.startswith('/jax/core/compile/'):
      try:
        logging.info('%s', pending.pop())
      except IndexError:  # another thread's compile logged it
        pass

  monitoring.register_event_duration_secs_listener(listener)
