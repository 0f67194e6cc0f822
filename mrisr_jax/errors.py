"""The errors a user can cause (bad data, config, weights, options): each derives from `UserError`,
and the CLI runner (mrisr_jax.cli) ends the program with its one line and exit status 2."""

from __future__ import annotations

import sys

from absl import logging

EXIT_USER_ERROR = 2  # a one-line user error (as argparse's usage errors)


class UserError(Exception):
  """An error the user can fix (a file, option, key or value at fault): one line, no traceback."""

  def __init__(self, message: object = ''):
    # messages quoting h5py/numpy/config errors can carry newlines; keep ours to one line
    super().__init__(' '.join(str(message).split()))


class ConfigError(UserError, ValueError):
  """A config file or a config value at fault (missing, broken, unknown argument, key or type)."""


class NonFiniteLossError(UserError, RuntimeError):
  """A loss became NaN/inf: training stops before saving, keeping the last good checkpoint."""


def exit_with(e: BaseException, code: int = EXIT_USER_ERROR) -> None:
  message = ' '.join(str(e).split())
  logging.flush()
  print(f'mrisr_jax: error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)
