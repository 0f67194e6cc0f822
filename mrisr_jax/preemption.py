"""Preemption: every process agrees on one step at which to save and stop, after SIGTERM or SIGINT.

- Multi-process runs (after `jax.distributed.initialize`): JAX's preemption service already
  catches SIGTERM on any process and propagates the notice through the coordination service;
  `multihost_utils.reached_preemption_sync_point(step)` then returns True on every process at the
  same step. SIGINT (Ctrl-C) is turned into a SIGTERM to this process, so it takes the same path.
- Single-process runs without a coordinator: Python handlers for SIGTERM and SIGINT set a flag that
  the loop reads at the next step boundary.

A signal that arrives during a compile, a validation pass or a checkpoint write is held until that
work ends: the loop finishes the step it is on, saves, and exits. A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import os
import signal

from absl import logging


def _sync_manager_running() -> bool:
  # jax has no public query for this; the attribute is what jax.distributed.initialize sets.
  from jax._src import distributed

  return getattr(distributed.global_state, 'preemption_sync_manager', None) is not None


class PreemptionGuard:
  """Context manager around the training loop; `reached(step)` must be called at every step on
  every process (the multi-process protocol requires it)."""

  def __init__(self):
    self._flag = None
    self._previous = {}
    self._multiprocess = False

  def __enter__(self) -> 'PreemptionGuard':
    self._multiprocess = _sync_manager_running()
    self._flag = None
    handled = (signal.SIGINT,) if self._multiprocess else (signal.SIGINT, signal.SIGTERM)
    for sig in handled:
      try:
        self._previous[sig] = signal.signal(sig, self._on_signal)
      except ValueError:  # not the main thread (e.g. a notebook worker): no handler, no guard
        pass
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _on_signal(self, signum, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if signum == signal.SIGINT:
      # a second Ctrl-C aborts without saving
      signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))
    logging.warning(
      'received %s: the run saves a checkpoint at the next step all processes reach, then stops%s',
      name,
      ' (Ctrl-C again to abort without saving)' if signum == signal.SIGINT else '',
    )
    if self._multiprocess:
      os.kill(os.getpid(), signal.SIGTERM)  # jax's preemption notifier takes it to every process
    else:
      self._flag = name

  def reached(self, step: int) -> bool:
    """True on every process at the one step where they all save and stop."""
    if self._multiprocess:
      from jax.experimental import multihost_utils

      return bool(multihost_utils.reached_preemption_sync_point(int(step)))
    return self._flag is not None


class Preempted(Exception):
  """Raised by the loop after it saved at the agreed step; main exits with --preemption_exit_code."""

  def __init__(self, step: int, directory):
    super().__init__(f'preempted: saved step {step} in {directory}; run the same command to resume')
    self.step = step
