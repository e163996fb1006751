#!/usr/bin/env bash
# One device call: train a solids prior with azimuth view labels, then time one training
# step of SJC (PAAS K = 1, 2, 4, 8) and SDS, split into render / prior / rest.
#
#   launch/gpu_train_prior_and_bench_step.sh OUT [STEPS] [PRIOR_CONFIG] [BENCH_FLAGS]
#
# Every stage writes under OUT as it finishes; a failed stage does not stop the next.
set -uo pipefail
out=${1:?usage: $0 OUT [STEPS] [PRIOR_CONFIG] [BENCH_FLAGS]}
steps=${2:-5000}
pc=${3:-solids_prior:default}
bf=${4:-}
py=${PYTHON:-python3}
here=$(dirname "$0")
mkdir -p "$out"
export PYTHONUNBUFFERED=1
$py -c 'import jax; print(jax.__version__, jax.devices())' | tee "$out/device.txt"
w=${WORK:-/tmp/p2}
t0=$SECONDS
timeout "${PRIOR_TIMEOUT:-400}" bash "$here/train_prior_gpu.sh" "$w" 10 azimuth "$steps" "$pc" \
  2>&1 | tee "$out/prior.log" | tr '\r' '\n' | grep -v "step/s"
rc=${PIPESTATUS[0]}
# The recipe ends with `bench prior`: a timeout there (exit 124) still leaves exported weights.
exported=no
[[ -d "$w/solids-prior" ]] && exported=yes
echo "prior stage: exit $rc, weights exported: $exported, $((SECONDS - t0)) s" \
  | tee -a "$out/device.txt"
if [[ $exported == yes ]]; then
  tar -C "$w" -czf "$out/solids-prior.tgz" solids-prior
  cp "$w"/bench_prior.json "$w"/bench_prior.png "$out"/ 2>/dev/null
fi
for m in sjc sds; do
  t0=$SECONDS
  timeout "${BENCH_TIMEOUT:-150}" $py -m jax3d bench step --method "$m" $bf \
    --out "$out/bench_step_$m.json" 2>&1 | tail -20 || echo "bench step $m failed"
  echo "bench step $m: $((SECONDS - t0)) s" | tee -a "$out/device.txt"
done
