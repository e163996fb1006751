"""Density field -> triangle mesh (marching cubes) -> `.glb` / `.obj` files with vertex colours.

The field is sampled on a `resolution`^3 grid spanning the bound [-bound, bound]^3 (world
coordinates, z up), the isosurface `sigma = level` is extracted with marching cubes (PyMCubes),
and each vertex is coloured by the field's albedo at that point.

Choosing the iso-level. A fixed density threshold is meaningless across fields: density has
units of 1/length, and what a renderer shows depends on its step length. The default rule is
therefore stated in terms of what the renderer sees. With step length delta, one sample of
density sigma contributes opacity alpha = 1 - exp(-sigma * delta) (NeRF, Mildenhall et al.
2020, Eq. 3), and the surface is taken where a ray crossing one sample becomes half opaque:

    alpha = 0.5   <=>   sigma* = ln 2 / delta,   delta = 2 * sqrt(3) * bound / num_samples

(`step_size` is delta; pass the renderer's, else `DEFAULT_NUM_SAMPLES` samples per box
diagonal are assumed). If sigma* lies outside the grid's density range (a faint field that
never reaches it, or a box that is opaque everywhere), the fallback is the midrange
(sigma_min + sigma_max) / 2 -- for a faint field with sigma_min ~ 0, half the maximum density.
A field that would stay under `MIN_VISIBLE_OPACITY` opacity even along the longest ray through
the box at its maximum density is empty: that raises `UserError` instead of extracting noise.
`level=` overrides the rule. Every result records the level used and the rule that chose it.

Outside the bound the renderer sees nothing, so the grid is padded with empty space before
marching cubes: surfaces that reach the bound are capped there and every mesh is closed, with
faces wound counter-clockwise seen from outside (normals point out, signed volume > 0).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import mcubes
import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import trimesh

from jax3d import cameras
from jax3d.errors import UserError
from jax3d.render import volume

# Samples per ray across the bound's diagonal assumed when the renderer's step is not given.
DEFAULT_NUM_SAMPLES = 128
# Below this opacity along the longest ray through the box at the maximum density, a field
# counts as empty.
MIN_VISIBLE_OPACITY = 0.05
MAX_RESOLUTION = 1024  # Flat grid indices stay below 2^31.
FILE_NAMES = {"glb": "mesh.glb", "obj": "mesh.obj"}

DensityFn = Callable[[jax.Array], jax.Array]
ColorFn = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class MeshData:
  """A triangle mesh in world coordinates (z up) with per-vertex colours."""
  vertices: np.ndarray  # (V, 3) float32
  faces: np.ndarray  # (F, 3) int32, counter-clockwise seen from outside
  colors: np.ndarray  # (V, 3) float32 in [0, 1]
  level: float  # the density iso-level extracted
  level_rule: str  # how `level` was chosen, in words
  removed_components: int = 0  # floating components dropped (see `min_component_fraction`)

  def __post_init__(self):
    if (self.vertices.ndim != 2 or self.vertices.shape[1] != 3 or self.faces.ndim != 2 or
        self.faces.shape[1] != 3 or self.colors.shape != self.vertices.shape):
      raise ValueError(f"MeshData shapes: vertices {self.vertices.shape}, faces "
                       f"{self.faces.shape}, colors {self.colors.shape}; want (V,3), (F,3), "
                       f"(V,3)")

  @property
  def num_vertices(self) -> int:
    return int(self.vertices.shape[0])

  @property
  def num_faces(self) -> int:
    return int(self.faces.shape[0])


def _as_partial(fn: Callable) -> jax.tree_util.Partial:
  # A `Partial` passes its bound arguments (e.g. field params) to jit as arguments rather than
  # as constants baked into the compiled program; a plain callable becomes a static argument.
  return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


def grid_points(bound: float, resolution: int) -> np.ndarray:
  """The sample points, (R, R, R, 3) float32: index (i, j, k) is (x_i, y_j, z_k) on linspace."""
  axis = np.linspace(-bound, bound, resolution, dtype=np.float32)
  return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)


@functools.partial(jax.jit, static_argnames=("resolution", "chunk"))
def _density_chunk(fn: jax.tree_util.Partial, start: jax.Array, bound: jax.Array,
                   resolution: int, chunk: int) -> jax.Array:
  r = resolution
  idx = jnp.minimum(start + jnp.arange(chunk, dtype=jnp.int32), r**3 - 1)
  ijk = jnp.stack([idx // (r * r), (idx // r) % r, idx % r], axis=-1).astype(jnp.float32)
  points = -bound + ijk * (2.0 * bound / (r - 1))
  return _check_output(fn(points), (chunk,), "density_fn")


@functools.partial(jax.jit, static_argnames=("chunk",))
def _points_chunk(fn: jax.tree_util.Partial, points: jax.Array, chunk: int) -> jax.Array:
  return _check_output(fn(points), (chunk, 3), "color_fn")


def _check_output(out: jax.Array, shape: tuple[int, ...], name: str) -> jax.Array:
  out = jnp.asarray(out, jnp.float32)
  if out.shape == shape + (1,):
    out = out[..., 0]
  if out.shape != shape:
    raise ValueError(f"{name} returned shape {out.shape} for {shape[0]} points; want {shape}")
  return out


def sample_density(density_fn: DensityFn, bound: float, resolution: int,
                   chunk: int = 65536) -> np.ndarray:
  """Density at `grid_points(bound, resolution)`, (R, R, R) float32, in jitted static chunks."""
  if not 2 <= resolution <= MAX_RESOLUTION:
    raise UserError(f"mesh resolution must be in [2, {MAX_RESOLUTION}], got {resolution}")
  total = resolution**3
  chunk = int(min(chunk, total))
  fn = _as_partial(density_fn)
  out = np.empty((total,), np.float32)
  bound_arr = jnp.float32(bound)
  pending = None
  # Dispatch the next chunk before copying the previous one to the host, so both overlap.
  for start in range(0, total, chunk):
    result = _density_chunk(fn, jnp.int32(start), bound_arr, resolution, chunk)
    if pending is not None:
      s, r = pending
      out[s:s + chunk] = np.asarray(r)[:total - s]
    pending = (start, result)
  s, r = pending
  out[s:s + chunk] = np.asarray(r)[:total - s]
  return out.reshape(resolution, resolution, resolution)


def evaluate_points(fn: ColorFn, points: np.ndarray, chunk: int = 65536) -> np.ndarray:
  """`fn` (points (N,3) -> (N,3)) on host points, jitted in static chunks; (N, 3) float32."""
  n = points.shape[0]
  if n == 0:
    return np.zeros((0, 3), np.float32)
  # Round small inputs up to a power of two so different meshes reuse a few compilations.
  chunk = int(min(chunk, 1 << max(n - 1, 1).bit_length()))
  padded = np.zeros((-(-n // chunk) * chunk, 3), np.float32)
  padded[:n] = points
  fn = _as_partial(fn)
  outs = [_points_chunk(fn, jnp.asarray(padded[s:s + chunk]), chunk)
          for s in range(0, padded.shape[0], chunk)]
  return np.concatenate([np.asarray(o) for o in outs])[:n]


def alpha_level(step_size: float) -> float:
  """The density at which one render step of length `step_size` is half opaque: ln 2 / delta."""
  return math.log(2.0) / step_size


def choose_level(sigma: np.ndarray, bound: float, step_size: float | None = None,
                 level: float | None = None) -> tuple[float, str]:
  """(iso-level, rule in words) for a sampled density grid; see the module docstring.

  Raises `UserError` when the field is empty or `level` gives no surface.
  """
  if np.isnan(sigma).any():
    raise UserError(f"the density field is NaN at {int(np.isnan(sigma).sum())} of "
                    f"{sigma.size} grid points: the field is broken (use an earlier "
                    f"checkpoint)")
  lo, hi = float(sigma.min()), float(sigma.max())
  found = f"density on the {sigma.shape[0]}^3 grid ranges over [{lo:.4g}, {hi:.4g}]"
  if not hi > lo:
    raise UserError(f"the field is empty: {found}, constant, so no level gives a surface; "
                    f"train longer or check the checkpoint")
  override = f"pass level=<a density strictly between {lo:.4g} and {hi:.4g}>"
  if level is not None:
    level = float(level)
    if not lo < level < hi:
      raise UserError(f"no surface at level {level:.4g}: {found}; {override}")
    return level, f"user: level={level:.4g}"
  if step_size is None:
    step_size = 2.0 * math.sqrt(3.0) * bound / DEFAULT_NUM_SAMPLES
    step_note = f"step {step_size:.4g} = box diagonal / {DEFAULT_NUM_SAMPLES}"
  else:
    step_note = f"step {step_size:.4g}"
  if not step_size > 0:
    raise UserError(f"mesh step_size must be positive, got {step_size}")
  target = alpha_level(step_size)
  if lo < target < hi:
    return target, f"alpha=0.5: sigma = ln2 / step = {target:.4g} ({step_note})"
  ray_opacity = 1.0 - math.exp(-max(hi, 0.0) * 2.0 * math.sqrt(3.0) * bound)
  if ray_opacity < MIN_VISIBLE_OPACITY:
    raise UserError(f"the field is empty: {found} (at most {ray_opacity:.1%} opaque along "
                    f"the longest ray); train longer, or {override}")
  mid = 0.5 * (lo + hi)
  where = "above the maximum" if target >= hi else "below the minimum"
  return mid, (f"fallback midrange (min + max) / 2 = {mid:.4g}: the alpha=0.5 level "
               f"{target:.4g} ({step_note}) is {where} density")


def _drop_small_components(vertices: np.ndarray, faces: np.ndarray,
                           fraction: float) -> tuple[np.ndarray, np.ndarray, int]:
  """Keeps components with >= `fraction` x the largest component's face count."""
  n = vertices.shape[0]
  edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
  graph = scipy.sparse.coo_matrix(
      (np.ones(edges.shape[0], np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
  _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
  face_label = labels[faces[:, 0]]
  counts = np.bincount(face_label)
  keep = counts >= fraction * counts.max()
  removed = int(np.count_nonzero((counts > 0) & ~keep))
  faces = faces[keep[face_label]]
  used = np.zeros(n, bool)
  used[faces.ravel()] = True
  remap = np.cumsum(used) - 1
  return vertices[used], remap[faces].astype(np.int32), removed


def extract_mesh(density_fn: DensityFn, color_fn: ColorFn, bound: float,
                 resolution: int = 128, level: float | None = None,
                 step_size: float | None = None, chunk: int = 65536,
                 min_component_fraction: float = 0.0) -> MeshData:
  """Marching-cubes mesh of `density_fn`'s isosurface inside [-bound, bound]^3.

  Args:
    density_fn: points (N, 3) -> density (N,), jax-traceable, params already bound (a
      `jax.tree_util.Partial(query, params)` keeps params out of the compiled constants).
    color_fn: points (N, 3) -> albedo (N, 3) in [0, 1] (clipped), jax-traceable.
    bound: half the edge of the sampled box.
    resolution: grid points per axis (grid spacing 2 * bound / (resolution - 1)).
    level: density iso-level; None picks it by the rule in the module docstring.
    step_size: the renderer's step length delta for the alpha = 0.5 rule.
    chunk: points per jitted evaluation (static).
    min_component_fraction: drop connected components with fewer faces than this fraction of
      the largest one (floaters); 0 (the default) keeps everything the renderer would show.

  Raises:
    UserError: the field is empty, or `level` gives no surface.
  """
  sigma = sample_density(density_fn, bound, resolution, chunk)
  sigma = np.minimum(sigma, np.finfo(np.float32).max)  # +inf -> finite; NaN is checked below.
  level, rule = choose_level(sigma, bound, step_size, level)
  pad = min(0.0, float(sigma.min()))
  padded = np.pad(sigma, 1, constant_values=pad)
  verts, faces = mcubes.marching_cubes(padded, level)
  if faces.shape[0] == 0:
    raise UserError(f"no surface at level {level:.4g}; pass another level=")
  spacing = 2.0 * bound / (resolution - 1)
  verts = np.clip(-bound + (verts - 1.0) * spacing, -bound, bound).astype(np.float32)
  faces = faces.astype(np.int32)
  removed = 0
  if min_component_fraction > 0:
    verts, faces, removed = _drop_small_components(verts, faces, min_component_fraction)
  colors = evaluate_points(color_fn, verts, chunk)
  colors = np.clip(np.nan_to_num(colors), 0.0, 1.0).astype(np.float32)
  return MeshData(vertices=verts, faces=faces, colors=colors, level=float(level),
                  level_rule=rule, removed_components=removed)


def _destinations(directory_or_paths) -> dict[str, str]:
  if isinstance(directory_or_paths, Mapping):
    items = list(directory_or_paths.values())
  elif isinstance(directory_or_paths, (str, os.PathLike)):
    path = os.fspath(directory_or_paths)
    if os.path.splitext(path)[1].lower() not in (".glb", ".obj"):
      return {k: os.path.join(path, name) for k, name in FILE_NAMES.items()}
    items = [path]
  elif isinstance(directory_or_paths, Sequence):
    items = list(directory_or_paths)
  else:
    raise TypeError(f"write_mesh wants a directory or mesh paths, got {directory_or_paths!r}")
  out = {}
  for p in items:
    p = os.fspath(p)
    kind = os.path.splitext(p)[1].lower().lstrip(".")
    if kind not in FILE_NAMES:
      raise UserError(f"mesh file {p!r}: unknown format; use a .glb or .obj path")
    out[kind] = p
  return out


def write_mesh(mesh: MeshData, directory_or_paths, y_up: bool = False) -> dict[str, str]:
  """Writes `mesh` as .glb (COLOR_0) and .obj (`v x y z r g b`); returns {format: path}.

  `directory_or_paths` is a directory (gets mesh.glb and mesh.obj), one .glb/.obj path, or a
  sequence/mapping of them. Coordinates are world, z up, unless `y_up` rotates them to the
  y-up convention of glTF viewers and Blender's importers: (x, y, z) -> (x, z, -y).
  """
  if mesh.num_faces == 0 or mesh.num_vertices == 0:
    raise UserError("refusing to write an empty mesh (0 faces); extract it with another level=")
  paths = _destinations(directory_or_paths)
  vertices = mesh.vertices
  if y_up:
    vertices = np.stack([vertices[:, 0], vertices[:, 2], -vertices[:, 1]], axis=-1)
  rgba = np.concatenate([np.rint(np.clip(mesh.colors, 0, 1) * 255),
                         np.full((mesh.num_vertices, 1), 255)], axis=-1).astype(np.uint8)
  tm = trimesh.Trimesh(vertices=vertices, faces=mesh.faces, vertex_colors=rgba,
                       process=False)
  for kind, path in paths.items():
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = tm.export(file_type=kind)
    with open(path, "wb") as f:
      f.write(data.encode() if isinstance(data, str) else data)
  return paths


def load_mesh(path: str | os.PathLike) -> trimesh.Trimesh:
  """Reads a .glb/.obj file back as one `trimesh.Trimesh`, vertices and colours unchanged."""
  if not os.path.isfile(path):
    raise UserError(f"mesh file {os.fspath(path)!r} does not exist")
  return trimesh.load(os.fspath(path), force="mesh", process=False)


def level_matching_silhouettes(max_density: np.ndarray, target: np.ndarray) -> tuple[float, float]:
  """The density level L whose silhouettes best match target masks, and that IoU.

  `max_density` (N,) is each ray's maximum density along its path and `target` (N,) bool
  whether the rendered opacity of that ray exceeds one half. A surface at level L covers
  exactly the rays with max_density > L, so IoU(L) = |{m > L} ∩ T| / |{m > L} ∪ T| is scanned
  over every candidate L at once (the sorted ray maxima).
  """
  m = np.asarray(max_density, np.float64).ravel()
  t = np.asarray(target, bool).ravel()
  if not t.any():
    raise UserError("the rendered views show no opaque pixel, so there is no surface to mesh; "
                    "train longer or pass an explicit level")
  order = np.argsort(-m)
  m_sorted, t_sorted = m[order], t[order]
  # Choosing L just below m_sorted[k] covers rays 0..k.
  covered = np.arange(1, m.size + 1)
  inter = np.cumsum(t_sorted)
  iou = inter / (covered + t.sum() - inter)
  k = int(np.argmax(iou))
  below = m_sorted[k + 1] if k + 1 < m.size else 0.0
  return float(0.5 * (m_sorted[k] + below)), float(iou[k])


_apply = jax.jit(lambda fn, x: fn(x))  # `fn` is a jax.tree_util.Partial over the params.


@functools.partial(jax.jit, static_argnames=("size", "samples", "bound"))
def _level_views(size: int, samples: int, bound: float):
  """The 8 cameras of `level_matching_renders`, each ray's sample points (8, H·W, S, 3) and
  whether it meets the box (8, H·W): one compiled program instead of ~100 eager ops."""
  cams = cameras.from_spherical(jnp.arange(8) * 45.0, jnp.full(8, 15.0), 2.0, 40.0, size, size)
  o, d = cameras.rays(cams)
  o, d = o.reshape(8, -1, 3), d.reshape(8, -1, 3)
  near, far, hit = jax.vmap(lambda o, d: volume.intersect_box(o, d, bound))(o, d)
  frac = (jnp.arange(samples) + 0.5) / samples
  t = near[..., None] + frac * (far - near)[..., None]
  return cams, o[:, :, None] + t[..., None] * d[:, :, None], hit


def level_matching_renders(render_opacity: Callable, density_fn: DensityFn, bound: float,
                           size: int = 48, samples: int = 128) -> tuple[float, float]:
  """(the iso-level whose silhouettes best match a field's rendered opacity, that IoU).

  A robust rule for diffuse fields: a fixed density (or 'half-opaque per render step') level
  keeps only the dense core of a fuzzy object or bloats a sharp one; matching what the
  renderer shows from 8 views around the object (azimuths 0, 45, ..., elevation 15°, the
  turntable's distance and fov) does neither. `render_opacity(camera)` -> (H, W) opacity;
  `density_fn` a `jax.tree_util.Partial` (points (N, 3) -> (N,)).
  """
  cams, points, hit = _level_views(size, samples, float(bound))
  hit = np.asarray(hit)
  maxima, targets = [], []
  for v in range(8):
    cam = jax.tree.map(lambda x, v=v: x[v], cams)
    targets.append(np.asarray(render_opacity(cam)).ravel() > 0.5)
    sigma = _apply(_as_partial(density_fn), points[v])
    maxima.append(np.where(hit[v], np.asarray(sigma).max(-1), 0.0))
  return level_matching_silhouettes(np.concatenate(maxima), np.concatenate(targets))


__all__ = ["MeshData", "extract_mesh", "write_mesh", "load_mesh", "sample_density",
           "evaluate_points", "choose_level", "alpha_level", "grid_points",
           "level_matching_silhouettes", "level_matching_renders", "DEFAULT_NUM_SAMPLES",
           "MIN_VISIBLE_OPACITY"]
