"""`Shape`: the one intermediate of the 3D metrics, built from a mesh, a field or an exact solid.

A shape is a scalar grid `values` on the lattice `jax3d.export.mesh.grid_points(bound, R)`,
positive inside, whose trilinear zero level is the surface, plus surface colour samples:

  - a mesh (`shape_from_mesh`): axis-parallel parity ray casts through the lattice lines (no
    rtree/embree needed; the inside sign is the majority of the three axes); the value is the
    sign times the distance to the nearest surface crossing along the three axes, which is
    linear in the true signed distance near a smooth surface, so trilinear interpolation puts
    the surface where the mesh is. The shape keeps the mesh for exact silhouettes;
  - a field (`shape_from_field`): density - level, with colours at the level's grid crossings;
  - the exact SDF of a solid (`shape_from_sdf`), optionally scaled, rotated about z, coloured.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import trimesh

from jax3d.errors import UserError
from jax3d.export import mesh as mesh_lib
from jax3d.solids import colour as colour_lib
from jax3d.solids import scenes

# Lattice points per axis of shapes by default (spacing 2/95 ~ 0.021 for bound 1).
DEFAULT_RESOLUTION = 96
# Values are kept in units of the grid spacing and truncated here (mesh and SDF shapes).
_TRUNCATION = 3.0


@dataclasses.dataclass(frozen=True, eq=False)
class Shape:
  """A solid on a lattice, and colour samples of its surface.

  values: (R, R, R) float32 at lattice points linspace(-bound, bound, R) indexed (x, y, z);
    positive inside; the surface is the zero level of its trilinear interpolation.
  colours: (N, 3) RGB in [0, 1] of surface samples; weights: (N,) their areas (any scale).
  triangles: (F, 3, 3) the mesh a shape was built from, if any: its silhouettes are then
    rasterized exactly instead of cast through the lattice.
  """
  values: np.ndarray
  bound: float
  colours: np.ndarray
  weights: np.ndarray
  triangles: np.ndarray | None = None

  def __post_init__(self):
    r = self.values.shape[0]
    if self.values.shape != (r, r, r) or r < 2:
      raise ValueError(f"Shape values must be (R, R, R) with R >= 2, got {self.values.shape}")
    if self.colours.shape != (self.weights.shape[0], 3):
      raise ValueError(f"colours {self.colours.shape} and weights {self.weights.shape}")

  @property
  def resolution(self) -> int:
    return int(self.values.shape[0])

  @property
  def spacing(self) -> float:
    return 2.0 * self.bound / (self.resolution - 1)

  @property
  def occupancy(self) -> np.ndarray:
    """(R, R, R) bool: which lattice points are inside."""
    return self.values > 0

  @property
  def surface_colour(self) -> np.ndarray | None:
    """Area-weighted mean surface colour (3,), or None without colour samples."""
    total = float(self.weights.sum())
    if total <= 0:
      return None
    return (self.colours * self.weights[:, None]).sum(0) / total

  @property
  def hue_deg(self) -> float | None:
    """Hue (degrees) of the mean surface colour; None when it is grey or unknown."""
    c = self.surface_colour
    return None if c is None else colour_lib.hue_of(c)


def lattice_points(bound: float, resolution: int, stride: int = 1) -> np.ndarray:
  """(P, 3) float32 lattice points (every `stride`-th per axis), in the order of `values`."""
  s = stride
  return mesh_lib.grid_points(bound, resolution)[::s, ::s, ::s].reshape(-1, 3)


def _ticks(bound: float, resolution: int) -> np.ndarray:
  """The lattice coordinates along one axis in float64 (crossings need more than float32)."""
  return np.linspace(-bound, bound, resolution)


def rot_z(deg) -> jax.Array:
  """(3, 3) rotation by `deg` degrees about z."""
  a = jnp.deg2rad(deg)
  c, s = jnp.cos(a), jnp.sin(a)
  z, o = jnp.zeros_like(a), jnp.ones_like(a)
  return jnp.stack([jnp.stack([c, -s, z]), jnp.stack([s, c, z]), jnp.stack([z, z, o])])


@jax.jit
def _sdf_values(solid: jax.Array, scale, rotation_deg, points, spacing) -> jax.Array:
  local = points @ rot_z(rotation_deg)  # R^T x: the solid is rotated by +rotation_deg.
  d = scale * scenes.sdf(solid, local / scale)
  return jnp.clip(-d / spacing, -_TRUNCATION, _TRUNCATION)


def shape_from_sdf(solid: str, scale: float = 1.0, colour: str | None = None,
                   rotation_deg: float = 0.0, resolution: int = DEFAULT_RESOLUTION,
                   bound: float = 1.0) -> Shape:
  """The exact solid (scaled by `scale`, rotated by `rotation_deg` about z) as a Shape."""
  if colour is not None and colour not in scenes.COLOURS:
    raise UserError(f"unknown colour {colour!r}; pick one of {', '.join(scenes.COLOURS)}")
  r = int(resolution)
  values = _sdf_values(jnp.int32(scenes.index_of(solid)), jnp.float32(scale),
                       jnp.float32(rotation_deg), jnp.asarray(lattice_points(bound, r)),
                       jnp.float32(2 * bound / (r - 1)))
  values = np.asarray(values).reshape(r, r, r)
  if colour is None:
    colours, weights = np.zeros((0, 3), np.float32), np.zeros((0,), np.float32)
  else:
    colours, weights = scenes.albedo(colour)[None], np.ones((1,), np.float32)
  return Shape(values=values, bound=float(bound), colours=colours, weights=weights)


def crossings(values: np.ndarray, bound: float) -> np.ndarray:
  """Points (N, 3) where the values change sign along lattice edges (linear interpolation)."""
  r = values.shape[0]
  axis = _ticks(bound, r)
  h = axis[1] - axis[0]
  out = []
  for a in range(3):
    lo = np.take(values, np.arange(r - 1), axis=a)
    hi = np.take(values, np.arange(1, r), axis=a)
    idx = np.nonzero((lo > 0) != (hi > 0))
    va, vb = lo[idx], hi[idx]
    frac = va / (va - vb)
    pts = np.stack([axis[i] for i in idx], -1)
    pts[:, a] += frac * h
    out.append(pts)
  return np.concatenate(out).astype(np.float32)


def shape_from_field(density_fn: Callable, color_fn: Callable, level: float | None = None,
                     bound: float = 1.0, resolution: int = DEFAULT_RESOLUTION,
                     step_size: float | None = None) -> Shape:
  """A field's solid {density > level} as a Shape, coloured by `color_fn` on its surface.

  density_fn: points (N, 3) -> (N,); color_fn: points (N, 3) -> (N, 3) in [0, 1] (plain
  callables on jnp arrays, evaluated in jitted chunks). `level=None` picks the iso-level as
  the mesh exporter does (`jax3d.export.mesh.choose_level`, optionally with `step_size`).
  """
  sigma = mesh_lib.sample_density(density_fn, bound, resolution)
  level, _ = mesh_lib.choose_level(sigma, bound, step_size, level)
  values = (sigma - np.float32(level)).astype(np.float32)
  points = crossings(values, bound)
  colours = np.clip(np.nan_to_num(mesh_lib.evaluate_points(color_fn, points)), 0.0, 1.0)
  return Shape(values=values, bound=float(bound), colours=colours.astype(np.float32),
               weights=np.ones((points.shape[0],), np.float32))


def grid_hits(tri: np.ndarray, start: float, step: float, n: int, tol: float = 0.0):
  """Points (start + i * step, start + j * step), 0 <= i, j < n, inside 2D triangles (F, 3, 2).

  Returns (face, i, j, b) with b (M, 3) the barycentric coordinates of each hit; a point
  counts as inside when every coordinate is >= -tol. Degenerate triangles hit nothing.
  """
  e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
  det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
  lo = np.clip(np.ceil((tri.min(1) - start) / step), 0, n).astype(np.int64)
  hi = np.clip(np.floor((tri.max(1) - start) / step), -1, n - 1).astype(np.int64)
  span = np.maximum(hi - lo + 1, 0)
  counts = np.where(np.abs(det) > 1e-18, span[:, 0] * span[:, 1], 0)
  face = np.repeat(np.arange(len(counts)), counts)
  k = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
  nj = span[face, 1]
  i, j = lo[face, 0] + k // nj, lo[face, 1] + k % nj
  q = start + step * np.stack([i, j], -1) - tri[face, 0]
  b1 = (q[:, 0] * e2[face, 1] - q[:, 1] * e2[face, 0]) / det[face]
  b2 = (e1[face, 0] * q[:, 1] - e1[face, 1] * q[:, 0]) / det[face]
  b = np.stack([1.0 - b1 - b2, b1, b2], -1)
  hit = np.all(b >= -tol, axis=-1)
  return face[hit], i[hit], j[hit], b[hit]


def _axis_crossings(triangles: np.ndarray, axis: int, coords: np.ndarray,
                    offset: tuple[float, float]):
  """Intersections of lattice lines parallel to `axis` with triangles (F, 3, 3), float64.

  The lines sit at (coords[i] + offset[0], coords[j] + offset[1]) in the two other axes (in
  cyclic order), slightly off the lattice so that they miss the vertices and edges of meshes
  extracted on the same lattice. Returns (i, j, t): line indices and the coordinate along
  `axis` of each crossing.
  """
  u_ax, v_ax = (axis + 1) % 3, (axis + 2) % 3
  tri = triangles[..., (u_ax, v_ax)] - np.asarray(offset)  # lines shifted onto the lattice
  face, i, j, b = grid_hits(tri, coords[0], coords[1] - coords[0], coords.shape[0])
  t = np.einsum("mk,mk->m", b, triangles[face, :, axis])
  return i, j, t


def _voxelize(triangles: np.ndarray, bound: float, resolution: int) -> np.ndarray:
  """Signed values (R, R, R): majority-of-three-axes parity sign times the distance (in grid
  spacings, truncated) to the nearest crossing along the lattice lines through each point."""
  r = resolution
  coords = _ticks(bound, r)
  h = coords[1] - coords[0]
  # Offsets far below the grid spacing but far above float64 noise; distinct per axis.
  offsets = ((0.0012345 * h, 0.0007071 * h), (0.0009173 * h, 0.0013579 * h),
             (0.0006180 * h, 0.0011414 * h))
  votes = np.zeros((r, r, r), np.int8)
  dist = np.full((r, r, r), _TRUNCATION)
  span = int(math.ceil(_TRUNCATION))
  for axis in range(3):
    i, j, t = _axis_crossings(triangles, axis, coords, offsets[axis])
    line = i * r + j
    # Parity: crossings strictly below each lattice point along the line.
    above = np.clip(np.floor((t - coords[0]) / h).astype(np.int64) + 1, 0, r)
    counts = np.bincount(line * (r + 1) + above, minlength=r * r * (r + 1))
    below = np.cumsum(counts.reshape(r, r, r + 1), axis=-1)[..., :r]
    # Distance to the nearest crossing, for the lattice points within `span` of one.
    d_axis = np.full(r * r * r, _TRUNCATION)
    for o in range(-span, span):
      k = above + o
      ok = (k >= 0) & (k < r)
      np.minimum.at(d_axis, line[ok] * r + k[ok], np.abs(coords[k[ok]] - t[ok]) / h)
    order = ((axis + 1) % 3, (axis + 2) % 3, axis)  # array dims of `below` in world axes
    perm = np.argsort(order)
    votes += np.transpose(below % 2, perm).astype(np.int8)
    dist = np.minimum(dist, np.transpose(d_axis.reshape(r, r, r), perm))
  return np.where(votes >= 2, dist, -dist).astype(np.float32)


def _as_trimesh(mesh_or_path) -> trimesh.Trimesh:
  if isinstance(mesh_or_path, trimesh.Trimesh):
    return mesh_or_path
  if isinstance(mesh_or_path, (str, os.PathLike)):
    path = os.fspath(mesh_or_path)
    if not os.path.isfile(path):
      raise UserError(f"mesh file {path!r} does not exist")
    try:
      mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"cannot read mesh file {path!r}: {e}") from e
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
      raise UserError(f"mesh file {path!r} holds no triangles")
    return mesh
  if all(hasattr(mesh_or_path, a) for a in ("vertices", "faces", "colors")):  # MeshData
    rgba = np.concatenate([np.rint(np.clip(mesh_or_path.colors, 0, 1) * 255),
                           np.full((len(mesh_or_path.vertices), 1), 255)], -1)
    return trimesh.Trimesh(vertices=mesh_or_path.vertices, faces=mesh_or_path.faces,
                           vertex_colors=rgba.astype(np.uint8), process=False)
  raise TypeError(f"expected a trimesh.Trimesh, a mesh path or MeshData, got "
                  f"{type(mesh_or_path).__name__}")


def shape_from_mesh(mesh_or_path, resolution: int = DEFAULT_RESOLUTION,
                    bound: float = 1.0) -> Shape:
  """A closed triangle mesh (world coordinates, z up) as a Shape; colours from its vertex
  colours (RGBA uint8), one sample per face weighted by area (no hue for plain meshes).

  `mesh_or_path` is a `trimesh.Trimesh`, a file `trimesh.load(path, force="mesh")` reads
  (e.g. the exporter's .glb/.obj), or a `jax3d.export.mesh.MeshData`.
  """
  mesh = _as_trimesh(mesh_or_path)
  vertices = np.asarray(mesh.vertices, np.float64)
  faces = np.asarray(mesh.faces, np.int64)
  triangles = vertices[faces]
  values = _voxelize(triangles, float(bound), int(resolution))
  area = 0.5 * np.linalg.norm(
      np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]), axis=-1)
  colours = np.zeros((0, 3), np.float32)
  weights = np.zeros((0,), np.float32)
  visual = mesh.visual
  if getattr(visual, "kind", None) == "texture":
    visual = visual.to_color()  # samples the texture at the vertices' UVs
  if getattr(visual, "kind", None) in ("vertex", "face"):
    if visual.kind == "vertex":
      vc = np.asarray(visual.vertex_colors)[:, :3].astype(np.float32) / 255.0
      colours = vc[faces].mean(1)
    else:
      colours = np.asarray(visual.face_colors)[:, :3].astype(np.float32) / 255.0
    weights = area.astype(np.float32)
  return Shape(values=values, bound=float(bound), colours=colours.astype(np.float32),
               weights=weights, triangles=triangles.astype(np.float32))
