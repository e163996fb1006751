#!/usr/bin/env bash
# Trains the solids prior on one accelerator and scores it with `jax3d bench prior`.
#
#   launch/train_prior_gpu.sh OUT_DIR [TRAIN_BUDGET_S]
#
# Run A is the shipped CPU recipe (`solids_prior:default`, 5000 steps x 32) run on the
# accelerator; run B trains batch 64 for as many steps as fit TRAIN_BUDGET_S (default 150 s),
# measured from run A's step time. Each run's exported folder is tarred into OUT_DIR with its
# bench JSON and sample grid; logs go to OUT_DIR/log.txt.
set -uo pipefail
out=${1:?usage: $0 OUT_DIR [TRAIN_BUDGET_S]}
budget=${2:-150}
few="--config.checkpoint_every=2500 --config.sample_every=5000"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
j="$py -m jax3d"
log="$out/log.txt"
say() { echo "== $(date +%T) $*" | tee -a "$log"; }

say "devices: $($py -c 'import jax; print(jax.devices(), jax.__version__)' 2>&1 | tail -1)"
say "A: the CPU recipe"
timeout 240 $j train-prior --workdir /tmp/A --export-to /tmp/A/solids-prior $few >>"$log" 2>&1 \
  || { say "A FAILED"; tail -60 "$log"; exit 1; }
cat /tmp/A/train_summary.json >>"$log"
tar -C /tmp/A -czf "$out/priorA.tgz" solids-prior
timeout 120 $j bench prior --prior /tmp/A/solids-prior --guidance-scale 3 \
  --out "$out/benchA_g3.json" >>"$log" 2>&1
steps=$(BUDGET=$budget $py - <<'PY'
import json, os
s = json.load(open("/tmp/A/train_summary.json"))
per = (s["wall_time_s"] - s["compile_time_s"]) / s["step"]
print(int(min(60000, max(5000, int(float(os.environ.get("BUDGET", "150")) / per) // 1000 * 1000))))
PY
)
say "B: batch 64, $steps steps"
mkdir -p /tmp/B && cp /tmp/A/dataset.npz /tmp/B/
timeout $((budget + 90)) $j train-prior --workdir /tmp/B --export-to /tmp/B/solids-prior \
  --config.train.num_steps=$steps --config.train.batch_size=64 $few >>"$log" 2>&1
cat /tmp/B/train_summary.json >>"$log"
tar -C /tmp/B -czf "$out/priorB.tgz" solids-prior
for g in 3 5; do
  timeout 120 $j bench prior --prior /tmp/B/solids-prior --guidance-scale $g \
    --out "$out/benchB_g$g.json" --grid-out "$out/gridB_g$g.png" >>"$log" 2>&1
done
say "done"
tail -5 "$log"
