"""Shared helpers of the tests/test_solids*.py files (no tests here): inside tests written from
the spec, marching-cubes meshes of the solids and a small metrics configuration."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import mcubes
import numpy as np
import trimesh

from jax3d.solids import metrics
from jax3d.solids import scenes
from jax3d.solids import shapes

# Small but honest: 48^3 lattices, 48x48 held-out views, few rotations and scales.
CFG = metrics.MetricsConfig(resolution=48, image_size=48, rotation_step_deg=10.0,
                            refine_rounds=5, scales=(0.8, 0.9, 1.0, 1.1, 1.2),
                            classify_resolution=24)
SOLID_COLOUR = {"sphere": "red", "cube": "orange", "cylinder": "green", "cone": "blue",
                "torus": "purple"}
_sdf = jax.jit(scenes.sdf, static_argnums=0)


def inside_reference(solid: str, p: np.ndarray) -> np.ndarray:
  """Inside tests written from the spec, independent of scenes.sdf."""
  x, y, z = p[..., 0], p[..., 1], p[..., 2]
  rho = np.hypot(x, y)
  if solid == "sphere":
    return np.linalg.norm(p, axis=-1) < 0.5
  if solid == "cube":
    return np.abs(p).max(-1) < 0.4
  if solid == "cylinder":
    return (rho < 0.4) & (np.abs(z) < 0.45)
  if solid == "cone":
    return (np.abs(z) < 0.45) & (rho < 0.5 * (0.45 - z) / 0.9)
  if solid == "torus":
    return (rho - 0.35)**2 + z**2 < 0.15**2
  raise ValueError(solid)


def sdf_mesh(solid: str, colour: str | None = None, resolution: int = 96,
             bound: float = 0.75) -> trimesh.Trimesh:
  """Marching-cubes mesh of a solid's SDF with the colour's albedo as vertex colours."""
  axis = np.linspace(-bound, bound, resolution)
  grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
  d = np.asarray(_sdf(solid, jnp.asarray(grid, jnp.float32)))
  verts, faces = mcubes.marching_cubes(-d, 0.0)
  verts = -bound + verts * (axis[1] - axis[0])
  rgb = scenes.albedo(colour) if colour else np.full(3, 0.6)
  rgba = np.concatenate([np.rint(rgb * 255), [255]]).astype(np.uint8)
  return trimesh.Trimesh(verts, faces, vertex_colors=np.tile(rgba, (len(verts), 1)),
                         process=False)


def rotated(mesh: trimesh.Trimesh, deg: float) -> trimesh.Trimesh:
  out = mesh.copy()
  out.apply_transform(trimesh.transformations.rotation_matrix(np.deg2rad(deg), [0, 0, 1]))
  return out


@functools.lru_cache(maxsize=None)
def solid_meshes() -> dict[str, trimesh.Trimesh]:
  """{solid: its marching-cubes mesh in its SOLID_COLOUR}, built once per test session."""
  return {s: sdf_mesh(s, SOLID_COLOUR[s]) for s in scenes.SOLIDS}


@functools.lru_cache(maxsize=None)
def mesh_shapes() -> dict:
  """{solid: Shape of its mesh on CFG's lattice}, built once per test session."""
  return {s: shapes.shape_from_mesh(m, resolution=CFG.resolution)
          for s, m in solid_meshes().items()}
