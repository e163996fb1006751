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
t=${STAGE_TIMEOUT:-150}
source "$(dirname "$0")/bench_stages.sh"
stage bench_step_sds bench step --method sds
stage bench_step_sds_analytic bench step --method sds --config configs/dreamfusion.py:toy-analytic
stage bench_render_sd bench render --grid sd
stage bench_render_toy bench render --grid toy
