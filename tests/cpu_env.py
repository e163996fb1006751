"""The environment of this suite's processes and subprocesses: forced CPU devices, compiled
for a short compile rather than fast code.

The suite compiles hundreds of small programs and runs each a few times, so XLA's CPU backend
spends more time generating machine code than that code later saves. Two flags trade run time
for compile time; XLA's HLO passes still run, so fusion and layout are those of a user's run,
and users' runs keep XLA's defaults:
- `--xla_backend_optimization_level=0`: LLVM at -O0. `tests/test_prior_training.py` alone took
  197 s instead of 243 s and 25 % less CPU on the 2-core CI machine.
- `--xla_cpu_use_fusion_emitters=false`: XLA's elemental IR emitter for fusions instead of its
  MLIR-based fusion emitters. The tiny VSD step of test_distributed compiles in 9–10 s instead
  of 13–15 s; `pytest -n 0 tests/test_sjc.py tests/test_dreamfusion.py` with a cold cache took
  56 CPU-s instead of 89.
"""

import os

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def xla_flags(devices: int) -> str:
  return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


def subprocess_env(devices: int, **extra: str) -> dict[str, str]:
  """This process's environment with `devices` CPU devices (and `extra` variables)."""
  return dict(os.environ, XLA_FLAGS=xla_flags(devices), JAX_PLATFORMS="cpu", **extra)
