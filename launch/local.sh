#!/usr/bin/env bash
# Runs one jax3d command as N processes on this machine (CPU devices), joined by
# jax.distributed: a way to try multi-process runs without a cluster.
#
#   launch/local.sh N jax3d generate "a red cube" --particles 4 --workdir runs/mp
#
# Each process gets JAX3D_LOCAL_DEVICES CPU devices (default 1); the coordinator listens on
# 127.0.0.1:JAX3D_PORT (default: a free port). Ctrl-C or SIGTERM reaches every process, which
# stop together after a checkpoint; rerun the same line to resume.
set -euo pipefail
if [[ $# -lt 2 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: launch/local.sh N jax3d COMMAND ARGS..." >&2
  exit 2
fi
n=$1
shift
devices=${JAX3D_LOCAL_DEVICES:-1}
port=${JAX3D_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < n; i++)); do
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices}" JAX_PLATFORMS=cpu \
    "$@" --distributed --coordinator "127.0.0.1:${port}" --num-processes "$n" \
    --process-id "$i" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
