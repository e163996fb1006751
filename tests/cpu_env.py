"""The environment of this suite's processes and subprocesses: forced CPU devices."""

import os


def xla_flags(devices: int) -> str:
  return f"--xla_force_host_platform_device_count={devices}"


def subprocess_env(devices: int, **extra: str) -> dict[str, str]:
  """This process's environment with `devices` CPU devices (and `extra` variables)."""
  return dict(os.environ, XLA_FLAGS=xla_flags(devices), JAX_PLATFORMS="cpu", **extra)
