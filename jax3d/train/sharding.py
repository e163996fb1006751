"""Device meshes for particle populations: a `particles` axis and a `views` axis.

A population of P particles on D devices uses a (p, v) mesh with p = gcd(P, D) and v = D / p:
particle state (leading axis P) is split over `particles`, and each particle's training rays
(every pixel of its views) are split over `views`, so P = 1 still uses every device. Shared
state (prior weights, embeddings, the VSD LoRA) is replicated. The same code runs on one CPU,
forced host devices, a GPU or a TPU pod (after `jax.distributed.initialize()`). Training the
solids prior uses a one-axis `batch` mesh instead (data parallel).
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jax3d.errors import UserError

PARTICLES = "particles"
VIEWS = "views"
BATCH = "batch"


def make_mesh(num_particles: int, devices: list | None = None) -> Mesh:
  """The (gcd(P, D), D / gcd(P, D)) mesh over `devices` (default: all) for P particles."""
  devices = list(jax.devices() if devices is None else devices)
  if num_particles < 1:
    raise UserError(f"--particles must be >= 1, got {num_particles}")
  p = math.gcd(num_particles, len(devices))
  # Auto axes: XLA propagates the placements through the step; no mesh context is needed.
  return jax.make_mesh((p, len(devices) // p), (PARTICLES, VIEWS), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def data_mesh(devices: list | None = None) -> Mesh:
  """A one-axis mesh (`batch`) over `devices` (default: all, of every process), for data
  parallel training (the solids prior)."""
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (BATCH,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def _split_leading(x: jax.Array, mesh: Mesh, axis: str) -> jax.Array:
  """`x` with its leading axis split over the mesh axis `axis` (inside a step); a no-op when
  that axis has one device or the leading size does not divide evenly."""
  n = mesh.shape[axis]
  if n == 1 or x.shape[0] % n:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(axis)))


def split_batch(x: jax.Array, mesh: Mesh) -> jax.Array:
  """`x` (B, ...) with B split over the mesh's `batch` axis (`_split_leading`)."""
  return _split_leading(x, mesh, BATCH)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def particle_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(PARTICLES))


def state_shardings(state: Any, mesh: Mesh) -> Any:
  """The placement of every leaf of a `systems.base.State`: particle leaves split over
  `particles`, shared leaves and the step replicated."""
  return state.replace(
      particles=jax.tree.map(lambda _: particle_sharding(mesh), state.particles),
      shared=jax.tree.map(lambda _: replicated(mesh), state.shared),
      step=replicated(mesh))


def place(state: Any, mesh: Mesh) -> Any:
  """`state` put on the mesh as `state_shardings` says."""
  return jax.device_put(state, state_shardings(state, mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Every leaf of `tree` copied to every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def split_rays(x: jax.Array, mesh: Mesh) -> jax.Array:
  """`x` (R, ...) with its ray axis R split over the mesh's `views` axis (inside a step;
  under `vmap(..., spmd_axis_name=PARTICLES)` the particle axis is added). A no-op on a mesh
  with one device per particle, or when R does not divide evenly."""
  return _split_leading(x, mesh, VIEWS)


__all__ = ["PARTICLES", "VIEWS", "BATCH", "make_mesh", "data_mesh", "split_batch", "replicated",
           "particle_sharding", "state_shardings", "place", "replicate", "split_rays"]
