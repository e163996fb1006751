"""Device meshes for particle populations: particles split over a `particles` mesh axis.

Per-particle state (leading axis P) is sharded `P('particles')`; shared state (prior weights,
the VSD LoRA) is replicated `P()`. On one CPU, 4 forced host devices, one GPU or a TPU pod the
code is the same; multi-host runs call `jax.distributed.initialize()` first (see launch/).
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jax3d.errors import UserError

AXIS = "particles"


def particle_mesh(num_particles: int, devices: list | None = None) -> Mesh:
  """A 1-D mesh over as many devices as evenly divide `num_particles`'s work.

  All devices are used when P is a multiple of their count; with fewer particles than devices
  the mesh takes P devices. Otherwise it is a user error: say how to fix it.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if num_particles < 1:
    raise UserError(f"--particles must be >= 1, got {num_particles}")
  if num_particles < n:
    n = num_particles
  elif num_particles % n:
    raise UserError(f"{num_particles} particles cannot be split evenly over {n} devices; use "
                    f"a multiple of {n} (or fewer particles than devices)")
  # Auto axes: XLA propagates the particle sharding through the vmapped step (no collectives
  # are needed: particles are independent). Explicit axes would require a mesh context.
  return jax.make_mesh((n,), (AXIS,), devices=devices[:n],
                       axis_types=(jax.sharding.AxisType.Auto,))


def particle_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_particles(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf's leading (particle) axis across the mesh; scalars are replicated."""
  def put(x):
    if getattr(x, "ndim", 0) == 0:
      return jax.device_put(x, replicated(mesh))
    return jax.device_put(x, particle_sharding(mesh))
  return jax.tree.map(put, tree)


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
  """The sharding `shard_particles` would give each leaf (for jit out_shardings)."""
  return jax.tree.map(
      lambda x: replicated(mesh) if getattr(x, "ndim", 0) == 0 else particle_sharding(mesh),
      tree)
