#!/usr/bin/env bash
# The solids prior's recipe on one GPU: train, export the EMA weights, score them.
#
#   launch/train_prior_gpu.sh WORKDIR [GUIDANCE_SCALE] [VIEW_LABELS] [STEPS] [CONFIG]
#
# With STEPS unset it reproduces version 1 (jax3d/assets/solids-prior/ README): the default
# preset's 4000 scheduled steps of batch 64, stopped at step 3432 as the shipped run was (its
# device lease ended there). STEPS=N schedules N steps and runs them all.
# VIEW_LABELS=azimuth trains captions with 12 azimuth sectors instead of DreamFusion's four
# view words (the camera conditioning that pins a cube's orientation; see jax3d/cameras.py).
# CONFIG (default solids_prior:default) lets a smoke test run the recipe on the tiny preset.
set -euo pipefail
w=${1:?usage: $0 WORKDIR [GUIDANCE_SCALE] [VIEW_LABELS] [STEPS] [CONFIG]}
g=${2:-10}
v=${3:-dreamfusion}
n=${4:-}
c=${5:-solids_prior:default}
py=${PYTHON:-python3}
if [[ -z "$n" ]]; then
  run=(--stop-after 3432)
else
  run=(--config.train.num_steps="$n")
fi
$py -m jax3d train-prior --workdir "$w" --config "$c" "${run[@]}" \
  --config.checkpoint_every=500 --config.sample_every=0 --config.sample_guidance_scale="$g" \
  --config.data.view_labels="$v"
$py "$(dirname "$0")/export_prior_checkpoint.py" "$w" "$w/solids-prior"
$py -m jax3d bench prior --prior "$w/solids-prior" --guidance-scale "$g" \
  --out "$w/bench_prior.json" --grid-out "$w/bench_prior.png"
