#!/usr/bin/env bash
# Multi-process scaling of the VSD step on this machine's CPU: the same 4 devices as
# 1 process x 4 devices, 2 processes x 2 and 4 x 1 (through launch/local.sh), each timed by
# `jax3d bench step --method vsd` at P = 4 and 8 particles; one JSON file per layout.
#
#   launch/bench_step_scaling.sh [OUT_DIR] [SWEEP]     (defaults: docs/results, 4,8)
set -euo pipefail
out=${1:-docs/results}
sweep=${2:-4,8}
here=$(cd "$(dirname "$0")" && pwd)
bench=(jax3d bench step --method vsd --sweep "$sweep" --repeats 5)
XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
  "${bench[@]}" --out "$out/bench-step-vsd-cpu-1x4.json"
JAX3D_LOCAL_DEVICES=2 "$here/local.sh" 2 "${bench[@]}" --out "$out/bench-step-vsd-cpu-2x2.json"
JAX3D_LOCAL_DEVICES=1 "$here/local.sh" 4 "${bench[@]}" --out "$out/bench-step-vsd-cpu-4x1.json"
