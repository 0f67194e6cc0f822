"""mrisr_jax.compile_cache: which directory JAX's persistent compilation cache uses, turning it on
(cli.run and cli.guard do, before anything compiles), and a second CLI run reading every program back."""

from __future__ import annotations

import logging
import pathlib
import types

import numpy as np
import pytest

from mrisr_jax import cli, compile_cache
from mrisr_jax.compile_cache import ENV, JAX_ENV, Choice, cache_dir
from tests.helpers import REPO, run_main

pytestmark = pytest.mark.unit

HOME = pathlib.Path('/home/someone')


# ------------------------------------------------------------------------------- the directory rules


def test_jax_own_variable_wins_over_ours():
  assert cache_dir({JAX_ENV: '/jax', ENV: '/ours', 'XDG_CACHE_HOME': '/xdg'}, HOME) == Choice(None, JAX_ENV)
  assert cache_dir({JAX_ENV: '', ENV: '/ours'}, HOME) == Choice(None, JAX_ENV)  # set, even empty: JAX's rules


@pytest.mark.parametrize('value', ['off', 'OFF', ' Off ', '0', 'false', 'no'])
def test_off(value):
  assert cache_dir({ENV: value, 'XDG_CACHE_HOME': '/xdg'}, HOME) == Choice(None, 'off')


def test_our_variable_is_the_directory():
  assert cache_dir({ENV: '/data/xla', 'XDG_CACHE_HOME': '/xdg'}, HOME) == Choice(pathlib.Path('/data/xla'), ENV)
  assert cache_dir({ENV: '~/xla'}, HOME) == Choice(HOME / 'xla', ENV)
  assert cache_dir({ENV: 'rel/xla'}, HOME) == Choice(pathlib.Path('rel/xla'), ENV)


@pytest.mark.parametrize('value', [None, '', '  '])
def test_default_is_the_user_cache_directory(value):
  env = {} if value is None else {ENV: value}
  assert cache_dir(env, HOME) == Choice(HOME / '.cache' / 'mrisr_jax' / 'xla', 'default')
  assert cache_dir({**env, 'XDG_CACHE_HOME': '/xdg'}, HOME).path == pathlib.Path('/xdg/mrisr_jax/xla')
  # the XDG spec: an empty or relative XDG_CACHE_HOME is ignored
  for xdg in ('', 'relative'):
    assert cache_dir({**env, 'XDG_CACHE_HOME': xdg}, HOME).path == HOME / '.cache' / 'mrisr_jax' / 'xla'


def test_cache_dir_reads_os_environ_by_default(monkeypatch):
  monkeypatch.delenv(JAX_ENV, raising=False)
  monkeypatch.setenv(ENV, '/somewhere')
  assert cache_dir() == Choice(pathlib.Path('/somewhere'), ENV)


# ------------------------------------------------------------------------------- enable


@pytest.fixture
def updates(monkeypatch):
  """jax.config.update recorded (`.config`) instead of applied (this process keeps the test suite's
  cache), the compile listeners collected (`.listeners`) instead of registered, and enable's
  once-per-process memory reset."""
  import jax

  seen = types.SimpleNamespace(config={}, listeners=[])
  monkeypatch.setattr(jax.config, 'update', seen.config.__setitem__)
  monkeypatch.setattr(jax.monitoring, 'register_event_duration_secs_listener', seen.listeners.append)
  monkeypatch.setattr(compile_cache, '_enabled', None)
  return seen


def _cache_lines(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if 'compilation cache' in r.getMessage()]


def test_enable_turns_it_on_once_and_says_where_at_the_first_compile(updates, tmp_path, caplog):
  where = tmp_path / 'a' / 'xla'
  with caplog.at_level(logging.INFO):
    choice = compile_cache.enable({ENV: str(where)})
    assert choice == Choice(where, ENV) and where.is_dir()
    assert updates.config == {
      'jax_compilation_cache_dir': str(where),
      'jax_persistent_cache_min_compile_time_secs': compile_cache.MIN_COMPILE_TIME_SECS,
      'jax_persistent_cache_min_entry_size_bytes': compile_cache.MIN_ENTRY_SIZE_BYTES,
    }
    # nothing yet: a run that stops before it compiles keeps its one-line error
    assert _cache_lines(caplog) == [] and len(updates.listeners) == 1
    listener = updates.listeners[0]
    listener('/jax/something/else', 0.1)
    assert _cache_lines(caplog) == []
    listener('/jax/core/compile/jaxpr_trace_duration', 0.1, fun_name='f')
    listener('/jax/core/compile/backend_compile_duration', 0.2, fun_name='f')
  assert _cache_lines(caplog) == [f'JAX compilation cache: {where} (from {ENV})']
  assert caplog.records[-1].levelno == logging.INFO
  updates.config.clear()
  assert compile_cache.enable({ENV: str(tmp_path / 'other')}) == choice  # once per process
  assert updates.config == {} and len(updates.listeners) == 1 and not (tmp_path / 'other').exists()


def test_jax_reports_compiles_under_the_event_names_the_log_line_waits_for():
  import jax

  events = []
  listener = lambda event, duration_secs, **kwargs: events.append(event)  # noqa: E731
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    jax.jit(lambda x: x * 3 + 1)(np.arange(5.0)).block_until_ready()  # a program this process has not seen
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert any(e.startswith('/jax/core/compile/') for e in events), events


def test_enable_keeps_jax_settings_from_the_environment(updates, tmp_path, caplog):
  env = {JAX_ENV: str(tmp_path), 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  with caplog.at_level(logging.INFO):
    assert compile_cache.enable(env) == Choice(None, JAX_ENV)
    updates.listeners[0]('/jax/core/compile/jaxpr_trace_duration', 0.1)
  assert updates.config == {'jax_persistent_cache_min_entry_size_bytes': compile_cache.MIN_ENTRY_SIZE_BYTES}
  assert _cache_lines(caplog) == [f'JAX compilation cache: {tmp_path} (from {JAX_ENV})']


def test_enable_off_changes_nothing(updates, caplog):
  with caplog.at_level(logging.INFO):
    assert compile_cache.enable({ENV: 'off'}) == Choice(None, 'off')
    updates.listeners[0]('/jax/core/compile/jaxpr_trace_duration', 0.1)
  assert updates.config == {}
  assert _cache_lines(caplog) == [f'JAX compilation cache: off ({ENV}=off)']


def test_unusable_directory_is_one_warning_and_no_cache(updates, tmp_path, caplog):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')  # mkdir under a file fails, even for root
  where = blocker / 'xla'
  with caplog.at_level(logging.INFO):
    assert compile_cache.enable({ENV: str(where)}) == Choice(None, 'unusable')
  assert updates.config == {} and updates.listeners == []
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and str(where) in warnings[0] and 'running without it' in warnings[0]


def test_guard_turns_it_on_before_the_tool_runs(monkeypatch):
  order = []
  monkeypatch.setattr(compile_cache, 'enable', lambda: order.append('enable'))
  assert cli.guard(lambda x: order.append(x) or 'done', 'main') == 'done'
  assert order == ['enable', 'main']
  order.clear()
  assert cli.guard(lambda: 'timed', compile_cache=False) == 'timed'  # a tool that times its compiles
  assert order == []


# ------------------------------------------------------------------------------- a CLI, twice


def _write_srcnn_weights(path):
  """Random SRCNN x2 weights in the reference layout (no init compile, unlike `mrisr_jax.export`)."""
  import sys

  import jax

  from mrisr_jax import network_variables
  from mrisr_jax.interop import convert, state_dict_io

  sys.path.insert(0, str(REPO))
  from configs.srcnn import get_config

  rng = np.random.default_rng(0)
  like = network_variables.like_variables(get_config('x2,quick'))
  variables = jax.tree.map(lambda s: (rng.standard_normal(s.shape) * 0.1).astype(s.dtype), like)
  state_dict_io.save_state_dict(convert.flax_to_state_dict('srcnn', variables), path)


@pytest.mark.integration  # subprocess CLIs
def test_second_infer_reads_every_program_from_the_cache(tmp_path, monkeypatch):
  """Two `infer` runs of one model on one input with a fresh cache: the first writes its programs
  (with no minimum compile time, so SRCNN's 0.1 s forward is one, and no program near the threshold
  can make the count flaky), the second compiles none of them again and writes nothing."""
  monkeypatch.delenv(JAX_ENV, raising=False)  # the test suite's cache (conftest.py) would win
  cache = tmp_path / 'xla'
  weights = tmp_path / 'srcnn.safetensors'
  _write_srcnn_weights(weights)
  np.save(tmp_path / 'lr.npy', np.random.default_rng(1).random((2, 24, 20)).astype(np.float32))
  env = {ENV: str(cache), 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}

  def infer(name):
    args = ['--config', 'configs/srcnn.py:x2,quick', '--weights', str(weights), '--input', str(tmp_path / 'lr.npy')]
    proc = run_main(
      *args, '--output', str(tmp_path / name), '--noprogress', env=env, module='mrisr_jax.infer', timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'JAX compilation cache: {cache} (from {ENV})' in proc.stderr
    return {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}

  first = infer('sr1.npy')  # ~3 s each on 2 loaded cores; run_main's timeout is the hang guard
  assert any(name.startswith('jit_predict-') for name in first), sorted(first)
  second = infer('sr2.npy')
  assert second == first  # no entry added or rewritten: every program came from the cache
  np.testing.assert_array_equal(np.load(tmp_path / 'sr1.npy'), np.load(tmp_path / 'sr2.npy'))
