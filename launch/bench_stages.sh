# Sourced by the device benchmark scripts (launch/gpu_bench.sh, launch/gpu_sd_bench.sh) after
# they set `out` (the results folder) and `t` (seconds per stage): prepares the folder and
# defines `stage NAME ARGS...`, which runs `jax3d ARGS... --out OUT/NAME.json` under the
# timeout, logs to OUT/NAME.log and appends its exit code and seconds to OUT/device.txt.
py=${PYTHON:-python3}
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
