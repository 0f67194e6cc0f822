#!/usr/bin/env bash
# Simulate a multi-host run on one machine: N CPU processes, each with D devices, joined through
# jax.distributed on 127.0.0.1 with gloo collectives. Same code path as a real multi-host job.
#   launch/local_multihost.sh N D -- --config configs/casrgan_x4.py:quick --workdir runs/mh
# SIGTERM / SIGINT to this script are forwarded (once) to every process, as SLURM signals every task
# of a job; the exit status is the last non-zero status of the processes (e.g. the preemption code).
set -euo pipefail
n=${1:?number of processes}; d=${2:?devices per process}; shift 2
[ "${1:-}" = "--" ] && shift
port=${MRISR_PORT:-$((20000 + RANDOM % 20000))}
# Each process in its own process group: a signal to this script's group reaches the processes
# once (forwarded), and SIGINT is not ignored in them as it is for plain background jobs.
set -m
pids=()
interrupted=0
forward() {
  interrupted=1
  for pid in "${pids[@]}"; do kill -s "$1" "$pid" 2>/dev/null || true; done
}
trap 'forward TERM' TERM
trap 'forward INT' INT
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$d" \
    python -m mrisr_jax.main --coordinator_address "127.0.0.1:$port" --num_processes "$n" \
    --process_id "$i" "$@" &
  pids+=($!)
done

wait_child() {  # the exit status of child $1; a trapped signal cuts `wait` short, so wait again
  local rc=0 again
  wait "$1" || rc=$?
  while [ "$interrupted" = 1 ] && [ "$rc" -gt 128 ]; do
    interrupted=0
    again=0
    wait "$1" || again=$?
    [ "$again" = 127 ] && break  # already reaped: rc was its own status
    rc=$again
  done
  return "$rc"
}

status=0
for pid in "${pids[@]}"; do
  rc=0
  wait_child "$pid" || rc=$?
  [ "$rc" = 0 ] || status=$rc
done
exit "$status"
