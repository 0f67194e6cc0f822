"""Entry point: python -m mrisr_jax.main (or mrisr-train) --config configs/casrgan.py[:ARGS] --workdir DIR

Overrides: --config.a.b=value. Running again with the same --workdir resumes from its latest
checkpoint. Multi-host: start one process per host; jax.distributed is initialised from the flags
below or, on TPU pods and SLURM, from the environment (see launch/).
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging

from mrisr_jax import cli

_CONFIG = flags.DEFINE_string('config', None, cli.CONFIG_HELP)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, images and the report.')
_DISTRIBUTED = flags.DEFINE_enum(
  'distributed',
  'auto',
  ['auto', 'on', 'off'],
  'Call jax.distributed.initialize: auto = when a coordinator is given or '
  'the cluster environment (TPU pod, SLURM) provides one.',
)
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process (multi-host).')
_COORDINATOR_PORT = flags.DEFINE_integer(
  'coordinator_port',
  None,
  'SLURM: port of the coordinator on the first node (default: '
  '$JAX_COORDINATOR_PORT, else 12345 + SLURM_JOB_ID % 1000).',
)
_PREEMPTION_EXIT_CODE = flags.DEFINE_integer(
  'preemption_exit_code',
  0,
  'Exit status after a SIGTERM/SIGINT made the run save and stop (e.g. 75 '
  'for launch/slurm_gpu.sbatch, which requeues the job on it); 0 = a clean exit.',
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
  'allow_config_change',
  False,
  "Resume a workdir although the config differs from its checkpoint's in what the saved state means "
  '(model, scale, stages, optimizer); the differences are logged (mrisr_jax.resume_guard).',
)
flags.mark_flags_as_required(['config', 'workdir'])


def distributed_kwargs(
  mode: str, env, coordinator_address=None, num_processes=None, process_id=None, port=None
) -> dict | None:
  """The jax.distributed.initialize arguments, or None to run single-process.

  SLURM: computed by mrisr_jax.cluster (jax's own detection would give each process 1 GPU); TPU
  pods: {} (jax reads the TPU metadata). Explicit flags win over the environment.
  """
  from mrisr_jax import cluster

  if mode == 'off':
    return None
  detected = cluster.detect(env, port=port)
  if mode == 'auto' and not coordinator_address and detected is None:
    return None
  kwargs = detected.kwargs() if detected else {}
  explicit = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
  kwargs.update({k: v for k, v in explicit.items() if v is not None})
  return kwargs


def _init_distributed() -> None:
  import jax
  from mrisr_jax import cluster, errors

  try:
    kwargs = distributed_kwargs(
      _DISTRIBUTED.value,
      os.environ,
      _COORDINATOR.value,
      _NUM_PROCESSES.value,
      _PROCESS_ID.value,
      _COORDINATOR_PORT.value,
    )
  except cluster.ClusterError as e:
    errors.exit_with(e)
  if kwargs is None:
    return
  logging.info('jax.distributed.initialize(%s)', ', '.join(f'{k}={v!r}' for k, v in kwargs.items()))
  # CPU devices need gloo for cross-process collectives; the option does not touch GPU/TPU clients.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)


def main(config):
  """Trains `config` (loaded by cli.run, with its overrides) in --workdir."""
  _init_distributed()
  import jax
  from mrisr_jax import train

  logging.info(
    'JAX %s on %s: %d processes, %d devices (%d local)',
    jax.__version__,
    jax.default_backend(),
    jax.process_count(),
    jax.device_count(),
    jax.local_device_count(),
  )
  from mrisr_jax.preemption import Preempted

  try:
    if 'transmrsr' in config:  # TransMRSR's prior / centroids / SR stages (configs/transmrsr.py)
      from mrisr_jax import transmrsr_run

      transmrsr_run.run(config, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    else:
      train.train_and_evaluate(config, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except Preempted:  # saved and logged; the scheduler may requeue on this status
    logging.flush()
    sys.exit(_PREEMPTION_EXIT_CODE.value)


def run():
  """`python -m mrisr_jax.main` and `mrisr-train`: a user error is one line and exit 2 (mrisr_jax.cli)."""
  cli.run(main)


if __name__ == '__main__':
  run()
