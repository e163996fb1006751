"""The environment of this suite's processes and subprocesses: forced CPU devices, compiled
without LLVM's optimisations.

The suite compiles hundreds of small programs and runs each a few times, so XLA's CPU backend
spends more time optimising machine code than that code later saves: with LLVM at -O0
(`--xla_backend_optimization_level=0`; XLA's HLO passes still run, so fusion and layout are
those of a user's run) `tests/test_prior_training.py` alone took 197 s instead of 243 s and
25 % less CPU on the 2-core CI machine. Users' runs keep XLA's default level.
"""

import os

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
  return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


def subprocess_env(devices: int, **extra: str) -> dict[str, str]:
  """This process's environment with `devices` CPU devices (and `extra` variables)."""
  return dict(os.environ, XLA_FLAGS=xla_flags(devices), JAX_PLATFORMS="cpu", **extra)
