"""Quality metrics of the solids benchmark, for meshes, fields and 2D images.

Everything 3D goes through one intermediate, `Shape`: a scalar grid `values` on the lattice
linspace(-bound, bound, R)^3 (the export grid of `jax3d.export.mesh`), positive inside, whose
trilinear zero level is the surface, plus surface colour samples. It is built from

  - a mesh (`shape_from_mesh`): axis-parallel parity ray casts through the lattice lines (no
    rtree/embree needed; the inside sign is the majority of the three axes); the value is the
    sign times the distance to the nearest surface crossing along the three axes, which is
    linear in the true signed distance near a smooth surface, so trilinear interpolation puts
    the surface where the mesh is. The shape keeps the mesh for exact silhouettes;
  - a field (`shape_from_field`): density - level, with colours at the level's grid crossings;
  - the exact SDF of a solid (`shape_from_sdf`), optionally scaled, rotated about z, coloured.

Metrics (`evaluate`) against the solid a prompt names:
  - silhouette IoU: held-out views (8 azimuths at elevation 20° plus straight down, distance
    2, fov 40°), mean per-view IoU. A prediction with a mesh is rasterized exactly and
    compared with sphere-traced ground truth (exact, as `render.render`'s mask); a
    lattice-only shape (a field) is cast through its lattice (`silhouettes`), and so is its
    ground truth (`shape_from_sdf` on the same lattice), because casting rounds edges sharper
    than the lattice by about a lattice step (at R = 128 cast and traced silhouettes of every
    solid agree to IoU > 0.97) and the rounding cancels that way;
  - occupancy IoU: over the lattice points, against the exact SDF;
  - shape accuracy: the solid whose SDF, scaled by s in [0.8, 1.2], fits best by occupancy IoU;
  - colour accuracy: the palette colour nearest (circularly) to the hue of the area-weighted
    mean surface colour.
All are the best over rotations of the prediction about z. Rotating the prediction by phi is
the same as rotating the ground truth by -phi (with the held-out cameras rotating along, for
silhouettes), and the ground truth is what gets rotated: it is exact (no resampling), and the
search runs only over the solid's own symmetry (a cube: 90°; the other four solids are
rotationally symmetric about z and need no search). The search is a grid with step
`rotation_step_deg` refined by bisection around the best angle.

`diversity` scores a set of shapes (e.g. the particles of one prompt): the circular spread of
their hues and their mean pairwise silhouette and occupancy IoU after aligning each pair about z.

2D checks for the prior (`image_foreground`, `image_colour`, `image_shape`) classify a rendered
or generated image by its non-white pixels: the median hue of the saturated ones, and the best
mask IoU against a bank of sphere-traced silhouettes of every solid over the shared camera
distribution.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import trimesh

from jax3d import cameras
from jax3d.errors import UserError
from jax3d.export import mesh as mesh_lib
from jax3d.solids import scenes

# Held-out views of the benchmark.
EVAL_AZIMUTHS_DEG = tuple(float(a) for a in range(0, 360, 45))
EVAL_ELEVATION_DEG = 20.0
EVAL_DISTANCE = 2.0
EVAL_FOV_DEG = 40.0
# Rotational symmetry period about z of the solids that have a finite one; the others are
# symmetric under every rotation about z.
SYMMETRY_PERIOD_DEG = {"cube": 90.0}
# Below this HSV saturation a mean colour is grey and has no hue.
MIN_HUE_SATURATION = 0.02
# The image mask bank: the shared camera distribution (cameras.CameraConfig) on a grid.
BANK_ELEVATIONS_DEG = tuple(float(e) for e in np.arange(-10.0, 45.0 + 1e-6, 5.0))
BANK_DISTANCES = (1.9, 2.0, 2.1)
BANK_AZIMUTH_STEP_DEG = 7.5
# Lattice points per axis of shapes by default (spacing 2/95 ~ 0.021 for bound 1).
DEFAULT_RESOLUTION = 96
# Values are kept in units of the grid spacing and truncated here (mesh and SDF shapes).
_TRUNCATION = 3.0


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
  """How 3D metrics are computed; frozen, so it can key caches."""
  resolution: int = DEFAULT_RESOLUTION  # lattice points per axis, for callers building shapes
  bound: float = 1.0  # the lattice spans [-bound, bound]^3
  image_size: int = 64  # held-out silhouettes are image_size x image_size
  ray_samples: int = 0  # samples per ray when casting silhouettes; 0 -> 4 * resolution
  rotation_step_deg: float = 5.0
  refine_rounds: int = 5  # bisection rounds around the best grid angle / scale
  scales: tuple[float, ...] = (0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2)
  classify_resolution: int = 48  # shape classification subsamples the lattice to this

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict | dict) -> "MetricsConfig":
    d = dict(cfg)
    if "scales" in d:
      d["scales"] = tuple(float(s) for s in d["scales"])
    return cls(**d)

  def samples_for(self, resolution: int) -> int:
    return self.ray_samples or 4 * resolution


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
    if c is None:
      return None
    h, s, _ = rgb_to_hsv(c)
    return float(h) if s >= MIN_HUE_SATURATION else None


# ----------------------------------------------------------------------------------------------
# Colour helpers.


def rgb_to_hsv(rgb) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """HSV of RGB (..., 3) in [0, 1]: hue in degrees [0, 360), saturation, value."""
  rgb = np.asarray(rgb, np.float64)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  mx, mn = rgb.max(-1), rgb.min(-1)
  delta = mx - mn
  safe = np.where(delta > 0, delta, 1.0)
  hue = np.where(mx == r, ((g - b) / safe) % 6.0,
                 np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  hue = np.where(delta > 0, 60.0 * hue, 0.0) % 360.0
  sat = np.where(mx > 0, delta / np.where(mx > 0, mx, 1.0), 0.0)
  return hue, sat, mx


def hue_distance(a, b) -> np.ndarray:
  """Circular distance between hues in degrees, in [0, 180]."""
  d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)) % 360.0
  return np.minimum(d, 360.0 - d)


def nearest_colour(hue_deg: float) -> str:
  """The palette colour whose hue is circularly nearest."""
  return min(scenes.COLOURS, key=lambda c: float(hue_distance(hue_deg, scenes.HUES_DEG[c])))


def hue_spread(hues_deg: Sequence[float]) -> float:
  """1 - |mean unit hue vector|: 0 when all hues agree, 1 for hues spread evenly."""
  a = np.deg2rad(np.asarray(hues_deg, np.float64))
  return float(1.0 - np.hypot(np.cos(a).mean(), np.sin(a).mean()))


# ----------------------------------------------------------------------------------------------
# Building shapes.


def lattice(bound: float, resolution: int) -> np.ndarray:
  """The lattice coordinates along one axis, linspace(-bound, bound, R), float64."""
  return np.linspace(-bound, bound, resolution)


def _index(solid: str) -> jax.Array:
  if solid not in scenes.SOLIDS:
    raise UserError(f"unknown solid {solid!r}; pick one of {', '.join(scenes.SOLIDS)}")
  return jnp.int32(scenes.SOLIDS.index(solid))


def _rot_z(deg) -> jax.Array:
  a = jnp.deg2rad(deg)
  c, s = jnp.cos(a), jnp.sin(a)
  z, o = jnp.zeros_like(a), jnp.ones_like(a)
  return jnp.stack([jnp.stack([c, -s, z]), jnp.stack([s, c, z]), jnp.stack([z, z, o])])


def _solid_sdf(index: jax.Array, x: jax.Array) -> jax.Array:
  """scenes.sdf of the solid SOLIDS[index] (traced) evaluating that solid's SDF only, so that
  one compilation serves all solids."""
  branches = [functools.partial(scenes.sdf, name) for name in scenes.SOLIDS]
  return jax.lax.switch(index, branches, x)


def _lattice_points(bound: float, resolution: int, stride: int = 1) -> np.ndarray:
  """(P, 3) float32 lattice points (every `stride`-th per axis), x-major like `values`."""
  axis = lattice(bound, resolution)[::stride]
  return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3).astype(
      np.float32)


@jax.jit
def _sdf_values(solid: jax.Array, scale, rotation_deg, points, spacing) -> jax.Array:
  local = points @ _rot_z(rotation_deg)  # R^T x: the solid is rotated by +rotation_deg.
  d = scale * _solid_sdf(solid, local / scale)
  return jnp.clip(-d / spacing, -_TRUNCATION, _TRUNCATION)


def shape_from_sdf(solid: str, scale: float = 1.0, colour: str | None = None,
                   rotation_deg: float = 0.0, resolution: int = DEFAULT_RESOLUTION,
                   bound: float = 1.0) -> Shape:
  """The exact solid (scaled by `scale`, rotated by `rotation_deg` about z) as a Shape."""
  if colour is not None and colour not in scenes.COLOURS:
    raise UserError(f"unknown colour {colour!r}; pick one of {', '.join(scenes.COLOURS)}")
  r = int(resolution)
  values = _sdf_values(_index(solid), jnp.float32(scale), jnp.float32(rotation_deg),
                       jnp.asarray(_lattice_points(bound, r)), jnp.float32(2 * bound / (r - 1)))
  values = np.asarray(values).reshape(r, r, r)
  if colour is None:
    colours, weights = np.zeros((0, 3), np.float32), np.zeros((0,), np.float32)
  else:
    colours, weights = scenes.albedo(colour)[None], np.ones((1,), np.float32)
  return Shape(values=values, bound=float(bound), colours=colours, weights=weights)


def _crossings(values: np.ndarray, bound: float) -> np.ndarray:
  """Points (N, 3) where the values change sign along lattice edges (linear interpolation)."""
  r = values.shape[0]
  axis = lattice(bound, r)
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
  points = _crossings(values, bound)
  colours = np.clip(np.nan_to_num(mesh_lib.evaluate_points(color_fn, points)), 0.0, 1.0)
  return Shape(values=values, bound=float(bound), colours=colours.astype(np.float32),
               weights=np.ones((points.shape[0],), np.float32))


def _grid_hits(tri: np.ndarray, start: float, step: float, n: int, tol: float = 0.0):
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
  face, i, j, b = _grid_hits(tri, coords[0], coords[1] - coords[0], coords.shape[0])
  t = np.einsum("mk,mk->m", b, triangles[face, :, axis])
  return i, j, t


def _voxelize(triangles: np.ndarray, bound: float, resolution: int) -> np.ndarray:
  """Signed values (R, R, R): majority-of-three-axes parity sign times the distance (in grid
  spacings, truncated) to the nearest crossing along the lattice lines through each point."""
  r = resolution
  coords = lattice(bound, r)
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


# ----------------------------------------------------------------------------------------------
# Silhouettes.


def heldout_cameras(image_size: int = 64) -> cameras.Camera:
  """The 9 held-out views: 8 azimuths at elevation 20°, then straight down; distance 2."""
  az = np.array(EVAL_AZIMUTHS_DEG + (0.0,), np.float32)
  el = np.array([EVAL_ELEVATION_DEG] * len(EVAL_AZIMUTHS_DEG) + [90.0], np.float32)
  return cameras.from_spherical(az, el, EVAL_DISTANCE, EVAL_FOV_DEG, image_size, image_size)


def _trilinear(values: jax.Array, x: jax.Array, bound: float) -> jax.Array:
  """Trilinear interpolation of lattice values at points x (..., 3); -1 outside the box."""
  r = values.shape[0]
  u = (x + bound) * ((r - 1) / (2.0 * bound))
  i0 = jnp.clip(jnp.floor(u), 0, r - 2)
  f = jnp.clip(u - i0, 0.0, 1.0)
  i0 = i0.astype(jnp.int32)
  flat = values.reshape(-1)
  out = jnp.zeros(x.shape[:-1], values.dtype)
  for dx, dy, dz in itertools.product((0, 1), repeat=3):
    idx = ((i0[..., 0] + dx) * r + i0[..., 1] + dy) * r + i0[..., 2] + dz
    w = ((f[..., 0] if dx else 1 - f[..., 0]) * (f[..., 1] if dy else 1 - f[..., 1]) *
         (f[..., 2] if dz else 1 - f[..., 2]))
    out = out + w * flat[idx]
  inside = jnp.all(jnp.abs(x) <= bound, axis=-1)
  return jnp.where(inside, out, -1.0)


@functools.partial(jax.jit, static_argnames=("bound", "height", "width", "num_samples"))
def _cast(values, c2w, fov_y, bound: float, height: int, width: int, num_samples: int):
  """Lattice silhouettes (V, H, W): rays sampled uniformly inside the box [-bound, bound]^3."""
  def one(args):
    cam = cameras.Camera(c2w=args[0], fov_y=args[1], height=height, width=width)
    o, d = cameras.rays(cam)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    inv = 1.0 / jnp.where(jnp.abs(d) < 1e-9, 1e-9, d)
    t1, t2 = (-bound - o) * inv, (bound - o) * inv
    t_near = jnp.maximum(jnp.max(jnp.minimum(t1, t2), -1), 0.0)
    t_far = jnp.min(jnp.maximum(t1, t2), -1)
    frac = (jnp.arange(num_samples, dtype=jnp.float32) + 0.5) / num_samples
    t = t_near[:, None] + frac * (t_far - t_near)[:, None]
    v = _trilinear(values, o[:, None] + t[..., None] * d[:, None], bound)
    hit = (t_far > t_near) & (jnp.max(v, -1) > 0)
    return hit.reshape(height, width)
  return jax.lax.map(one, (c2w, fov_y))


def _raster(triangles: np.ndarray, c2w: np.ndarray, fov_y: float, height: int,
            width: int) -> np.ndarray:
  """(H, W) bool: pixel centres covered by the projection of any triangle (F, 3, 3)."""
  c2w = np.asarray(c2w, np.float64)
  local = (triangles.reshape(-1, 3).astype(np.float64) - c2w[:3, 3]) @ c2w[:3, :3]
  depth = -local[:, 2]
  focal = 0.5 * height / math.tan(0.5 * float(fov_y))
  # Pixel coordinates as in cameras.project, swapped to (row, column) for _grid_hits.
  safe = np.where(depth > 1e-6, depth, 1.0)
  pix = np.stack([-focal * local[:, 1] / safe + 0.5 * height,
                  focal * local[:, 0] / safe + 0.5 * width], -1).reshape(-1, 3, 2)
  in_front = (depth > 1e-6).reshape(-1, 3).all(-1)
  size = max(height, width)
  _, i, j, _ = _grid_hits(pix[in_front], 0.5, 1.0, size, tol=1e-9)
  mask = np.zeros((size, size), bool)
  mask[i, j] = True
  return mask[:height, :width]


def silhouettes(shape: Shape, camera: cameras.Camera, num_samples: int | None = None
                ) -> np.ndarray:
  """Silhouettes (V, H, W) bool of a shape seen by a batch of V cameras.

  A shape built from a mesh is rasterized exactly (pixel centres inside a projected triangle;
  the mesh must lie in front of the cameras). Otherwise rays are cast through the lattice: a
  ray hits when the trilinear values at any of its `num_samples` (default 4 R) samples inside
  the box are positive. Casting rounds edges sharper than the lattice by about a lattice step.
  """
  chex.assert_rank(camera.c2w, 3)
  if shape.triangles is not None:
    c2w, fov = np.asarray(camera.c2w), np.asarray(camera.fov_y)
    return np.stack([_raster(shape.triangles, c2w[v], fov[v], camera.height, camera.width)
                     for v in range(c2w.shape[0])])
  n = num_samples or 4 * shape.resolution
  return np.asarray(_cast(jnp.asarray(shape.values), camera.c2w, camera.fov_y,
                          shape.bound, camera.height, camera.width, int(n)))


def _rotate_rig(camera: cameras.Camera, deg: float) -> cameras.Camera:
  """The cameras rotated by `deg` about z: they see a shape rotated by -deg as the originals
  see the shape."""
  rot = np.eye(4, dtype=np.float32)
  rot[:3, :3] = np.asarray(_rot_z(jnp.float32(deg)))
  return cameras.Camera(c2w=jnp.asarray(rot) @ camera.c2w, fov_y=camera.fov_y,
                        height=camera.height, width=camera.width)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU over the last two axes of boolean masks (1 where both are empty)."""
  inter = np.logical_and(a, b).sum((-2, -1))
  union = np.logical_or(a, b).sum((-2, -1))
  return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


@functools.partial(jax.jit, static_argnames=("height", "width", "num_steps"))
def _traced_masks(solid: jax.Array, c2w, fov_y, height: int, width: int, num_steps: int = 96):
  """Sphere-traced silhouettes (N, H, W) of solid SOLIDS[solid], as `render.render`'s mask."""
  def one(args):
    cam = cameras.Camera(c2w=args[0], fov_y=args[1], height=height, width=width)
    o, d = cameras.rays(cam)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    b = jnp.sum(o * d, -1)
    c = jnp.sum(o * o, -1) - (scenes.BOUNDING_RADIUS + 0.05)**2
    disc = b * b - c
    root = jnp.sqrt(jnp.maximum(disc, 0.0))
    t0, t_far = jnp.maximum(-b - root, 0.0), -b + root

    def step(t, _):
      return t + jnp.maximum(_solid_sdf(solid, o + t[:, None] * d), 0.0), None
    t, _ = jax.lax.scan(step, t0, None, length=num_steps)
    hit = (disc > 0) & (_solid_sdf(solid, o + t[:, None] * d) < 1e-3) & (t < t_far)
    return hit.reshape(height, width)
  return jax.lax.map(one, (c2w, fov_y))


@functools.lru_cache(maxsize=512)
def reference_silhouettes(solid: str, rotation_deg: float = 0.0, image_size: int = 64,
                          lattice_spec: tuple[int, float, int] | None = None) -> np.ndarray:
  """Silhouettes (9, S, S) of the solid rotated by `rotation_deg` about z from the held-out
  views: sphere-traced (exact), or with `lattice_spec` = (resolution, bound, ray samples) cast
  through that lattice like a lattice-only prediction."""
  rig = heldout_cameras(image_size)
  if lattice_spec is not None:
    resolution, bound, samples = lattice_spec
    shape = shape_from_sdf(solid, rotation_deg=rotation_deg, resolution=resolution,
                           bound=bound)
    return silhouettes(shape, rig, samples)
  rig = _rotate_rig(rig, -rotation_deg)
  return np.asarray(_traced_masks(_index(solid), rig.c2w, rig.fov_y, image_size, image_size))


# ----------------------------------------------------------------------------------------------
# 3D scores.

_BATCH = 2  # angle/scale candidates per jitted call (padded), so each solid compiles once


@jax.jit
def _reference_ious(occupancy, points, solid: jax.Array, angles, scales):
  """Occupancy IoU (N,) of occupancy (P,) at points (P, 3) against the solid scaled by
  scales[n] and rotated by angles[n] about z."""
  def one(args):
    angle, scale = args
    inside = _solid_sdf(solid, (points @ _rot_z(angle)) / scale) < 0
    inter = jnp.sum(inside & occupancy)
    union = jnp.sum(inside | occupancy)
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)
  return jax.lax.map(one, (angles, scales))


def _padded_call(fn, *columns) -> np.ndarray:
  """fn on candidate columns padded to multiples of _BATCH; the first len() results."""
  n = len(columns[0])
  size = -(-n // _BATCH) * _BATCH
  padded = [jnp.asarray(np.resize(np.asarray(c, np.float32), size)) for c in columns]
  return np.asarray(fn(*padded), np.float64)[:n]


def _occupancy_points(shape: Shape, max_resolution: int | None = None):
  """(occupancy (P,), points (P, 3)) over the lattice, subsampled to <= max_resolution."""
  stride = 1 if not max_resolution else max(1, -(-shape.resolution // max_resolution))
  points = _lattice_points(shape.bound, shape.resolution, stride)
  occ = shape.occupancy[::stride, ::stride, ::stride].reshape(-1)
  return jnp.asarray(occ), jnp.asarray(points)


def _fit(shape: Shape, solid: str, scales: Sequence[float], step_deg: float, rounds: int,
         max_resolution: int | None = None) -> tuple[float, float, float]:
  """(IoU, angle, scale) of the best fit of the solid to the shape's occupancy."""
  occ, points = _occupancy_points(shape, max_resolution)
  ious = lambda a, s: _padded_call(
      lambda a_, s_: _reference_ious(occ, points, _index(solid), a_, s_), a, s)

  period = SYMMETRY_PERIOD_DEG.get(solid)
  angles = np.arange(0.0, period, step_deg) if period else np.zeros(1)
  grid_a, grid_s = (g.ravel() for g in np.meshgrid(angles, np.asarray(scales, np.float64),
                                                   indexing="ij"))
  scores = ious(grid_a, grid_s)
  k = int(np.argmax(scores))
  best, angle, scale = scores[k], grid_a[k], grid_s[k]
  ds = float(np.ptp(scales)) / (len(scales) - 1) / 2.0 if len(scales) > 1 else 0.0
  da = step_deg / 2.0 if period else 0.0
  lo_s, hi_s = min(scales), max(scales)
  for _ in range(rounds if (da or ds) else 0):
    cand_a, cand_s = [], []
    if da:
      cand_a, cand_s = [angle - da, angle + da], [scale, scale]
    if ds:
      cand_a, cand_s = cand_a + [angle, angle], cand_s + [max(scale - ds, lo_s),
                                                          min(scale + ds, hi_s)]
    cand = ious(np.array(cand_a), np.array(cand_s))
    k = int(np.argmax(cand))
    if cand[k] > best:
      best, angle, scale = cand[k], cand_a[k], cand_s[k]
    da, ds = da / 2.0, ds / 2.0
  return float(best), float(angle % (period or 360.0)), float(scale)


def occupancy_iou(shape: Shape, solid: str, config: MetricsConfig = MetricsConfig()
                  ) -> tuple[float, float]:
  """(best occupancy IoU against the solid over rotations about z, the solid's angle)."""
  iou, angle, _ = _fit(shape, solid, (1.0,), config.rotation_step_deg, config.refine_rounds)
  return iou, angle


def silhouette_iou(shape: Shape, solid: str, config: MetricsConfig = MetricsConfig(),
                   extra_angles: Sequence[float] = ()) -> tuple[float, float]:
  """(best mean silhouette IoU over the held-out views, the solid's angle).

  The ground truth is rendered as the prediction is: sphere-traced (exact) for a shape with a
  mesh, which is rasterized exactly; cast through the same lattice for a lattice-only shape,
  so that the lattice's rounding of edges cancels. Angles searched: the grid over the solid's
  symmetry period and `extra_angles` (`evaluate` passes the occupancy fit's refined angle).
  """
  samples = config.samples_for(shape.resolution)
  pred = silhouettes(shape, heldout_cameras(config.image_size), samples)
  spec = None if shape.triangles is not None else (shape.resolution, shape.bound, samples)
  period = SYMMETRY_PERIOD_DEG.get(solid)
  angles = list(np.arange(0.0, period, config.rotation_step_deg)) if period else [0.0]
  if period:
    angles += [a % period for a in extra_angles]
  best, best_angle = -1.0, 0.0
  for a in angles:
    ref = reference_silhouettes(solid, round(float(a), 4), config.image_size, spec)
    score = float(mask_iou(pred, ref).mean())
    if score > best:
      best, best_angle = score, float(a)
  return best, best_angle


def classify_shape(shape: Shape, config: MetricsConfig = MetricsConfig()
                   ) -> tuple[str, dict[str, float]]:
  """(the best-fitting solid, {solid: best IoU over scales and rotations}); on the lattice
  subsampled to at most `config.classify_resolution` points per axis."""
  scores = {s: _fit(shape, s, config.scales, config.rotation_step_deg, config.refine_rounds,
                    config.classify_resolution)[0]
            for s in scenes.SOLIDS}
  return max(scores, key=scores.get), scores


def evaluate(shape: Shape, prompt: str, config: MetricsConfig = MetricsConfig()) -> dict:
  """All metrics of one shape for one solids prompt (see the module docstring)."""
  scene = scenes.parse_prompt(prompt)
  occ_iou, angle = occupancy_iou(shape, scene.solid, config)
  sil_iou, _ = silhouette_iou(shape, scene.solid, config, extra_angles=(angle,))
  predicted, scores = classify_shape(shape, config)
  hue = shape.hue_deg
  predicted_colour = None if hue is None else nearest_colour(hue)
  return {
      "prompt": prompt,
      "solid": scene.solid,
      "colour": scene.colour,
      "silhouette_iou": sil_iou,
      "occupancy_iou": occ_iou,
      "rotation_deg": angle,
      "predicted_solid": predicted,
      "shape_scores": scores,
      "shape_correct": predicted == scene.solid,
      "hue_deg": hue,
      "predicted_colour": predicted_colour,
      "colour_correct": None if scene.colour is None else predicted_colour == scene.colour,
      "cylinder_iou": circumscribed_cylinder_iou(shape) if scene.solid == "cube" else None,
  }


def circumscribed_cylinder_iou(shape: Shape) -> float:
  """Occupancy IoU against the cube's circumscribed cylinder (radius 0.4·√2, height 0.8).

  The failure mode of cube prompts under view labels that cannot tell a cube's turn: each view
  settles on the union of all turns, which is this cylinder (README). Compare it with the
  occupancy IoU against the cube; a true cube scores 0.8³ / (π·0.32·0.8) = 2/π ≈ 0.64 here.
  """
  x = lattice(shape.bound, shape.resolution)
  r2 = x[:, None, None] ** 2 + x[None, :, None] ** 2
  half = scenes.CUBE_HALF_EDGE
  cylinder = (r2 <= 2.0 * half ** 2) & (np.abs(x[None, None, :]) <= half)
  occupied = shape.occupancy
  union = np.sum(cylinder | occupied)
  return float(np.sum(cylinder & occupied) / union) if union else 1.0


@functools.partial(jax.jit, static_argnames=("other_bound",))
def _resampled_ious(occupancy, points, other_values, angles, other_bound: float):
  """IoU (A,) of occupancy (P,) at points (P, 3) with another shape rotated by each angle."""
  def one(angle):
    inside = _trilinear(other_values, points @ _rot_z(angle), other_bound) > 0
    inter = jnp.sum(inside & occupancy)
    union = jnp.sum(inside | occupancy)
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)
  return jax.lax.map(one, angles)


def _align(a: Shape, b: Shape, config: MetricsConfig) -> tuple[float, float]:
  """(occupancy IoU, angle) of b rotated about z to best fit a (on a's lattice subsampled to
  `config.classify_resolution`)."""
  occ, points = _occupancy_points(a, config.classify_resolution)
  vb = jnp.asarray(b.values)
  ious = lambda angles: _padded_call(
      lambda a_: _resampled_ious(occ, points, vb, a_, b.bound), angles)
  grid = np.arange(0.0, 360.0, config.rotation_step_deg)
  scores = ious(grid)
  k = int(np.argmax(scores))
  best, angle, da = scores[k], grid[k], config.rotation_step_deg / 2.0
  for _ in range(config.refine_rounds):
    cand = np.array([angle - da, angle + da])
    s = ious(cand)
    if s.max() > best:
      best, angle = s.max(), cand[int(np.argmax(s))]
    da /= 2.0
  return float(best), float(angle % 360.0)


def diversity(shapes: Sequence[Shape], config: MetricsConfig = MetricsConfig()) -> dict:
  """Diversity of a set of shapes: hue spread and mean pairwise IoUs after z-alignment.

  hue_spread is 1 - |mean unit hue vector| over the shapes with a hue (None if none);
  mean_pairwise_{occupancy,silhouette}_iou average over pairs (None for < 2 shapes), each pair
  aligned by the rotation about z that maximises its occupancy IoU.
  """
  hues = [s.hue_deg for s in shapes if s.hue_deg is not None]
  rig = heldout_cameras(config.image_size)
  sils = [silhouettes(s, rig, config.samples_for(s.resolution)) for s in shapes]
  occ_ious, sil_ious = [], []
  for i, j in itertools.combinations(range(len(shapes)), 2):
    iou, angle = _align(shapes[i], shapes[j], config)
    occ_ious.append(iou)
    # Shape j rotated by `angle` seen by the rig = shape j seen by the rig rotated by -angle.
    sil_j = silhouettes(shapes[j], _rotate_rig(rig, -angle),
                        config.samples_for(shapes[j].resolution))
    sil_ious.append(float(mask_iou(sils[i], sil_j).mean()))
  return {
      "num_shapes": len(shapes),
      "hue_spread": hue_spread(hues) if hues else None,
      "hues_deg": hues,
      "mean_pairwise_occupancy_iou": float(np.mean(occ_ious)) if occ_ious else None,
      "mean_pairwise_silhouette_iou": float(np.mean(sil_ious)) if sil_ious else None,
  }


# ----------------------------------------------------------------------------------------------
# 2D image checks.


def _as_image(image) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
  if image.dtype == np.uint8:
    return image.astype(np.float32) / 255.0
  return image.astype(np.float32)


def image_background(image) -> np.ndarray:
  """(3,) the image's background colour: the per-channel median of its one-pixel border
  (the solids world's background is uniform and objects are framed inside the image)."""
  image = _as_image(image)
  border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
  return np.median(border, axis=0)


def image_foreground(image, threshold: float = 0.1) -> np.ndarray:
  """(H, W) bool: pixels farther than `threshold` from the background colour in some channel.

  On a white background this is 1 − min(rgb) > threshold; measuring from the image's own
  background keeps a faint tint of a generated background out of the foreground."""
  image = _as_image(image)
  return np.abs(image - image_background(image)).max(-1) > threshold


def image_colour(image, min_saturation: float = 0.25) -> tuple[str | None, float | None]:
  """(nearest palette colour, hue in degrees) of the circular median hue of the saturated
  foreground pixels; (None, None) when there are none. Shading and blending with the white
  background change value and saturation, not hue."""
  image = _as_image(image)
  hue, sat, val = rgb_to_hsv(image)
  sel = image_foreground(image) & (sat > min_saturation) & (val > 0.05)
  if not sel.any():
    return None, None
  h = hue[sel]
  candidates = np.arange(0.0, 360.0, 0.5)
  cost = hue_distance(candidates[:, None], h[None, :]).sum(1)
  median = float(candidates[int(np.argmin(cost))])
  return nearest_colour(median), median


@functools.lru_cache(maxsize=8)
def _mask_bank(height: int, width: int) -> dict[str, np.ndarray]:
  """{solid: (M, H, W) bool} masks over the bank's camera poses (cube: azimuths over its
  90° period; the others are symmetric about z, so azimuth 0 suffices)."""
  bank = {}
  chunk = len(BANK_ELEVATIONS_DEG) * len(BANK_DISTANCES)  # one azimuth: one compiled shape
  for solid in scenes.SOLIDS:
    period = SYMMETRY_PERIOD_DEG.get(solid)
    azimuths = np.arange(0.0, period, BANK_AZIMUTH_STEP_DEG) if period else np.zeros(1)
    az, el, dist = (g.ravel() for g in np.meshgrid(
        azimuths, np.asarray(BANK_ELEVATIONS_DEG), np.asarray(BANK_DISTANCES), indexing="ij"))
    cam = cameras.from_spherical(az, el, dist, EVAL_FOV_DEG, height, width)
    masks = [_traced_masks(_index(solid), cam.c2w[k:k + chunk], cam.fov_y[k:k + chunk], height,
                           width) for k in range(0, len(az), chunk)]
    bank[solid] = np.concatenate([np.asarray(m) for m in masks])
  return bank


def image_shape_scores(image, threshold: float = 0.1) -> dict[str, float]:
  """{solid: best IoU of the image's foreground with the solid's bank masks}."""
  fg = image_foreground(image, threshold)
  bank = _mask_bank(*fg.shape)
  return {s: float(mask_iou(m, fg).max()) for s, m in bank.items()}


def image_shape(image, threshold: float = 0.1) -> tuple[str | None, float]:
  """(the solid whose bank silhouette best matches the image's foreground, that IoU);
  (None, 0.0) for an image without foreground."""
  if not image_foreground(image, threshold).any():
    return None, 0.0
  scores = image_shape_scores(image, threshold)
  best = max(scores, key=scores.get)
  return best, scores[best]


__all__ = ["Shape", "MetricsConfig", "shape_from_sdf", "shape_from_field", "shape_from_mesh",
           "heldout_cameras", "silhouettes", "reference_silhouettes", "mask_iou",
           "occupancy_iou", "silhouette_iou", "classify_shape", "evaluate", "diversity",
           "circumscribed_cylinder_iou",
           "image_foreground", "image_background", "image_colour",
           "image_shape", "image_shape_scores", "rgb_to_hsv", "hue_distance",
           "nearest_colour", "hue_spread", "lattice"]
