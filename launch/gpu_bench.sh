#!/usr/bin/env bash
# One device call of benchmarks only (no training): the SDS step of the toy preset and of
# toy-analytic, split into render / prior / rest, and hash-grid render throughput at the
# toy and the sd (Instant-NGP) grid sizes.
#
#   launch/gpu_bench.sh OUT
#
# Every stage writes OUT/<stage>.json and OUT/<stage>.log as it finishes; a failed or timed-out
# stage does not stop the next. Timeouts: STAGE_TIMEOUT seconds each (default 150).
set -uo pipefail
out=${1:?usage: $0 OUT}
py=${PYTHON:-python3}
t=${STAGE_TIMEOUT:-150}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# Run from the repo root. Without an install (the device machine) `python -m jax3d` would not
# find the presets that pyproject.toml ships as the package jax3d.configs.
$py -c 'import jax3d.configs' 2>/dev/null || ln -sfn ../configs jax3d/configs
$py -c 'import jax; print(jax.__version__, jax.devices())' | tee "$out/device.txt"
stage() {  # name, then the jax3d arguments
  local name=$1 t0=$SECONDS
  shift
  timeout "$t" $py -m jax3d "$@" --out "$out/$name.json" >"$out/$name.log" 2>&1
  echo "$name: exit $?, $((SECONDS - t0)) s" | tee -a "$out/device.txt"
  tail -12 "$out/$name.log"
}
stage bench_step_sds bench step --method sds
stage bench_step_sds_analytic bench step --method sds --config configs/dreamfusion.py:toy-analytic
stage bench_render_sd bench render --grid sd
stage bench_render_toy bench render --grid toy
