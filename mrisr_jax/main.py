"""Entry point: python -m mrisr_jax.main --config configs/casrgan_x4.py[:quick] --workdir DIR

Overrides: --config.a.b=value. Running again with the same --workdir resumes from its latest
checkpoint. Multi-host: start one process per host; jax.distributed is initialised from the flags
below or, on TPU pods and SLURM, from the environment (see launch/).
"""
from __future__ import annotations

import logging as pylogging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, optionally FILE:ARG.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, images and the report.')
_DISTRIBUTED = flags.DEFINE_enum('distributed', 'auto', ['auto', 'on', 'off'],
                                 'Call jax.distributed.initialize: auto = when a coordinator is given or '
                                 'the cluster environment (TPU pod, SLURM) provides one.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process (multi-host).')
flags.mark_flags_as_required(['config', 'workdir'])


def _init_distributed() -> None:
  import jax
  mode = _DISTRIBUTED.value
  cluster = any(k in os.environ for k in ('SLURM_NTASKS', 'TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS'))
  if mode == 'off' or (mode == 'auto' and not _COORDINATOR.value and not cluster):
    return
  # CPU devices need gloo for cross-process collectives; the option does not touch GPU/TPU clients.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                             process_id=_PROCESS_ID.value)


class _QuietLibraries(pylogging.Filter):
  """Keep orbax's and grain's per-save INFO chatter out of the console; warnings still show."""

  def filter(self, record):
    noisy = ('/orbax/', '/grain/', '/tensorstore/')
    return record.levelno >= pylogging.WARNING or not any(n in record.pathname for n in noisy)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  _init_distributed()
  import jax
  from mrisr_jax import errors, train
  logging.info('JAX %s on %s: %d processes, %d devices (%d local)', jax.__version__, jax.default_backend(),
               jax.process_count(), jax.device_count(), jax.local_device_count())
  try:
    config = _CONFIG.value
    config.get('name')  # the file loads lazily: a missing or broken config file fails here
  except (OSError, AttributeError, KeyError, TypeError, ValueError) as e:
    _config_error(str(e))
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except errors.USER_ERRORS as e:
    errors.exit_with(e)


def _parse_flags(argv):
  """absl's parser, but a bad --config override (mistyped key, wrong type) is one line, exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    message = str(e).strip("'\"")
  _config_error(message)


def _config_error(message: str) -> None:
  message = message.replace('\\n', '\n').replace("\\'", "'")
  if 'Traceback' in message or 'Attempted' in message:  # keep the line that says what failed
    message = [line for line in message.splitlines() if line.strip()][-1]
  print(f'mrisr_jax: error: bad config: {" ".join(message.split())}', file=sys.stderr)
  sys.exit(2)


def run():
  try:
    app.run(main, flags_parser=_parse_flags)
  except KeyboardInterrupt:
    sys.exit(130)


if __name__ == '__main__':
  run()
