"""Silhouettes of shapes and solids from the benchmark's held-out views.

The held-out views look at the origin from 8 azimuths at elevation 20° and from straight above,
with fov 40°, from distance 2. From there a view crops everything more than about 0.75 below
the centre, so each comparison frames the views on the union of what it compares
(`framing_distances`): a view keeps its direction and fov, and stays at distance 2 when all
of both shapes projects inside the image from there, else moves back along its direction to
the nearest distance from which all of it does. Both sides are then rendered from the same
cameras. "All of a shape" is a set of points whose convex hull holds it: a mesh's vertices or
a lattice's bound (`hull_points`), the true solid's over all its turns (`solid_hull_points`).

A shape with a mesh is rasterized exactly; a lattice-only shape is cast through its lattice.
Ground truth is sphere-traced (exact, as `render.render`'s mask) or cast through a lattice like
a lattice-only prediction.
"""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jax3d import cameras
from jax3d.fields import voxel
from jax3d.render import volume
from jax3d.solids import render
from jax3d.solids import scenes
from jax3d.solids import shapes

EVAL_AZIMUTHS_DEG = tuple(float(a) for a in range(0, 360, 45))
EVAL_ELEVATION_DEG = 20.0
EVAL_DISTANCE = 2.0
EVAL_FOV_DEG = 40.0
NUM_VIEWS = len(EVAL_AZIMUTHS_DEG) + 1
# Sides of the polygons that stand in for circles in `solid_hull_points`.
_RING_SIDES = 32


def heldout_cameras(image_size: int = 64,
                    distances: tuple[float, ...] | None = None) -> cameras.Camera:
  """The 9 held-out views: 8 azimuths at elevation 20°, then straight down; each at its
  distance in `distances` (default: all at EVAL_DISTANCE)."""
  az = np.array(EVAL_AZIMUTHS_DEG + (0.0,), np.float32)
  el = np.array([EVAL_ELEVATION_DEG] * len(EVAL_AZIMUTHS_DEG) + [90.0], np.float32)
  dist = np.asarray(EVAL_DISTANCE if distances is None else distances, np.float32)
  return cameras.from_spherical(az, el, dist, EVAL_FOV_DEG, image_size, image_size)


def framing_distances(points) -> tuple[float, ...]:
  """Per held-out view, a camera distance from which all `points` (N, 3) project inside the
  image: EVAL_DISTANCE when they already do from there, else the smallest distance along the
  view's direction at which they do (rounded up to 1e-4).

  Given points whose convex hull holds all that is seen (`hull_points`, `solid_hull_points`),
  nothing is cropped: a convex set projects into the hull of its points' projections. Hulls,
  not bounding boxes: the corners of a sphere's or a cone's box leave the image from distance
  2 while the solid does not, and views that fit keep distance 2, so a well-framed shape
  scores as it did before framing. No margin is needed, as pixel centres lie half a pixel
  inside the image's edge.
  """
  rig = heldout_cameras(1)  # for its rotations only
  pts = np.asarray(points, np.float64).reshape(-1, 3)
  tan_half = math.tan(0.5 * math.radians(EVAL_FOV_DEG))
  out = []
  for rot in np.asarray(rig.c2w[:, :3, :3], np.float64):
    q = pts @ rot  # (right, up, back) coordinates; the camera sits at back = distance.
    # A point projects inside iff |right|, |up| <= tan_half · (distance - back).
    need = q[:, 2] + np.abs(q[:, :2]).max(-1, initial=0.0) / tan_half
    d = float(need.max(initial=0.0))
    out.append(EVAL_DISTANCE if d <= EVAL_DISTANCE else math.ceil(d * 1e4) / 1e4)
  return tuple(out)


def _edge_ranges(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
  """Per lattice edge along `axis`, the part of it (in [0, 1] from its lower end) where the
  linear interpolation is positive, as (lo, hi); lo = inf, hi = -inf where there is none."""
  r = values.shape[0]
  v0 = np.take(values, np.arange(r - 1), axis=axis)
  v1 = np.take(values, np.arange(1, r), axis=axis)
  p0, p1 = v0 > 0, v1 > 0
  with np.errstate(divide="ignore", invalid="ignore"):
    t = v0 / (v0 - v1)
  lo = np.where(p0, 0.0, np.where(p1, t, np.inf))
  hi = np.where(p1, 1.0, np.where(p0, t, -np.inf))
  return lo, hi


def _lattice_hull_points(values: np.ndarray, bound: float) -> np.ndarray:
  """Points whose hull holds the positive set of the trilinear interpolation of `values`.

  Where it is positive in a cell, each of its coordinates lies in the positive part of one of
  the cell's 4 edges along that axis (it is linear along axis-parallel lines, so positive at an
  end of the segment through the point to a face, then of one on that face to an edge). The
  set thus lies in the boxes these parts span; returned are, per column of cells along z, the
  corners of the box around its cells' boxes.
  """
  r = values.shape[0]
  h = 2.0 * bound / (r - 1)
  box_lo, box_hi = [], []
  for axis in range(3):
    lo, hi = _edge_ranges(values, axis)
    others = [a for a in range(3) if a != axis]
    cell_lo, cell_hi = np.inf, -np.inf
    for d0, d1 in ((0, 0), (0, 1), (1, 0), (1, 1)):  # the cell's 4 edges along `axis`
      index = [slice(None)] * 3
      index[others[0]], index[others[1]] = slice(d0, d0 + r - 1), slice(d1, d1 + r - 1)
      cell_lo = np.minimum(cell_lo, lo[tuple(index)])
      cell_hi = np.maximum(cell_hi, hi[tuple(index)])
    start = np.arange(r - 1).reshape([-1 if a == axis else 1 for a in range(3)])
    box_lo.append((start + cell_lo).min(-1))  # in lattice steps, over the column's cells
    box_hi.append((start + cell_hi).max(-1))
  i, j = np.nonzero(np.isfinite(box_lo[0]))
  lo = np.stack([b[i, j] for b in box_lo], -1)
  hi = np.stack([b[i, j] for b in box_hi], -1)
  corners = np.stack([np.where(np.array(c, bool), hi, lo) for c in np.ndindex(2, 2, 2)], 1)
  return -bound + h * corners.reshape(-1, 3)


def hull_points(shape: shapes.Shape) -> np.ndarray:
  """Points (N, 3) whose convex hull holds all that the shape's silhouettes can show: a mesh's
  vertices, else the positive set of the lattice's trilinear interpolation."""
  if shape.triangles is not None:
    return shape.triangles.reshape(-1, 3)
  return _lattice_hull_points(shape.values, shape.bound)


@functools.lru_cache(maxsize=None)
def solid_hull_points(solid: str) -> np.ndarray:
  """Points (N, 3) whose convex hull holds the solid at every rotation about z.

  Each vertex (ρ, z) of a polygon that holds the solid's profile in the (radius, z) plane
  gives a ring of polygons circumscribing the circle of radius ρ at height z. The cube's
  profile is that of its circumscribed cylinder (the union of its turns).
  """
  scenes.index_of(solid)  # a UserError for unknown names
  if solid == "sphere":  # Half a 16-gon circumscribing the profile circle.
    a = np.linspace(-0.5 * np.pi, 0.5 * np.pi, 9)
    profile = scenes.SPHERE_RADIUS / np.cos(np.pi / 16) * np.stack([np.cos(a), np.sin(a)], -1)
  else:
    profile = {
        "cube": [(scenes.CUBE_HALF_EDGE * math.sqrt(2.0), -scenes.CUBE_HALF_EDGE),
                 (scenes.CUBE_HALF_EDGE * math.sqrt(2.0), scenes.CUBE_HALF_EDGE)],
        "cylinder": [(scenes.CYLINDER_RADIUS, -scenes.CYLINDER_HALF_HEIGHT),
                     (scenes.CYLINDER_RADIUS, scenes.CYLINDER_HALF_HEIGHT)],
        "cone": [(scenes.CONE_RADIUS, -scenes.CONE_HALF_HEIGHT),
                 (0.0, scenes.CONE_HALF_HEIGHT)],
        "torus": [(scenes.TORUS_MAJOR + scenes.TORUS_MINOR, -scenes.TORUS_MINOR),
                  (scenes.TORUS_MAJOR + scenes.TORUS_MINOR, scenes.TORUS_MINOR)],
    }[solid]
  a = 2.0 * np.pi * np.arange(_RING_SIDES) / _RING_SIDES
  ring = np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], -1) / np.cos(np.pi / _RING_SIDES)
  pts = np.concatenate([rho * ring + np.array([0.0, 0.0, z]) for rho, z in profile])
  pts.flags.writeable = False
  return pts


@functools.partial(jax.jit, static_argnames=("bound", "num_samples"))
def _cast(values, camera: cameras.Camera, bound: float, num_samples: int) -> jax.Array:
  """Lattice silhouettes (V, H, W): rays sampled uniformly inside the box [-bound, bound]^3."""
  frac = (jnp.arange(num_samples, dtype=jnp.float32) + 0.5) / num_samples

  def one(cam):
    o, d = cameras.rays(cam)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    near, far, hit = volume.intersect_box(o, d, bound)
    x = o[:, None] + (near[:, None] + frac * (far - near)[:, None])[..., None] * d[:, None]
    inside = jnp.all(jnp.abs(x) <= bound, axis=-1)  # interpolate clamps to the box
    v = jnp.where(inside, voxel.interpolate(values, x, bound), -1.0)
    return (hit & (jnp.max(v, -1) > 0)).reshape(cam.height, cam.width)
  return jax.lax.map(one, camera)


def _raster(triangles: np.ndarray, c2w: np.ndarray, fov_y: float, height: int,
            width: int) -> np.ndarray:
  """(H, W) bool: pixel centres covered by the projection of any triangle (F, 3, 3)."""
  c2w = np.asarray(c2w, np.float64)
  local = (triangles.reshape(-1, 3).astype(np.float64) - c2w[:3, 3]) @ c2w[:3, :3]
  depth = -local[:, 2]
  focal = 0.5 * height / math.tan(0.5 * float(fov_y))
  # Pixel coordinates as in cameras.project, swapped to (row, column) for grid_hits.
  safe = np.where(depth > 1e-6, depth, 1.0)
  pix = np.stack([-focal * local[:, 1] / safe + 0.5 * height,
                  focal * local[:, 0] / safe + 0.5 * width], -1).reshape(-1, 3, 2)
  in_front = (depth > 1e-6).reshape(-1, 3).all(-1)
  size = max(height, width)
  _, i, j, _ = shapes.grid_hits(pix[in_front], 0.5, 1.0, size, tol=1e-9)
  mask = np.zeros((size, size), bool)
  mask[i, j] = True
  return mask[:height, :width]


def silhouettes(shape: shapes.Shape, camera: cameras.Camera, num_samples: int | None = None
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
  return np.asarray(_cast(jnp.asarray(shape.values), camera, shape.bound, int(n)))


def rotate_rig(camera: cameras.Camera, deg: float) -> cameras.Camera:
  """The cameras rotated by `deg` about z: they see a shape rotated by -deg as the originals
  see the shape."""
  rot = np.eye(4, dtype=np.float32)
  rot[:3, :3] = np.asarray(shapes.rot_z(jnp.float32(deg)))
  return cameras.Camera(c2w=jnp.asarray(rot) @ camera.c2w, fov_y=camera.fov_y,
                        height=camera.height, width=camera.width)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU over the last two axes of boolean masks (1 where both are empty)."""
  inter = np.logical_and(a, b).sum((-2, -1))
  union = np.logical_or(a, b).sum((-2, -1))
  return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


@functools.lru_cache(maxsize=512)
def reference_silhouettes(solid: str, rotation_deg: float = 0.0, image_size: int = 64,
                          lattice_spec: tuple[int, float, int] | None = None,
                          distances: tuple[float, ...] | None = None) -> np.ndarray:
  """Silhouettes (9, S, S) of the solid rotated by `rotation_deg` about z from the held-out
  views at `distances`: sphere-traced (exact), or with `lattice_spec` = (resolution, bound,
  ray samples) cast through that lattice like a lattice-only prediction."""
  rig = heldout_cameras(image_size, distances)
  if lattice_spec is not None:
    resolution, bound, samples = lattice_spec
    shape = shapes.shape_from_sdf(solid, rotation_deg=rotation_deg, resolution=resolution,
                                  bound=bound)
    return silhouettes(shape, rig, samples)
  return np.asarray(render.masks(solid, rotate_rig(rig, -rotation_deg)))
