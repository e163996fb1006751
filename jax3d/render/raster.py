"""Differentiable triangle rasterization in pure JAX: projection, a tiled z-buffer, attribute
interpolation and analytic antialiasing (for mesh stages such as Magic3D's).

Everything is jax.numpy/lax with static shapes, so it jits and vmaps (over cameras) on CPU,
GPU and TPU alike.

Projection. `project` maps world vertices to homogeneous pixel coordinates h = (x·w, y·w, w):
w is the view depth (distance in front of the camera along its −z axis) and (x, y) the pixel
position of `cameras.project` (pixel (i, j) has its centre at (j + 0.5, i + 0.5)). h is linear
in the camera-space position, so it stays finite for vertices behind the camera.

Coverage (2D homogeneous rasterization, Olano & Greer 1997). For a pixel centre p and a
triangle h_0, h_1, h_2, with a_i = h_i,x − p_x h_i,w and c_i = h_i,y − p_y h_i,w,
  n_i = a_j c_k − c_j a_k  ((i, j, k) cyclic),  b_i = n_i / Σ_m n_m,  z = Σ_i b_i w_i
are the perspective-correct barycentrics and the view depth of the point of the triangle's
plane seen through p. p is covered when every b_i ≥ 0 and z > near. Shared edges count for
both of their triangles (no cracks). No clipping is needed: the per-pixel test z > near cuts a
triangle that crosses the near plane (or passes behind the camera) exactly where a near
clipping plane would; a triangle with no vertex beyond `near` is dropped. The nearest covering
triangle wins (z-buffer); ties keep the candidate listed first.

Binning. The image is cut into T×T tiles. Each triangle's screen bounding box (of its part
beyond the near plane) is shrunk to the pixel centres it can contain and the tiles those lie
in. Every (tile, triangle) pair is listed in P = tiles·K static slots, the list is sorted by
(tile, nearest vertex depth), and each tile keeps its first K entries, the K candidates nearest
the camera. A pixel z-tests only its tile's candidates: O(H·W·K) work after an O(P log P) sort.
`Raster.overflow` counts the pairs that did not fit; when it is 0 the result is exact. When it
is not, the farthest candidates of crowded tiles were dropped: the front surface usually
survives, but pixels may show a farther triangle or the background. `tile_counts` tells the K a
mesh needs (size `capacity` from its maximum, outside jit).

Gradients. Which triangle a pixel sees is piecewise constant in the vertices (no gradient);
the winner's barycentrics and depth are recomputed differentiably, so interpolated attributes
carry gradients to vertex positions through the b_i. Silhouettes get theirs from `antialias`.

Antialiasing (analytic, after Laine et al. 2020, "Modular Primitives for High-Performance
Differentiable Rendering", nvdiffrast's `antialias`). For every horizontally and vertically
adjacent pixel pair whose triangle ids differ, each pixel's triangle is searched for a
silhouette edge (a mesh boundary edge, or one whose two faces face opposite ways, see
`edge_neighbors`) that crosses the segment between the two centres; if both have one, the
nearer triangle's counts. Let τ ∈ [0, 1] be the crossing's distance from the centre of the
pixel inside that triangle, c_in and c_out the two pixels' colours. A 1-pixel box filter along
the segment gives: τ > ½, the outside pixel takes (τ − ½)(c_in − c_out); τ < ½, the inside
pixel takes (½ − τ)(c_out − c_in). Edges more vertical than horizontal (|Δy| ≥ |Δx|) are
handled by horizontal pairs only, the others by vertical pairs only, so a diagonal edge is not
counted twice and the image stays continuous when an edge sweeps over a pixel centre (away
from silhouette corners and the image border). τ is a function of the edge's projected
endpoints, so the blend carries gradients to the positions of the vertices on silhouettes.
Pixel pairs, edge tests and blends are all vectorised: O(H·W) work, no tiles involved.

Bias of this choice (it is nvdiffrast's): the image is the point-sampled one except within
one pixel of silhouettes. Coverage there is a 1D box estimate along rows or columns, not a 2D
pixel area: exact for axis-aligned edges, off by up to about ⅛ of the colour step for 45°
edges, and wrong near silhouette corners and where two silhouettes share a pixel (blends add
up, and may exceed the true coverage); a pixel on the image border gets no blend from the
missing neighbour beyond it. Edges between triangles facing the same way (creases,
texture or colour seams, intersecting objects) are not antialiased and give no position
gradient. A silhouette that crosses a pixel pair is found only if it belongs to one of the
two triangles seen at the pixel centres: triangles smaller than a pixel can hide it, which
weakens silhouette gradients of very dense meshes (subpixel triangles) at low resolution.
Edges with an end closer than `near` are not antialiased. `render_mesh` returns normals and
depth point-sampled; pass them through `antialias` yourself if you need them blended.

`near`, `tile_size`, `capacity`, `cull_backfaces` and the image size are static (Python
values); meshes are any (V, 3) / (F, 3) arrays, and padding faces (i, i, i) draw nothing.
"""

from __future__ import annotations

from typing import Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax3d import cameras
from jax3d.errors import UserError

DEFAULT_NEAR = 1e-2
# Triangles with a smaller screen area (px²) are not drawn; silhouette edges with a shorter
# extent across a pixel pair (px) are not antialiased (see `_drawable`, `_crossing`).
MIN_AREA = 1e-6
MIN_EDGE = 1e-4
DEFAULT_TILE = 8
DEFAULT_CAPACITY = 128
# Pixel-space slack on triangle bounding boxes: rounding in the division by w must never
# drop a triangle from a tile whose pixel it covers.
_BOX_SLACK = 1e-3
# Candidates z-tested at once; bounds the (tiles, T², chunk) temporaries of the z-buffer.
_CHUNK = 32


@flax.struct.dataclass
class Raster:
  """What a pixel sees: the front-most triangle (−1 = background), its perspective-correct
  barycentrics (zero on background) and view depth (zero on background), and the number of
  (tile, triangle) pairs dropped by the tiles' fixed capacity (0: the result is exact)."""
  tri_id: jax.Array  # (H, W) int32
  bary: jax.Array  # (H, W, 3)
  depth: jax.Array  # (H, W)
  overflow: jax.Array  # () int32

  @property
  def mask(self) -> jax.Array:
    """(H, W) bool: a triangle covers the pixel centre."""
    return self.tri_id >= 0


def _check_points(points: jax.Array, name: str = "vertices") -> None:
  if points.ndim != 2 or points.shape[-1] != 3:
    raise UserError(f"{name} must be (V, 3), got shape {tuple(points.shape)}")


def _check_faces(faces: jax.Array) -> None:
  if faces.ndim != 2 or faces.shape[-1] != 3 or faces.shape[0] < 1:
    raise UserError(f"faces must be (F, 3) with F >= 1, got shape {tuple(faces.shape)}")
  if not jnp.issubdtype(faces.dtype, jnp.integer):
    raise UserError(f"faces must hold integer vertex indices, got dtype {faces.dtype}")


def _check_mesh(points: jax.Array, faces: jax.Array, name: str = "vertices") -> None:
  _check_points(points, name)
  _check_faces(faces)


def _check_settings(height: int, width: int, tile_size: int, capacity: int,
                    near: float) -> None:
  if int(height) < 1 or int(width) < 1:
    raise UserError(f"the image must be at least 1x1 pixels, got {height}x{width}")
  if int(tile_size) < 1 or int(capacity) < 1:
    raise UserError(f"tile_size and capacity must be at least 1, got {tile_size} and "
                    f"{capacity}")
  if not near > 0:
    raise UserError(f"near must be positive, got {near}")


def project(vertices: jax.Array, camera: cameras.Camera) -> jax.Array:
  """Homogeneous pixel coordinates (V, 3) of world vertices (V, 3) seen by one camera.

  With p_c = R^T (p − o) the camera-space point, f the focal length in pixels and (W, H) the
  image size: w = −p_c,z, h = (f p_c,x + w W/2, −f p_c,y + w H/2, w), so that h_x / w and
  h_y / w are `cameras.project`'s pixel coordinates. vmap for several cameras.
  """
  _check_points(vertices)
  chex.assert_shape(camera.c2w, (4, 4))
  p_cam = (vertices - camera.position) @ camera.c2w[:3, :3]
  w = -p_cam[:, 2]
  focal = camera.focal.astype(vertices.dtype)
  return jnp.stack([focal * p_cam[:, 0] + 0.5 * camera.width * w,
                    -focal * p_cam[:, 1] + 0.5 * camera.height * w, w], axis=-1)


def to_screen(projected: jax.Array, near: float = DEFAULT_NEAR) -> tuple[jax.Array, jax.Array]:
  """(pixel coordinates (V, 2), view depth (V,)) of homogeneous vertices; the coordinates of
  vertices with depth ≤ near are meaningless (they are divided by 1 instead)."""
  w = projected[:, 2]
  return projected[:, :2] / jnp.where(w > near, w, 1.0)[:, None], w


def _edge_functions(h: jax.Array, px: jax.Array,
                    py: jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
  """([n_0, n_1, n_2], [w_0, w_1, w_2]) for triangles h (..., 3, 3) and pixel centres (px, py)
  broadcasting against h[..., 0, 0]: n_i = a_j c_k − c_j a_k, (i, j, k) cyclic, with
  a = h_x − p_x h_w, c = h_y − p_y h_w."""
  w = [h[..., i, 2] for i in range(3)]
  a = [h[..., i, 0] - px * w[i] for i in range(3)]
  c = [h[..., i, 1] - py * w[i] for i in range(3)]
  return [a[(i + 1) % 3] * c[(i + 2) % 3] - c[(i + 1) % 3] * a[(i + 2) % 3]
          for i in range(3)], w


def _determinant(tri: jax.Array) -> jax.Array:
  """det[h_0; h_1; h_2] (...,) of triangles (..., 3, 3): negative for front faces (counter-
  clockwise seen from the camera, outward normals of a counter-clockwise mesh)."""
  return jnp.sum(tri[..., 0, :] * jnp.cross(tri[..., 1, :], tri[..., 2, :]), axis=-1)


def _drawable(tri: jax.Array, cull_backfaces: bool, near: float) -> jax.Array:
  """(F,) bool: the triangle can cover a pixel (some vertex beyond near, not edge-on, and
  front-facing when culling). A triangle in front of the camera whose screen area is below
  MIN_AREA px² is dropped too: it almost never covers a pixel centre, and where it does, its
  barycentrics' gradients (~1/area²) overflow float32."""
  det = _determinant(tri)
  w = jnp.prod(tri[..., 2], axis=-1)
  tiny = (w > 0) & (jnp.abs(det) < 2.0 * MIN_AREA * w)  # det = 2·area·w_0·w_1·w_2
  ok = jnp.any(tri[..., 2] > near, axis=-1) & (det != 0) & ~tiny
  return ok & (det < 0) if cull_backfaces else ok


def _pixel_box(tri: jax.Array, height: int, width: int,
               near: float) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Inclusive ranges (j0, j1, i0, i1) (F,) of the pixel columns and rows whose centres lie
  in the screen bounding box of the triangle's part with w ≥ near (its vertices there and
  the points where its edges cross w = near); empty (j0 > j1 or i0 > i1) when there is none."""
  w = tri[..., 2]
  nxt = jnp.roll(tri, -1, axis=-2)
  w_next = nxt[..., 2]
  crosses = (w - near) * (w_next - near) < 0
  t = (w - near) / jnp.where(crosses, w - w_next, 1.0)
  cut = tri + t[..., None] * (nxt - tri)
  points = jnp.concatenate([tri, cut], axis=-2)
  ok = jnp.concatenate([w >= near, crosses], axis=-1)
  xy = points[..., :2] / jnp.where(ok, points[..., 2], 1.0)[..., None]
  size = jnp.array([width, height], xy.dtype)
  lo = jnp.min(jnp.where(ok[..., None], xy, jnp.inf), axis=-2)
  hi = jnp.max(jnp.where(ok[..., None], xy, -jnp.inf), axis=-2)
  lo = jnp.clip(lo - _BOX_SLACK, -1.0, size + 1.0)
  hi = jnp.clip(hi + _BOX_SLACK, -1.0, size + 1.0)
  first = jnp.maximum(jnp.ceil(lo - 0.5).astype(jnp.int32), 0)
  last = jnp.minimum(jnp.floor(hi - 0.5).astype(jnp.int32),
                     jnp.array([width - 1, height - 1], jnp.int32))
  return first[:, 0], last[:, 0], first[:, 1], last[:, 1]


def _tile_ranges(tri: jax.Array, height: int, width: int, tile_size: int,
                 cull_backfaces: bool, near: float):
  """Per triangle: its tile ranges (tx0, tx1, ty0, ty1) and its number of tiles (0 if it can
  cover no pixel centre)."""
  j0, j1, i0, i1 = _pixel_box(tri, height, width, near)
  keep = _drawable(tri, cull_backfaces, near) & (j0 <= j1) & (i0 <= i1)
  tx0, tx1 = j0 // tile_size, j1 // tile_size
  ty0, ty1 = i0 // tile_size, i1 // tile_size
  count = jnp.where(keep, (tx1 - tx0 + 1) * (ty1 - ty0 + 1), 0)
  zero = jnp.zeros_like(tx0)
  return ((jnp.where(keep, tx0, zero), jnp.where(keep, tx1, zero), jnp.where(keep, ty0, zero),
           jnp.where(keep, ty1, zero)), count)


def _grid(height: int, width: int, tile_size: int) -> tuple[int, int]:
  return -(-height // tile_size), -(-width // tile_size)


def tile_counts(projected: jax.Array, faces: jax.Array, height: int, width: int, *,
                tile_size: int = DEFAULT_TILE, cull_backfaces: bool = False,
                near: float = DEFAULT_NEAR) -> jax.Array:
  """Number of candidate triangles of each tile, (⌈H/T⌉, ⌈W/T⌉) int32: `rasterize` with
  `capacity` ≥ its maximum reports no overflow."""
  _check_mesh(projected, faces, "projected")
  _check_settings(height, width, tile_size, 1, near)
  tri = lax.stop_gradient(projected)[faces]
  (tx0, tx1, ty0, ty1), count = _tile_ranges(tri, height, width, tile_size, cull_backfaces,
                                             near)
  n_ty, n_tx = _grid(height, width, tile_size)
  one = (count > 0).astype(jnp.int32)
  # A 2D difference array: +1 at each box's corner, −1 past its edges, then prefix sums.
  diff = jnp.zeros((n_ty + 1, n_tx + 1), jnp.int32)
  diff = (diff.at[ty0, tx0].add(one).at[ty0, tx1 + 1].add(-one)
          .at[ty1 + 1, tx0].add(-one).at[ty1 + 1, tx1 + 1].add(one))
  return jnp.cumsum(jnp.cumsum(diff, axis=0), axis=1)[:n_ty, :n_tx]


def _bin(tri: jax.Array, height: int, width: int, tile_size: int, capacity: int,
         cull_backfaces: bool, near: float) -> tuple[jax.Array, jax.Array]:
  """(candidates (tiles, K) int32, −1 padded, nearest first; overflow () int32)."""
  (tx0, tx1, ty0, ty1), count = _tile_ranges(tri, height, width, tile_size, cull_backfaces,
                                             near)
  n_ty, n_tx = _grid(height, width, tile_size)
  n_tiles, num_faces = n_ty * n_tx, tri.shape[0]
  # More pairs than tiles·K would overflow some tile anyway; pairs past the slots are
  # dropped (in face order) and counted.
  slots = n_tiles * capacity
  ends = jnp.cumsum(count)
  total = ends[-1]
  pair = jnp.arange(slots, dtype=jnp.int32)
  face = jnp.minimum(jnp.searchsorted(ends, pair, side="right"), num_faces - 1)
  face = face.astype(jnp.int32)
  local = pair - (ends[face] - count[face])
  span = jnp.maximum(tx1[face] - tx0[face] + 1, 1)
  tile = (ty0[face] + local // span) * n_tx + tx0[face] + local % span
  tile = jnp.where(pair < total, tile, n_tiles)
  nearest = jnp.maximum(jnp.min(tri[..., 2], axis=-1), near)
  tile, _, face = lax.sort((tile, nearest[face], face), num_keys=2)
  bounds = jnp.searchsorted(tile, jnp.arange(n_tiles + 1, dtype=jnp.int32), side="left")
  start, listed = bounds[:-1], bounds[1:] - bounds[:-1]
  k = jnp.arange(capacity, dtype=jnp.int32)
  index = jnp.minimum(start[:, None] + k, slots - 1)
  candidates = jnp.where(k < listed[:, None], face[index], -1)
  overflow = total - jnp.sum(jnp.minimum(listed, capacity))
  return candidates, overflow.astype(jnp.int32)


def _zbuffer(tri: jax.Array, candidates: jax.Array, height: int, width: int, tile_size: int,
             near: float) -> jax.Array:
  """Triangle id (H, W) of the nearest candidate of its tile covering each pixel centre."""
  n_ty, n_tx = _grid(height, width, tile_size)
  n_tiles, capacity = candidates.shape
  chunk = min(capacity, _CHUNK)
  pad = -capacity % chunk
  candidates = jnp.pad(candidates, ((0, 0), (0, pad)), constant_values=-1)
  tile = jnp.arange(n_tiles)
  local = jnp.arange(tile_size * tile_size)
  px = ((tile % n_tx)[:, None] * tile_size + local % tile_size + 0.5).astype(tri.dtype)
  py = ((tile // n_tx)[:, None] * tile_size + local // tile_size + 0.5).astype(tri.dtype)
  px, py = px[..., None], py[..., None]  # (tiles, T², 1)

  def test(best, cand):  # cand: (tiles, chunk)
    h = tri[jnp.maximum(cand, 0)][:, None]  # (tiles, 1, chunk, 3, 3)
    n, w = _edge_functions(h, px, py)  # (tiles, T², chunk) each
    s = n[0] + n[1] + n[2]
    z = (n[0] * w[0] + n[1] * w[1] + n[2] * w[2]) / jnp.where(s != 0, s, 1.0)
    inside = ((n[0] * s >= 0) & (n[1] * s >= 0) & (n[2] * s >= 0) & (s != 0) & (z > near)
              & (cand >= 0)[:, None])
    z = jnp.where(inside, z, jnp.inf)
    k = jnp.argmin(z, axis=-1)
    z_best = jnp.take_along_axis(z, k[..., None], axis=-1)[..., 0]
    id_best = jnp.take_along_axis(cand, k, axis=-1)
    closer = z_best < best[0]
    return (jnp.where(closer, z_best, best[0]), jnp.where(closer, id_best, best[1])), None

  init = (jnp.full((n_tiles, tile_size * tile_size), jnp.inf, tri.dtype),
          jnp.full((n_tiles, tile_size * tile_size), -1, jnp.int32))
  chunks = candidates.reshape(n_tiles, -1, chunk).transpose(1, 0, 2)
  (_, ids), _ = lax.scan(test, init, chunks)
  ids = ids.reshape(n_ty, n_tx, tile_size, tile_size).transpose(0, 2, 1, 3)
  return ids.reshape(n_ty * tile_size, n_tx * tile_size)[:height, :width]


def _barycentrics(projected: jax.Array, faces: jax.Array,
                  tri_id: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Perspective-correct barycentrics (H, W, 3) and view depth (H, W) of each pixel's
  triangle (b_i = n_i / Σn, z = Σ b_i w_i; zero where tri_id < 0), differentiable in
  `projected`."""
  height, width = tri_id.shape
  hit = tri_id >= 0
  h = projected[faces[jnp.maximum(tri_id, 0)]]  # (H, W, 3, 3)
  px = (jnp.arange(width, dtype=h.dtype) + 0.5)[None, :]
  py = (jnp.arange(height, dtype=h.dtype) + 0.5)[:, None]
  n, w = _edge_functions(h, px, py)
  n, w = jnp.stack(n, axis=-1), jnp.stack(w, axis=-1)
  s = jnp.sum(n, axis=-1, keepdims=True)
  ok = hit[..., None] & (s != 0)
  bary = jnp.where(ok, n / jnp.where(ok, s, 1.0), 0.0)
  return bary, jnp.sum(bary * w, axis=-1)


def rasterize(projected: jax.Array, faces: jax.Array, height: int, width: int, *,
              tile_size: int = DEFAULT_TILE, capacity: int = DEFAULT_CAPACITY,
              cull_backfaces: bool = False, near: float = DEFAULT_NEAR) -> Raster:
  """Rasterizes triangles `faces` (F, 3) of homogeneous vertices `projected` (V, 3) (from
  `project`) into an H×W `Raster`: per pixel centre the nearest triangle with view depth
  z > near (see the module docstring for the tiling, `capacity` K candidates per
  `tile_size`² tile, and overflow). `cull_backfaces` drops triangles seen from behind
  (clockwise on screen for a counter-clockwise mesh). Barycentrics and depth are
  differentiable in `projected`."""
  _check_mesh(projected, faces, "projected")
  _check_settings(height, width, tile_size, capacity, near)
  frozen = lax.stop_gradient(projected)[faces]
  candidates, overflow = _bin(frozen, height, width, tile_size, capacity, cull_backfaces, near)
  tri_id = _zbuffer(frozen, candidates, height, width, tile_size, near)
  bary, depth = _barycentrics(projected, faces, tri_id)
  return Raster(tri_id=tri_id, bary=bary, depth=depth, overflow=overflow)


def interpolate(attributes: jax.Array, faces: jax.Array, raster: Raster) -> jax.Array:
  """Per-pixel attributes (H, W, C) = Σ_i b_i a[faces[t, i]] of vertex attributes (V, C)
  (colours, normals, world positions, …); zero where no triangle covers the pixel."""
  if attributes.ndim != 2:
    raise UserError(f"attributes must be (V, C), got shape {tuple(attributes.shape)}")
  values = attributes[faces[jnp.maximum(raster.tri_id, 0)]]  # (H, W, 3, C)
  out = jnp.einsum("hwi,hwic->hwc", raster.bary.astype(values.dtype), values)
  chex.assert_shape(out, raster.tri_id.shape + attributes.shape[-1:])
  return jnp.where(raster.mask[..., None], out, 0.0)


def edge_neighbors(faces: jax.Array) -> jax.Array:
  """(F, 3) int32: the face across edge k of each face (edge k joins vertices k and k + 1
  mod 3), −1 on boundary and degenerate edges. Edges shared by more than two faces are paired
  up in sorted order. Jit-able (one sort of the 3F edges): compute it once per topology."""
  _check_faces(faces)
  num_faces = faces.shape[0]
  ends = jnp.roll(faces, -1, axis=1)
  lo = jnp.minimum(faces, ends).reshape(-1).astype(jnp.int32)
  hi = jnp.maximum(faces, ends).reshape(-1).astype(jnp.int32)
  lo, hi, edge = lax.sort((lo, hi, jnp.arange(3 * num_faces, dtype=jnp.int32)), num_keys=2)
  same = (lo[1:] == lo[:-1]) & (hi[1:] == hi[:-1])
  with_next = jnp.concatenate([same, jnp.zeros((1,), bool)])
  with_prev = jnp.concatenate([jnp.zeros((1,), bool), same])
  partner = jnp.where(with_next, jnp.roll(edge, -1), jnp.where(with_prev, jnp.roll(edge, 1), -1))
  partner = jnp.where((partner >= 0) & (lo != hi), partner // 3, -1)
  return jnp.zeros((3 * num_faces,), jnp.int32).at[edge].set(partner).reshape(num_faces, 3)


def _silhouette_edges(projected: jax.Array, faces: jax.Array, neighbors: jax.Array,
                      near: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Screen endpoints (F, 3, 2) ×2 of every face edge and whether it is a usable silhouette
  (F, 3): a boundary edge, or its faces face opposite ways, or its neighbour cannot be drawn;
  both ends beyond near."""
  tri = projected[faces]
  frozen = lax.stop_gradient(tri)
  front = _determinant(frozen) < 0
  drawable = _drawable(frozen, False, near)
  other = jnp.maximum(neighbors, 0)
  silhouette = ((neighbors < 0) | (front[:, None] != front[other]) | ~drawable[other])
  beyond = frozen[..., 2] > near
  usable = silhouette & beyond & jnp.roll(beyond, -1, axis=1) & drawable[:, None]
  xy = tri[..., :2] / jnp.where(beyond, tri[..., 2], 1.0)[..., None]
  return xy, jnp.roll(xy, -1, axis=1), usable


def _pixel_pairs(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Flat indices (N,) of the first and second pixel of every horizontal pair (i, j),
  (i, j + 1) and vertical pair (i, j), (i + 1, j), and whether the pair is horizontal."""
  index = np.arange(height * width).reshape(height, width)
  first = np.concatenate([index[:, :-1].ravel(), index[:-1, :].ravel()])
  second = np.concatenate([index[:, 1:].ravel(), index[1:, :].ravel()])
  horizontal = np.arange(first.size) < height * (width - 1)
  return first, second, horizontal


def _crossing(tri_id: jax.Array, along: jax.Array, across: jax.Array, direction: float,
              horizontal: jax.Array, start: jax.Array, end: jax.Array,
              usable: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Where a usable silhouette edge of each pair's triangle `tri_id` (N,) crosses the segment
  from its pixel centre towards the pair's other centre: (τ ∈ [0, 1], the distance from the
  centre, and found) (N,).

  In the pair's frame (coordinate p along the segment, q across it; p = x for horizontal
  pairs) the edge s_0 + μ (s_1 − s_0) meets the segment's line q = q_c at μ = (q_c − s_0,q)
  / Δq, p* = s_0,p + μ Δp; it counts when μ and τ = ±(p* − p_c) lie in [0, 1] and the edge
  belongs to this pair direction: |Δq| ≥ |Δp| for horizontal pairs, |Δq| > |Δp| for
  vertical ones (so an edge at 45° is handled once).
  """
  t = jnp.maximum(tri_id, 0)
  s0, s1 = start[t], end[t]  # (N, 3, 2)
  h = horizontal[:, None]
  p0, q0 = jnp.where(h, s0[..., 0], s0[..., 1]), jnp.where(h, s0[..., 1], s0[..., 0])
  dp = jnp.where(h, s1[..., 0], s1[..., 1]) - p0
  dq = jnp.where(h, s1[..., 1], s1[..., 0]) - q0
  steep = jnp.where(h, jnp.abs(dq) >= jnp.abs(dp), jnp.abs(dq) > jnp.abs(dp))
  ok = usable[t] & (tri_id >= 0)[:, None] & steep & (jnp.abs(dq) > MIN_EDGE)
  mu = (across[:, None] - q0) / jnp.where(ok, dq, 1.0)
  tau = direction * (p0 + mu * dp - along[:, None])
  ok = ok & (mu >= 0) & (mu <= 1) & (tau >= 0) & (tau <= 1)
  k = jnp.argmin(jnp.where(ok, tau, jnp.inf), axis=-1)
  tau = jnp.take_along_axis(tau, k[:, None], axis=-1)[:, 0]
  found = jnp.any(ok, axis=-1)
  return jnp.where(found, tau, 0.0), found


def antialias(image: jax.Array, raster: Raster, projected: jax.Array, faces: jax.Array,
              neighbors: jax.Array | None = None, *, near: float = DEFAULT_NEAR) -> jax.Array:
  """Analytic silhouette antialiasing of `image` (H, W, C) rendered from `raster` (module
  docstring): differentiable in the image and in `projected` (V, 3) through the silhouette
  edges' crossings. `neighbors` = `edge_neighbors(faces)` (computed here if None)."""
  _check_mesh(projected, faces, "projected")
  if image.ndim != 3 or image.shape[:2] != raster.tri_id.shape:
    raise UserError(f"image must be (H, W, C) with (H, W) = {raster.tri_id.shape}, got "
                    f"shape {tuple(image.shape)}")
  if neighbors is None:
    neighbors = edge_neighbors(faces)
  chex.assert_shape(neighbors, faces.shape)
  height, width, channels = image.shape
  first, second, horizontal = _pixel_pairs(height, width)
  if first.size == 0:
    return image
  start, end, usable = _silhouette_edges(projected, faces, neighbors, near)
  dtype = start.dtype
  rows, cols = np.divmod(first, width)
  along = jnp.asarray(np.where(horizontal, cols, rows) + 0.5, dtype)
  across = jnp.asarray(np.where(horizontal, rows, cols) + 0.5, dtype)
  horizontal = jnp.asarray(horizontal)
  ids = raster.tri_id.reshape(-1)
  depth = lax.stop_gradient(raster.depth).reshape(-1)
  id_a, id_b = ids[first], ids[second]
  tau_a, hit_a = _crossing(id_a, along, across, 1.0, horizontal, start, end, usable)
  tau_b, hit_b = _crossing(id_b, along + 1.0, across, -1.0, horizontal, start, end, usable)
  differ = id_a != id_b
  use_a = differ & hit_a & (~hit_b | (depth[first] <= depth[second]))
  use_b = differ & hit_b & ~use_a
  tau = jnp.where(use_a, tau_a, tau_b)
  w_in, w_out = jnp.maximum(0.5 - tau, 0.0), jnp.maximum(tau - 0.5, 0.0)
  to_a = jnp.where(use_a, w_in, jnp.where(use_b, w_out, 0.0))
  to_b = jnp.where(use_a, w_out, jnp.where(use_b, w_in, 0.0))
  flat = image.reshape(-1, channels)
  step = flat[second] - flat[first]  # c_b − c_a
  out = flat.at[first].add(to_a[:, None] * step).at[second].add(-to_b[:, None] * step)
  return out.reshape(image.shape)


def vertex_normals(vertices: jax.Array, faces: jax.Array) -> jax.Array:
  """Unit vertex normals (V, 3): the area-weighted sum of the normals (v_1 − v_0) × (v_2 − v_0)
  of the faces around each vertex (outward for counter-clockwise faces)."""
  _check_mesh(vertices, faces)
  tri = vertices[faces]
  face_n = jnp.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  summed = jnp.zeros_like(vertices).at[faces.reshape(-1)].add(jnp.repeat(face_n, 3, axis=0))
  return _unit(summed)


def _unit(x: jax.Array) -> jax.Array:
  """x/|x| along the last axis; 0 where |x|² <= 1e-24 (a zero vector, or normals of faces
  with areas ~1e-12, whose gradients ~1/|x| overflow float32), with finite gradients there."""
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  nonzero = sq > 1e-24
  return jnp.where(nonzero, x * lax.rsqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def render_mesh(vertices: jax.Array, faces: jax.Array, vertex_colors: jax.Array | None,
                camera: cameras.Camera, background: jax.Array | None = None, *,
                texture: Callable[[jax.Array], jax.Array] | None = None,
                aa: bool = True, tile_size: int = DEFAULT_TILE,
                capacity: int = DEFAULT_CAPACITY, cull_backfaces: bool = False,
                near: float = DEFAULT_NEAR,
                neighbors: jax.Array | None = None) -> dict[str, jax.Array]:
  """Renders a vertex-coloured or textured mesh for one camera (vmap over cameras).

  Colour per pixel: the interpolated `vertex_colors` (V, 3), or `texture(x)` (N, 3) -> (N, 3)
  at the pixel's interpolated world position x (a texture field, e.g. a NeRF's albedo;
  pass vertex_colors None). Returns 'rgb' (H, W, 3) = colour + (1 − coverage) · background
  (black if None; (3,) or (H, W, 3)), 'opacity' (H, W) (the coverage mask), both antialiased
  when `aa`; point-sampled 'depth' (H, W) (view depth, 0 on background), 'normal' (H, W, 3)
  (interpolated unit `vertex_normals` in world space, 0 on background) and 'tri_id' (H, W);
  'overflow' () (0 when the tiles held every candidate).
  """
  _check_mesh(vertices, faces)
  if (vertex_colors is None) == (texture is None):
    raise UserError("render_mesh needs exactly one of vertex_colors and texture")
  if vertex_colors is not None and vertex_colors.shape != vertices.shape:
    raise UserError(f"vertex_colors must be (V, 3) like vertices {tuple(vertices.shape)}, "
                    f"got {tuple(vertex_colors.shape)}")
  projected = project(vertices, camera)
  raster = rasterize(projected, faces, camera.height, camera.width, tile_size=tile_size,
                     capacity=capacity, cull_backfaces=cull_backfaces, near=near)
  attributes = [vertex_normals(vertices, faces)]
  attributes.append(vertices if vertex_colors is None else vertex_colors)
  values = interpolate(jnp.concatenate(attributes, -1), faces, raster)
  normal, color = values[..., :3], values[..., 3:]
  coverage = raster.mask.astype(values.dtype)[..., None]
  if texture is not None:
    h, w = raster.tri_id.shape
    color = texture(color.reshape(h * w, 3)).reshape(h, w, 3) * coverage
  bg = jnp.zeros((3,), values.dtype) if background is None else jnp.asarray(background)
  image = jnp.concatenate([color + (1.0 - coverage) * bg, coverage], axis=-1)
  if aa:
    image = antialias(image, raster, projected, faces, neighbors, near=near)
  return {"rgb": image[..., :3], "opacity": image[..., 3], "depth": raster.depth,
          "normal": _unit(normal), "tri_id": raster.tri_id,
          "overflow": raster.overflow}


__all__ = ["Raster", "project", "to_screen", "rasterize", "tile_counts", "interpolate",
           "edge_neighbors", "antialias", "vertex_normals", "render_mesh", "DEFAULT_NEAR",
           "DEFAULT_TILE", "DEFAULT_CAPACITY"]
