"""Deformable tetrahedral SDF grid with marching tetrahedra (DMTet: Shen et al. 2021, "Deep
Marching Tetrahedra"), the fine-stage representation of Magic3D.

Grid. The cube [-bound, bound]^3 is cut into N^3 cubic cells of edge h = 2·bound/N, with a
vertex on every lattice point (i, j, k) ∈ {0..N}^3 at −bound + h·(i, j, k), flat index
(i·(N+1) + j)·(N+1) + k. Each cell is split into the 6 tetrahedra of the Freudenthal (Kuhn)
triangulation: for every permutation (a, b, c) of the axes, the path 0 → e_a → e_a + e_b →
(1, 1, 1) along the cell's edges. All 6 share the cell's main diagonal and are congruent.
Chosen over the 5-tet split because every cell is split identically, so the grid is
conforming by translation alone (each cube face is cut along its diagonal through its
lowest-index corner, the same way from both sides) with no alternating-parity bookkeeping,
and every edge is a lattice vector d ∈ {0, 1}^3 \\ {0} (7 directions), so the unique edge
list and the per-tet edge indices come from a dense (7, N+1, N+1, N+1) table without a sort.
The cost is 6 tets per cell instead of 5 and a slight preference for the (1, 1, 1) diagonal.
Every tet is stored positively oriented: det(v1 − v0, v2 − v0, v3 − v0) > 0.

Params: {"sdf": (Nv,), "deform": (Nv, 3)}; the texture is a separate field the system pairs
with the grid (Magic3D: the coarse NeRF's albedo, systems/magic3d.py).
Vertices move to  x = x_grid + h·deform_scale·tanh(deform)  (per axis at most h·deform_scale;
threestudio's tetrahedra-sdf-grid bounds offsets by grid range / resolution, deform_scale 1).
The signed volume is affine in each vertex, so its minimum over such offsets sits at a corner
of the offset box, which puts the exact limit at deform_scale < 1/6: below it no tet can
invert; above it, an inverted tet emits inward-facing triangles.

Sign convention: SDF < 0 inside, >= 0 outside. Marching tetrahedra places one candidate
vertex per grid edge at the zero crossing of the linear interpolant and emits up to 2
triangles per tet (16 sign cases), each wound counter-clockwise seen from outside, so its
normal (v1 − v0) × (v2 − v0) points towards positive SDF and a closed mesh has positive
signed volume. Shapes stay static (Ne vertices, 2·Nt faces and a validity mask), so extraction
jits and differentiates with respect to sdf and deform; invalid faces are the degenerate
triangle (e, e, e) of their tet's first edge.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from jax3d.errors import UserError

Params = dict[str, Any]
DensityFn = Callable[[jax.Array], jax.Array]

# 2·Nt = 12·N^3 faces and Ne ≈ 7·N^3 edges stay far below 2^31 (int32 indices).
MAX_RESOLUTION = 512
# threestudio's Magic3D converts the coarse NeRF at density 25 (isosurface_threshold).
DEFAULT_DENSITY_LEVEL = 25.0
# The local edges of a tet, in the order of the last axis of `TetGrid.tet_edges`.
EDGE_PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


@dataclasses.dataclass(frozen=True)
class DMTetConfig:
  """Tet-grid hyperparameters (threestudio's Magic3D: resolution 128)."""
  resolution: int  # N cells per axis
  bound: float  # the grid spans [-bound, bound]^3
  deform_scale: float  # max vertex offset per axis, in cells (see the module docstring)

  def __post_init__(self):
    if not 1 <= self.resolution <= MAX_RESOLUTION:
      raise UserError(f"dmtet resolution must be in [1, {MAX_RESOLUTION}], got "
                      f"{self.resolution}")
    if self.bound <= 0:
      raise UserError(f"dmtet bound must be positive, got {self.bound}")
    if not 0 <= self.deform_scale <= 1:
      raise UserError(f"dmtet deform_scale must be in [0, 1] cells (< 1/6 keeps every tet "
                      f"positively oriented), got {self.deform_scale}")

  @property
  def cell_size(self) -> float:
    """h = 2·bound/N."""
    return 2.0 * self.bound / self.resolution


class TetGrid(NamedTuple):
  """A tetrahedral grid (NumPy, static). Pass it to jitted functions as an argument (after
  `jax.device_put` once), not as a closed-over constant: at N = 128 it holds 0.65 GB."""
  vertices: Any  # (Nv, 3) float32 rest positions
  tets: Any  # (Nt, 4) int32, positively oriented
  edges: Any  # (Ne, 2) int32 unique edges, edges[:, 0] < edges[:, 1]
  tet_edges: Any  # (Nt, 6) int32: tet t's local edge EDGE_PAIRS[k] is edges[tet_edges[t, k]]


# ---------------------------------------------------------------------------------------------
# The grid.


def _kuhn_corners() -> np.ndarray:
  """(6, 4, 3) cell-corner offsets of the Freudenthal tets, each positively oriented."""
  out = []
  for perm in itertools.permutations(range(3)):
    c = np.zeros((4, 3), np.int64)
    for step, axis in enumerate(perm):
      c[step + 1:, axis] = 1
    if np.linalg.det((c[1:] - c[0]).astype(np.float64)) < 0:
      c[[2, 3]] = c[[3, 2]]
    out.append(c)
  return np.stack(out)


def grid_sizes(resolution: int) -> tuple[int, int, int]:
  """(Nv, Nt, Ne) = ((N+1)^3, 6·N^3, Σ_d Π_a (N + 1 − d_a)) over the 7 edge directions d."""
  n = resolution
  num_edges = sum(int(np.prod(n + 1 - np.array(d)))
                  for d in itertools.product((0, 1), repeat=3) if any(d))
  return (n + 1)**3, 6 * n**3, num_edges


@functools.lru_cache(maxsize=4)
def _lattice(resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Integer lattice points (Nv, 3), tets, edges and tet edges for N cells per axis."""
  n, side = resolution, resolution + 1
  ijk = np.indices((side, side, side), np.int32).reshape(3, -1).T
  strides = np.array([side * side, side, 1], np.int32)
  cells = (np.indices((n, n, n), np.int32).reshape(3, -1).T @ strides).astype(np.int32)

  corners = _kuhn_corners()  # (6, 4, 3)
  tets = cells[:, None, None] + (corners @ strides).astype(np.int32)[None]  # (Nc, 6, 4)

  # Edge e = (u, u + d) for lattice point u and direction d ∈ {0,1}^3 \ 0 with u + d in the
  # grid, numbered in (direction, u) order; `dense` maps direction·Nv + u to its number.
  dirs = np.array([d for d in itertools.product((0, 1), repeat=3) if any(d)], np.int32)
  inside = np.all(ijk[None] + dirs[:, None] <= n, axis=-1)  # (7, Nv)
  dense = np.full(inside.size, -1, np.int32)
  dense[inside.ravel()] = np.arange(np.count_nonzero(inside), dtype=np.int32)
  dir_of, start = np.divmod(np.flatnonzero(inside.ravel()), side**3)
  edges = np.stack([start, start + dirs[dir_of] @ strides], axis=-1)

  # In a Freudenthal tet every corner dominates the earlier ones on the path, so each local
  # edge is (componentwise min corner, |difference| ∈ dirs).
  pairs = np.array(EDGE_PAIRS)
  ca, cb = corners[:, pairs[:, 0]], corners[:, pairs[:, 1]]  # (6, 6, 3)
  base = np.minimum(ca, cb) @ strides
  direction = np.abs(ca - cb) @ np.array([4, 2, 1]) - 1  # index into `dirs` (lexicographic)
  tet_edges = dense[cells[:, None, None] + (direction * side**3 + base).astype(np.int32)[None]]

  arrays = (ijk, tets.reshape(-1, 4), edges.astype(np.int32), tet_edges.reshape(-1, 6))
  for a in arrays:
    a.setflags(write=False)
  return arrays


def tet_grid(resolution: int, bound: float) -> TetGrid:
  """The Freudenthal tet grid of N^3 cells over [-bound, bound]^3 (topology cached per N)."""
  ijk, tets, edges, tet_edges = _lattice(int(resolution))
  vertices = (-bound + ijk * (2.0 * bound / resolution)).astype(np.float32)
  return TetGrid(vertices=vertices, tets=tets, edges=edges, tet_edges=tet_edges)


def _triangle_table() -> tuple[np.ndarray, np.ndarray]:
  """(16, 2, 3) local edge indices and (16,) triangle counts per sign case.

  Case bit v is set when tet vertex v is inside (SDF < 0). One vertex apart from the other
  three gives one triangle on its three edges; two and two give the quad
  (ac, ad, bd, bc) for inside a < b and outside c < d, split along the diagonal ac–bd. Each
  triangle is wound on a positively oriented reference tet so that its normal agrees with
  the gradient of the linear interpolant (pointing outside). That winding holds for every
  positively oriented tet and crossing position: the crossings lie on the interpolant's zero
  plane and the sign of the normal's component along the gradient cannot change without
  the triangle degenerating.
  """
  ref = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]], np.float64)
  edge_index = {p: k for k, p in enumerate(EDGE_PAIRS)}
  table = np.zeros((16, 2, 3), np.int32)
  counts = np.zeros((16,), np.int32)
  for case in range(16):
    inner = [v for v in range(4) if case >> v & 1]
    outer = [v for v in range(4) if not case >> v & 1]
    if len(inner) in (1, 3):
      lone, rest = (inner[0], outer) if len(inner) == 1 else (outer[0], inner)
      tris = [[(lone, r) for r in rest]]
    elif len(inner) == 2:
      (a, b), (c, d) = inner, outer
      tris = [[(a, c), (a, d), (b, d)], [(a, c), (b, d), (b, c)]]
    else:
      continue
    sdf = np.where(np.isin(np.arange(4), inner), -1.0, 1.0)
    grad = np.linalg.solve(ref[1:] - ref[0], sdf[1:] - sdf[0])
    for slot, tri in enumerate(tris):
      pts = np.array([0.5 * (ref[u] + ref[v]) for u, v in tri])
      if np.dot(np.cross(pts[1] - pts[0], pts[2] - pts[0]), grad) < 0:
        tri = tri[::-1]
      table[case, slot] = [edge_index[tuple(sorted(e))] for e in tri]
    counts[case] = len(tris)
  return table, counts


TRIANGLE_TABLE, TRIANGLE_COUNT = _triangle_table()


# ---------------------------------------------------------------------------------------------
# Params.


def num_params(cfg: DMTetConfig) -> int:
  """4·Nv: the SDF and the deformation."""
  return 4 * grid_sizes(cfg.resolution)[0]


def memory_bytes(cfg: DMTetConfig, texture_params: int = 0) -> int:
  """An estimate of one training step's memory in bytes, excluding the renderer:

    16·P + 44·Nv + 72·Ne + 360·Nt

  16·P: float32 params, gradients and Adam's two moments (P = `num_params` plus the
  `texture_params` of the texture field a system pairs with the grid). Per grid vertex,
  rest and deformed positions, their cotangents and the sign gathers (44). Per edge, its two
  int32 indices, the gathered endpoint SDFs and positions and the candidate vertex, forward
  and backward (72). Per tet, its 4 vertex and 6 edge indices (40), the sign case, 2
  candidate faces and masks (32), their normals forward and backward (48), and the
  regularisers' sorts of the 6 face edges, with 3 int32 operands (normal consistency) and 2
  (Laplacian), input and output (240). At N = 128 with a 16-level 2^19 texture (F 2) this is
  about 5.7 GiB.
  """
  nv, nt, ne = grid_sizes(cfg.resolution)
  return 16 * (num_params(cfg) + texture_params) + 44 * nv + 72 * ne + 360 * nt


def check_memory(cfg: DMTetConfig, available_bytes: int, texture_params: int = 0) -> None:
  """Raises `UserError` (one line, with the estimate) when `memory_bytes` exceeds the budget."""
  need = memory_bytes(cfg, texture_params)
  if need > available_bytes:
    raise UserError(f"dmtet resolution {cfg.resolution} needs about {need / 2**30:.2f} GiB "
                    f"({grid_sizes(cfg.resolution)[1]} tets) but {available_bytes / 2**30:.2f} "
                    f"GiB are available; lower the resolution")


def init_sdf_from_density(density_fn: DensityFn, vertices: jax.Array, level: float,
                          scale: float = 1.0, chunk: int = 65536) -> jax.Array:
  """sdf = clip(−(σ(x) − level)·scale, −1, 1) at vertices (Nv, 3) -> (Nv,).

  Negative (inside) where the density σ exceeds `level`. threestudio's Magic3D uses level 25
  and scale 1. `density_fn` maps (chunk, 3) points to (chunk,) densities and runs in
  `lax.map` chunks of static size.
  """
  chex.assert_rank(vertices, 2)
  chex.assert_axis_dimension(vertices, 1, 3)
  n = vertices.shape[0]
  chunk = max(1, min(chunk, n))
  padded = jnp.pad(vertices, ((0, -n % chunk), (0, 0)))
  sigma = jax.lax.map(density_fn, padded.reshape(-1, chunk, 3))
  chex.assert_shape(sigma, (padded.shape[0] // chunk, chunk))
  return jnp.clip(-(sigma.reshape(-1)[:n] - level) * scale, -1.0, 1.0)


def drop_small_interiors(sdf: np.ndarray, resolution: int,
                         fraction: float) -> tuple[np.ndarray, int]:
  """`sdf` (Nv,) with every inside region (connected sdf < 0 vertices, 26-neighbourhood on the
  lattice) smaller than `fraction` × the largest one set to +1 (outside), and how many were
  dropped: the floaters of a coarse field, removed before a fine stage starts from it."""
  side = resolution + 1
  inside = np.asarray(sdf).reshape(side, side, side) < 0
  labels, count = scipy.ndimage.label(inside, structure=np.ones((3, 3, 3), bool))
  if count < 2 or fraction <= 0:
    return np.asarray(sdf), 0
  sizes = np.bincount(labels.ravel())[1:]
  small = np.concatenate([[False], sizes < fraction * sizes.max()])
  out = np.where(small[labels].ravel(), 1.0, np.asarray(sdf)).astype(np.float32)
  return out, int(small.sum())


def init(cfg: DMTetConfig, density_fn: DensityFn | None = None,
         level: float = DEFAULT_DENSITY_LEVEL, sdf_scale: float = 1.0) -> Params:
  """SDF from `density_fn` (see `init_sdf_from_density`), or without one the clipped sphere
  clip(|x| − bound/2, −1, 1); zero deformation."""
  vertices = jnp.asarray(tet_grid(cfg.resolution, cfg.bound).vertices)
  if density_fn is None:
    sdf = jnp.clip(jnp.linalg.norm(vertices, axis=-1) - 0.5 * cfg.bound, -1.0, 1.0)
  else:
    sdf = init_sdf_from_density(density_fn, vertices, level, sdf_scale)
  return {"sdf": sdf.astype(jnp.float32),
          "deform": jnp.zeros(vertices.shape, jnp.float32)}


def deformed_vertices(params: Params, grid: TetGrid, cfg: DMTetConfig) -> jax.Array:
  """x_grid + h·deform_scale·tanh(deform), (Nv, 3)."""
  chex.assert_equal_shape([params["deform"], grid.vertices])
  return grid.vertices + (cfg.cell_size * cfg.deform_scale) * jnp.tanh(params["deform"])


# ---------------------------------------------------------------------------------------------
# Marching tetrahedra.


def edge_crossings(sdf: jax.Array, positions: jax.Array,
                   edges: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Candidate vertices (Ne, 3) and whether each edge crosses the surface (Ne,).

  On edge (a, b) with s_a, s_b of opposite sides, p = (p_a·s_b − p_b·s_a)/(s_b − s_a), the
  zero of the linear interpolant; elsewhere the midpoint, through a guarded division so that
  no NaN reaches the gradient.
  """
  s = sdf[edges]  # (Ne, 2)
  p = positions[edges]  # (Ne, 2, 3)
  inside = s < 0
  crosses = inside[:, 0] != inside[:, 1]
  denom = jnp.where(crosses, s[:, 1] - s[:, 0], 1.0)  # >= the inside end's |s| > 0
  t = jnp.where(crosses, -s[:, 0] / denom, 0.5)
  return p[:, 0] + t[:, None] * (p[:, 1] - p[:, 0]), crosses


def marching_tetrahedra(sdf: jax.Array, positions: jax.Array,
                        grid: TetGrid) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Surface {SDF = 0} of the tet grid with vertices at `positions` (Nv, 3).

  Returns vertices (Ne, 3) (one candidate per grid edge), faces (2·Nt, 3) int32 indices into
  them (tet t's triangles are rows 2t and 2t + 1, outward winding) and face_mask (2·Nt,).
  """
  num_vertices = positions.shape[0]
  num_tets = grid.tets.shape[0]
  chex.assert_shape(sdf, (num_vertices,))
  chex.assert_shape(positions, (num_vertices, 3))
  vertices, _ = edge_crossings(sdf, positions, grid.edges)
  inside = (sdf < 0).astype(jnp.int32)
  case = jnp.sum(inside[grid.tets] * jnp.array([1, 2, 4, 8], jnp.int32), axis=-1)  # (Nt,)
  local = jnp.asarray(TRIANGLE_TABLE)[case].reshape(num_tets, 6)
  faces = jnp.take_along_axis(jnp.asarray(grid.tet_edges), local, axis=1).reshape(-1, 3)
  face_mask = (jnp.asarray(TRIANGLE_COUNT)[case][:, None] > jnp.arange(2)).reshape(-1)
  return vertices, faces, face_mask


def extract(params: Params, grid: TetGrid,
            cfg: DMTetConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`marching_tetrahedra` of params["sdf"] on the deformed grid."""
  return marching_tetrahedra(params["sdf"], deformed_vertices(params, grid, cfg), grid)


# ---------------------------------------------------------------------------------------------
# Mesh regularisers.


def _normals_and_support(vertices: jax.Array,
                         faces: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Unit face normals (F, 3) and whether each face has one: |n| > 1e-3·(|e0|² + |e1|² + |e2|²)
  for n = (v1 − v0) × (v2 − v0), a scale-free test that rejects zero-area and sliver faces
  (whose normals' gradients, ~|e|/|n|, overflow float32), and |n|² > 1e-20 (faces with
  every vertex within ~1e-5 of each other, where the relative test underflows)."""
  v = vertices[faces]
  e = v - jnp.roll(v, 1, axis=1)
  n = jnp.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
  norm2 = jnp.sum(n * n, axis=-1)
  ok = (norm2 > (1e-3 * jnp.sum(e * e, axis=(1, 2)))**2) & (norm2 > 1e-20)
  return n * jax.lax.rsqrt(jnp.where(ok, norm2, 1.0))[:, None], ok


def face_normals(vertices: jax.Array, faces: jax.Array) -> jax.Array:
  """Unit normals (F, 3) of (v1 − v0) × (v2 − v0); 0 for zero-area or sliver faces."""
  n, ok = _normals_and_support(vertices, faces)
  return jnp.where(ok[:, None], n, 0.0)


def _sorted_face_edges(faces: jax.Array, face_mask: jax.Array,
                       num_vertices: int) -> tuple[jax.Array, ...]:
  """The 3·F face edges (lo, hi) sorted lexicographically, with their face and validity.

  Edges of invalid faces get the key (V, V), beyond every real vertex index, so they sort to
  the end and never sit between two entries of a real edge.
  """
  chex.assert_shape(face_mask, (faces.shape[0],))
  a = faces.reshape(-1)
  b = jnp.roll(faces, -1, axis=1).reshape(-1)  # (f0, f1), (f1, f2), (f2, f0)
  valid = jnp.repeat(face_mask, 3)
  lo = jnp.where(valid, jnp.minimum(a, b), num_vertices)
  hi = jnp.where(valid, jnp.maximum(a, b), num_vertices)
  face = jnp.repeat(jnp.arange(faces.shape[0], dtype=jnp.int32), 3)
  lo, hi, face = jax.lax.sort((lo, hi, face), num_keys=2)
  return lo, hi, face, lo < num_vertices


def normal_consistency(vertices: jax.Array, faces: jax.Array, face_mask: jax.Array) -> jax.Array:
  """Mean over mesh edges shared by two valid faces f, g of 1 − n_f·n_g (0 if none).

  Faces without a normal (zero area or slivers, see `face_normals`; an SDF value of exactly 0
  puts several crossings on one grid vertex) are left out, along with their unbounded normal
  gradients.
  """
  lo, hi, face, valid = _sorted_face_edges(faces, face_mask, vertices.shape[0])
  normals, ok = _normals_and_support(vertices, faces)
  pair = ((lo[1:] == lo[:-1]) & (hi[1:] == hi[:-1]) & valid[1:] & valid[:-1]
          & ok[face[1:]] & ok[face[:-1]])
  cos = jnp.sum(normals[face[1:]] * normals[face[:-1]], axis=-1)
  count = jnp.sum(pair)
  return jnp.sum(jnp.where(pair, 1.0 - cos, 0.0)) / jnp.maximum(count, 1)


def uniform_laplacian(vertices: jax.Array, faces: jax.Array,
                      face_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """δ_i = v_i − mean of v_i's mesh neighbours (V, 3), and which vertices have any (V,).

  Neighbours come from the unique edges of valid faces, each counted once.
  """
  num_vertices = vertices.shape[0]
  lo, hi, _, valid = _sorted_face_edges(faces, face_mask, num_vertices)
  first = valid & jnp.concatenate(
      [jnp.ones((1,), bool), (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])])
  w = first.astype(vertices.dtype)
  lo, hi = jnp.minimum(lo, num_vertices - 1), jnp.minimum(hi, num_vertices - 1)
  total = (jnp.zeros_like(vertices).at[lo].add(w[:, None] * vertices[hi])
           .at[hi].add(w[:, None] * vertices[lo]))
  degree = jnp.zeros((num_vertices,), vertices.dtype).at[lo].add(w).at[hi].add(w)
  used = degree > 0
  delta = vertices - total / jnp.maximum(degree, 1.0)[:, None]
  return jnp.where(used[:, None], delta, 0.0), used


def laplacian_loss(vertices: jax.Array, faces: jax.Array, face_mask: jax.Array) -> jax.Array:
  """Mean over vertices of valid faces of ‖δ_i‖² (`uniform_laplacian`); 0 for no faces."""
  delta, used = uniform_laplacian(vertices, faces, face_mask)
  return jnp.sum(delta * delta) / jnp.maximum(jnp.sum(used), 1)


# ---------------------------------------------------------------------------------------------
# Export.


def compact_mesh(vertices, faces, face_mask) -> tuple[np.ndarray, np.ndarray]:
  """(vertices (V, 3) float32, faces (F, 3) int32): the valid faces over only their vertices."""
  vertices = np.asarray(vertices, np.float32)
  faces = np.asarray(faces)[np.asarray(face_mask, bool)]
  used = np.zeros(vertices.shape[0], bool)
  used[faces.ravel()] = True
  remap = np.cumsum(used) - 1
  return vertices[used], remap[faces].astype(np.int32)


__all__ = ["DMTetConfig", "TetGrid", "tet_grid", "grid_sizes", "num_params", "memory_bytes",
           "check_memory", "init_sdf_from_density", "drop_small_interiors", "init",
           "deformed_vertices", "edge_crossings", "marching_tetrahedra", "extract", "face_normals",
           "normal_consistency", "uniform_laplacian", "laplacian_loss", "compact_mesh",
           "EDGE_PAIRS", "TRIANGLE_TABLE", "TRIANGLE_COUNT", "MAX_RESOLUTION",
           "DEFAULT_DENSITY_LEVEL"]
