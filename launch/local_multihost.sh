#!/usr/bin/env bash
# Simulate a multi-host run on one machine: N CPU processes, each with D devices, joined through
# jax.distributed on 127.0.0.1 with gloo collectives. Same code path as a real multi-host job.
#   launch/local_multihost.sh N D -- --config configs/casrgan_x4.py:quick --workdir runs/mh
set -euo pipefail
n=${1:?number of processes}; d=${2:?devices per process}; shift 2
[ "${1:-}" = "--" ] && shift
port=${MRISR_PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$d" \
    python -m mrisr_jax.main --coordinator_address "127.0.0.1:$port" --num_processes "$n" \
    --process_id "$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
