"""How much memory a device offers, and refusing a step that cannot fit (before any file is
written, rather than failing on the first step)."""

from __future__ import annotations


from jax3d.errors import UserError

GiB = 2**30


def _host_available_bytes() -> int | None:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def device_bytes(devices: list) -> int | None:
  """The memory one of `devices` may use: the allocator's limit on a GPU or TPU; on CPU the
  host's available memory shared by its CPU devices. None where it cannot be read."""
  device = devices[0]
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  (some backends raise instead of None)
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  if device.platform == "cpu":
    available = _host_available_bytes()
    cpus = sum(d.platform == "cpu" and d.process_index == device.process_index
               for d in devices)
    return None if available is None else available // max(cpus, 1)
  return None


def check_step_fits(need: int | None, devices: list, hint: str) -> None:
  """A UserError if a step needing `need` bytes per device (XLA's estimate) exceeds what a
  device offers; `hint` says which settings drive the size."""
  have = device_bytes(devices)
  if need is None or have is None or need <= have:
    return
  raise UserError(f"the training step needs about {_size(need)} per device (XLA's estimate) "
                  f"but a {devices[0].platform} device has {_size(have)}; {hint}")


def _size(n: int) -> str:
  return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 2**20:.0f} MiB"


def step_hint(config) -> str:
  """Which of a run config's settings set the step's size, with their values."""
  parts = []
  camera = getattr(config, "camera", None)
  if camera is not None:
    parts.append(f"camera.height/width ({camera.height}x{camera.width})")
  render = getattr(config, "render", None)
  if render is not None:
    parts.append(f"render.num_samples ({render.num_samples})")
  if hasattr(config, "views_per_step"):
    parts.append(f"views_per_step ({config.views_per_step})")
  parts.append(f"the number of particles ({config.num_particles})")
  return f"lower {', '.join(parts)}, or run on more devices"
