#!/usr/bin/env bash
# One device call of the Stable-Diffusion-scale step benchmarks (issue: SD-scale performance),
# on random-weight SD v1.5 priors (no downloads): DreamFusion-SD in float32 and bfloat16, SJC-SD,
# ProlificDreamer-SD (bfloat16, rematerialised, P = 1 and 4), then the mesh rasterizer.
# Each row reports step time, its split, compile time and the device allocator's peak memory.
#
#   launch/gpu_sd_bench.sh OUT          # e.g. docs/results/gpu-sd
#
# Every stage writes OUT/<stage>.json and OUT/<stage>.log as it finishes; a failed or timed-out
# stage does not stop the next. Timeouts: STAGE_TIMEOUT seconds each (default 170), so the
# five stages fit one 15-minute device session.
set -uo pipefail
out=${1:?usage: $0 OUT}
t=${STAGE_TIMEOUT:-170}
export JAX3D_PRIOR_CACHE=off
source "$(dirname "$0")/bench_stages.sh"
sd=(bench step --prior random:sd15 --repeats 5)
stage step_sds_sd15 "${sd[@]}" --config dreamfusion:sd
stage step_sds_sd15_bf16 "${sd[@]}" --config dreamfusion:sd --dtype bfloat16
stage step_vsd_sd15_bf16 "${sd[@]}" --config prolificdreamer:sd --dtype bfloat16 --sweep 1,4
stage step_sjc_sd15 "${sd[@]}" --config sjc:sd
stage raster bench render --raster
