#!/usr/bin/env bash
# The shipped solids prior's recipe (jax3d/assets/solids-prior/, trained on one H200):
# the default preset (4000 steps of batch 64, cosine learning rate), stopped at step 3432 as the
# shipped run was (its device lease ended there), its EMA weights exported, then scored.
#
#   launch/train_prior_gpu.sh WORKDIR [GUIDANCE_SCALE] [VIEW_LABELS]
#
# VIEW_LABELS=azimuth trains captions with 12 azimuth sectors instead of DreamFusion's four
# view words (the camera conditioning that pins a cube's orientation; see jax3d/cameras.py).
set -euo pipefail
w=${1:?usage: $0 WORKDIR [GUIDANCE_SCALE] [VIEW_LABELS]}
g=${2:-10}
v=${3:-dreamfusion}
py=${PYTHON:-python3}
$py -m jax3d train-prior --workdir "$w" --stop-after 3432 \
  --config.checkpoint_every=500 --config.sample_every=0 --config.sample_guidance_scale="$g" \
  --config.data.view_labels="$v"
$py "$(dirname "$0")/export_prior_checkpoint.py" "$w" "$w/solids-prior"
$py -m jax3d bench prior --prior "$w/solids-prior" --guidance-scale "$g" \
  --out "$w/bench_prior.json" --grid-out "$w/bench_prior.png"
