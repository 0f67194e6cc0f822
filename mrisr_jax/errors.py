"""The errors a user can cause (bad data, config, weights) end the program with one line and exit 1."""
from __future__ import annotations

import sys

from absl import logging


class NonFiniteLossError(RuntimeError):
  """A loss became NaN/inf: training stops before saving, keeping the last good checkpoint."""


def _user_errors() -> tuple[type[BaseException], ...]:
  from mrisr_jax.config_check import ConfigError
  from mrisr_jax.data.errors import DataError
  from mrisr_jax.models.vgg import VGGWeightsError
  from mrisr_jax.registry import UnknownNameError
  return (ConfigError, DataError, VGGWeightsError, UnknownNameError, NonFiniteLossError)


USER_ERRORS = _user_errors()


def exit_with(e: BaseException, code: int = 1) -> None:
  message = ' '.join(str(e).split('\n'))
  logging.flush()
  print(f'mrisr_jax: error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)
