"""The mesh rasterizer against independent truth: a brute-force NumPy ray caster (float64
Möller–Trumbore over pixels × triangles, nearest hit in front of the near plane), central
finite differences of the antialiased image, and a silhouette fit by gradient descent."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax3d import cameras
from jax3d.errors import UserError
from jax3d.render import raster

H, W = 20, 36  # neither a multiple of the 8-pixel tiles
CAPACITY = 32


def reference(vertices, faces, camera, near=raster.DEFAULT_NEAR, cull=False):
  """Per-pixel (triangle id, barycentrics, view depth, world hit point) by casting the pixel
  centre's ray at every triangle, and the pixels whose answer rounding could flip (a centre
  within 1e-4 of an edge of a candidate, or two hits within 1e-4 in depth)."""
  v = np.asarray(vertices, np.float64)
  c2w = np.asarray(camera.c2w, np.float64)
  height, width = camera.height, camera.width
  focal = 0.5 * height / np.tan(0.5 * float(camera.fov_y))
  j, i = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
  # Unnormalised rays with camera-space z = −1: the hit distance t is the view depth.
  d_cam = np.stack([(j - 0.5 * width) / focal, -(i - 0.5 * height) / focal,
                    -np.ones_like(j)], -1)
  d = (d_cam @ c2w[:3, :3].T)[:, :, None, :]
  o = c2w[:3, 3]
  tri = v[np.asarray(faces)]
  v0, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
  p = np.cross(d, e2)
  det = np.sum(e1 * p, -1)
  inv = 1.0 / np.where(det == 0, 1e-300, det)
  tv = o - v0
  q = np.cross(tv, e1)
  b1, b2 = np.sum(tv * p, -1) * inv, np.sum(d * q, -1) * inv
  t = np.sum(e2 * q, -1) * inv
  bary = np.stack([1 - b1 - b2, b1, b2], -1)
  margin = bary.min(-1)
  hit = (margin >= 0) & (t > near) & (det != 0)
  if cull:
    hit &= np.sum(d * np.cross(e1, e2), -1) < 0
  z = np.where(hit, t, np.inf)
  order = np.argsort(z, -1)
  best = order[..., 0]
  z_sorted = np.take_along_axis(z, order, -1)
  ids = np.where(np.isfinite(z_sorted[..., 0]), best, -1)
  found = ids >= 0
  b = np.take_along_axis(bary, best[..., None, None].repeat(3, -1), -2)[..., 0, :]
  depth = np.where(found, z_sorted[..., 0], 0.0)
  front = np.where(found, z_sorted[..., 0], np.inf)[..., None] + 1e-4
  with np.errstate(invalid="ignore"):
    ambiguous = (np.any((np.abs(margin) < 1e-4) & (t > near) & (t < front), -1)
                 | (z_sorted[..., 1] - z_sorted[..., 0] < 1e-4)
                 | np.any(np.abs(t - near) < 1e-4, -1))
  points = np.where(found[..., None], o + depth[..., None] * d[:, :, 0], 0.0)
  return ids, np.where(found[..., None], b, 0.0), depth, ambiguous, points


def triangle_soup(seed, num=24):
  """`num` random, mostly overlapping triangles in [-1, 1]^3 (unshared vertices)."""
  rng = np.random.default_rng(seed)
  tri = rng.uniform(-0.8, 0.8, (num, 1, 3)) + rng.normal(0, 0.35, (num, 3, 3))
  return (jnp.asarray(tri.reshape(-1, 3), jnp.float32),
          jnp.arange(3 * num, dtype=jnp.int32).reshape(num, 3))


def random_camera(seed, distance=3.0, height=H, width=W):
  rng = np.random.default_rng(100 + seed)
  return cameras.from_spherical(rng.uniform(-180, 180), rng.uniform(-60, 60), distance, 40.0,
                                height, width)


@functools.partial(jax.jit, static_argnames=("height", "width", "capacity", "cull", "near"))
def raster_and_points(vertices, faces, camera, height, width, capacity, cull,
                      near=raster.DEFAULT_NEAR):
  projected = raster.project(vertices, camera)
  r = raster.rasterize(projected, faces, height, width, capacity=capacity,
                       cull_backfaces=cull, near=near)
  return r, raster.interpolate(vertices, faces, r)


def assert_matches(r, points, truth, max_ambiguous=0.02):
  ids, bary, depth, ambiguous, ref_points = truth
  ok = ~ambiguous
  assert ambiguous.mean() <= max_ambiguous
  np.testing.assert_array_equal(np.asarray(r.tri_id)[ok], ids[ok])
  np.testing.assert_allclose(np.asarray(r.bary)[ok], bary[ok], atol=1e-4)
  np.testing.assert_allclose(np.asarray(r.depth)[ok], depth[ok], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(points)[ok], ref_points[ok], atol=1e-4)


def test_project_agrees_with_cameras_project():
  vertices, _ = triangle_soup(0)
  cam = random_camera(0)
  xy, depth = raster.to_screen(raster.project(vertices, cam))
  ref_xy, ref_depth = cameras.project(cam, vertices)
  np.testing.assert_allclose(xy, ref_xy, rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(depth, ref_depth, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cull", [False, True])
def test_rasterize_matches_brute_force(seed, cull):
  vertices, faces = triangle_soup(seed)
  cam = random_camera(seed)
  r, points = raster_and_points(vertices, faces, cam, H, W, CAPACITY, cull)
  assert int(r.overflow) == 0
  truth = reference(vertices, faces, cam, cull=cull)
  assert 0.05 < np.mean(truth[0] >= 0) < 0.9  # a real picture: triangles and background
  assert_matches(r, points, truth)
  assert np.all(np.asarray(r.bary)[truth[0] < 0] == 0)


@pytest.mark.parametrize("near", [0.01, 0.9])
def test_triangles_through_the_near_plane_are_cut_there(near):
  # The camera sits at (1, 0, 0) looking at −x; triangles 0 and 1 reach behind it, 2 lies
  # wholly behind it, 3 is a backdrop.
  cam = cameras.from_spherical(0.0, 0.0, 1.0, 60.0, H, W)
  vertices = jnp.array([[3.0, -1, -0.5], [-1, 0.2, -0.6], [-0.5, -0.8, 0.7],
                        [0.9, 0.5, 0.5], [2.0, -0.5, 0.3], [-2, 1.5, -0.1],
                        [2, 0, 0], [3, 1, 0], [2.5, 0, 1],
                        [-1, -2, -2], [-1, 2, -2], [-1, 0, 2]], jnp.float32)
  faces = jnp.arange(12, dtype=jnp.int32).reshape(4, 3)
  r, points = raster_and_points(vertices, faces, cam, H, W, 8, False, near=near)
  truth = reference(vertices, faces, cam, near=near)
  assert {0, 1, 3} <= set(np.unique(truth[0])) and 2 not in truth[0]
  assert_matches(r, points, truth)
  if near < 0.5:
    return
  loss = lambda v: jnp.sum(raster.render_mesh(v, faces, v, cam, capacity=8, near=near)["rgb"])
  grad = jax.jit(jax.grad(loss))(vertices)
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_overflow_is_counted_and_enough_capacity_is_exact():
  vertices, faces = triangle_soup(3)
  cam = random_camera(3)
  counts = jax.jit(raster.tile_counts, static_argnums=(2, 3))(raster.project(vertices, cam),
                                                              faces, H, W)
  assert counts.shape == (3, 5) and 2 < int(counts.max()) <= CAPACITY
  truth = reference(vertices, faces, cam)
  small, _ = raster_and_points(vertices, faces, cam, H, W, 2, False)
  assert int(small.overflow) >= int(jnp.sum(jnp.maximum(counts - 2, 0))) > 0
  assert np.any(np.asarray(small.tri_id) != truth[0])  # wrong, but not silently
  r, points = raster_and_points(vertices, faces, cam, H, W, CAPACITY, False)
  assert int(r.overflow) == 0
  assert_matches(r, points, truth)


def test_edge_neighbors():
  # A fan of two triangles plus a degenerate padding face.
  faces = jnp.array([[0, 1, 2], [0, 2, 3], [5, 5, 5]])
  np.testing.assert_array_equal(raster.edge_neighbors(faces),
                                [[-1, -1, 1], [0, -1, -1], [-1, -1, -1]])
  # A tetrahedron: every edge has exactly one partner, and the relation is symmetric.
  tet = jnp.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
  nb = np.asarray(raster.edge_neighbors(tet))
  assert np.all(nb >= 0) and np.all(nb != np.arange(4)[:, None])
  for f in range(4):
    for k in range(3):
      assert f in nb[nb[f, k]]


# A two-triangle quad with varying vertex colours, and a flat grey triangle partly in front of
# it: the grey triangle's vertices change the image only through its silhouette.
QUAD_AND_TRIANGLE = np.array([[0, -0.6, -0.6], [0, 0.6, -0.55], [0, 0.65, 0.6], [0, -0.6, 0.6],
                              [0.5, -0.3, -0.2], [0.4, 0.9, 0.1], [0.45, -0.1, 0.8]])
QT_FACES = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6]], np.int32)
QT_COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]] + [[0.3] * 3] * 3)
BACKGROUND = np.array([0.2, 0.4, 0.6])


def weighted_image(vertices, camera, coeff):
  dtype = vertices.dtype
  out = raster.render_mesh(vertices, jnp.asarray(QT_FACES), jnp.asarray(QT_COLOURS, dtype),
                           camera, jnp.asarray(BACKGROUND, dtype), capacity=8)
  return jnp.sum(coeff * jnp.concatenate([out["rgb"], out["opacity"][..., None]], -1))


def test_gradients_match_finite_differences():
  cam = cameras.from_spherical(10.0, 5.0, 3.0, 40.0, 16, 16)
  coeff = np.random.default_rng(0).normal(size=(16, 16, 4))
  vertices = jnp.asarray(QUAD_AND_TRIANGLE, jnp.float32)
  loss = jax.jit(weighted_image)
  grad = np.asarray(jax.grad(loss)(vertices, cam, jnp.asarray(coeff, jnp.float32)))
  # The flat triangle's colour is constant: its vertices move the image only through its
  # antialiased silhouette.
  assert np.all(np.abs(grad[4:]).max(-1) > 0.1)
  eps = 1e-5
  with jax.enable_x64(True):
    cam64 = cameras.Camera(c2w=jnp.asarray(np.asarray(cam.c2w), jnp.float64),
                           fov_y=jnp.asarray(np.asarray(cam.fov_y), jnp.float64),
                           height=16, width=16)
    coeff64 = jnp.asarray(coeff)
    fd = np.zeros(QUAD_AND_TRIANGLE.shape)
    for idx in np.ndindex(fd.shape):
      step = np.zeros(fd.shape)
      step[idx] = eps
      fd[idx] = (loss(jnp.asarray(QUAD_AND_TRIANGLE + step), cam64, coeff64)
                 - loss(jnp.asarray(QUAD_AND_TRIANGLE - step), cam64, coeff64)) / (2 * eps)
  np.testing.assert_allclose(grad, fd, rtol=1e-3, atol=1e-3 * np.abs(fd).max())


def test_antialiased_silhouette_moves_continuously():
  """Sliding a steep silhouette edge (its corners far off screen) across 7 pixel columns in
  201 steps of 0.04 px: hard pixels flip from background to covered, antialiased ones move by
  about the step."""
  cam = cameras.from_spherical(0.0, 0.0, 3.0, 40.0, 16, 16)  # screen x = world y, y = −z
  faces = jnp.array([[0, 1, 2]], jnp.int32)

  @jax.jit
  def coverage(shift):
    v = jnp.array([[0.0, 0.0, 3.0], [0.0, 0.4, -3.0], [0.0, 5.0, 0.0]]) + jnp.array(
        [0.0, 1.0, 0.0]) * shift
    out = raster.render_mesh(v, faces, jnp.ones((3, 3)), cam, capacity=8)
    return out["opacity"], (out["tri_id"] >= 0).astype(jnp.float32)

  soft, hard = map(np.asarray, jax.lax.map(coverage, jnp.linspace(-0.5, 0.5, 201)))
  assert np.abs(np.diff(hard, axis=0)).max() == 1 and hard.sum(0).std() > 0
  assert np.abs(np.diff(soft, axis=0)).max() < 0.1


def test_fit_polygon_to_silhouette():
  """A hexagon fan whose vertices are perturbed and squashed is fitted with Adam to its
  antialiased target silhouette."""
  cam = cameras.from_spherical(0.0, 0.0, 3.0, 40.0, 24, 24)
  angles = np.arange(6) * np.pi / 3
  ring = np.stack([np.zeros(6), 0.7 * np.cos(angles), 0.7 * np.sin(angles)], -1)
  target_v = jnp.asarray(np.concatenate([[[0, 0, 0]], ring]), jnp.float32)
  faces = jnp.array([[0, 1 + k, 1 + (k + 1) % 6] for k in range(6)], jnp.int32)

  @jax.jit
  def silhouette(v):
    out = raster.render_mesh(v, faces, jnp.ones((7, 3)), cam, capacity=8)
    return out["opacity"], out["tri_id"] >= 0

  target, target_mask = map(np.asarray, silhouette(target_v))
  opt = optax.adam(0.02)

  @jax.jit
  def step(v, state):
    loss, g = jax.value_and_grad(lambda v: jnp.mean((silhouette(v)[0] - target) ** 2))(v)
    updates, state = opt.update(g, state)
    return optax.apply_updates(v, updates), state, loss

  def iou(v):
    mask = np.asarray(silhouette(v)[1])
    return (mask & target_mask).sum() / (mask | target_mask).sum()

  rng = np.random.default_rng(0)
  v = np.asarray(target_v) + np.concatenate([np.zeros((7, 1)), rng.normal(0, 0.12, (7, 2))], 1)
  v = jnp.asarray(v * np.array([1, 0.7, 1.2]), jnp.float32)
  start_iou, state, losses = iou(v), opt.init(v), []
  for _ in range(100):
    v, state, loss = step(v, state)
    losses.append(float(loss))
  assert losses[-1] < 1e-3 * losses[0]
  assert start_iou < 0.75 and iou(v) > 0.97


def test_render_mesh_vmaps_over_cameras():
  vertices, faces = triangle_soup(4)
  cams = cameras.orbit(3, elevation_deg=20.0, distance=3.0, height=H, width=W)
  render = lambda c: raster.render_mesh(vertices, faces, 0.5 + 0.5 * vertices, c, jnp.ones(3),
                                        capacity=CAPACITY)
  batched = jax.jit(jax.vmap(render))(cams)
  assert batched["rgb"].shape == (3, H, W, 3) and batched["overflow"].shape == (3,)
  for k in range(3):
    ids, _, depth, ambiguous, points = reference(vertices, faces,
                                                 jax.tree.map(lambda a, k=k: a[k], cams))
    ok = ~ambiguous
    np.testing.assert_array_equal(np.asarray(batched["tri_id"][k])[ok], ids[ok])
    np.testing.assert_allclose(np.asarray(batched["depth"][k])[ok], depth[ok], atol=1e-5)
    # Away from edges, the colour is the interpolated world position, the background white.
    t = np.pad(np.asarray(batched["tri_id"][k]), 1, mode="edge")
    inner = ok & (t[1:-1, 1:-1] >= 0) & np.all(
        [t[1:-1, 1:-1] == n for n in (t[:-2, 1:-1], t[2:, 1:-1], t[1:-1, :-2], t[1:-1, 2:])], 0)
    assert inner.sum() > 10
    np.testing.assert_allclose(np.asarray(batched["rgb"][k])[inner], 0.5 + 0.5 * points[inner],
                               atol=1e-4)
    empty = np.asarray(batched["opacity"][k]) == 0
    assert empty.any() and np.all(np.asarray(batched["rgb"][k])[empty] == 1.0)
    assert int(batched["overflow"][k]) == 0


def test_padding_unused_vertices_and_collapsed_faces_keep_gradients_finite():
  """What a marching-tetrahedra mesh hands the rasterizer: (0, 0, 0) padding faces, vertices
  no face uses, and faces whose corners (nearly) coincide (an SDF ~0 at a grid vertex)."""
  cam = random_camera(5)
  rng = np.random.default_rng(5)
  vertices = rng.uniform(-0.6, 0.6, (9, 3)).astype(np.float32)
  vertices[7] = vertices[6] + 1e-7  # a face collapsed to (almost) a point
  vertices[8] = vertices[6] - 1e-7
  faces = jnp.array([[0, 1, 2], [1, 3, 2], [6, 7, 8], [0, 0, 0], [0, 0, 0]], jnp.int32)
  texture = lambda x: jax.nn.sigmoid(3.0 * x)
  weights = jnp.asarray(rng.normal(size=(H, W, 3)), jnp.float32)
  for kwargs in (dict(vertex_colors=None, texture=texture),
                 dict(vertex_colors=jnp.asarray(rng.uniform(size=(9, 3)), jnp.float32))):
    def loss(v, kwargs=kwargs):
      out = raster.render_mesh(v, faces, kwargs.get("vertex_colors"), cam, BACKGROUND,
                               texture=kwargs.get("texture"), capacity=8, cull_backfaces=False)
      return jnp.sum(out["rgb"] * weights) + jnp.sum(out["normal"])
    grad = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(vertices)))
    assert np.all(np.isfinite(grad)) and np.any(grad[:4] != 0)
    np.testing.assert_array_equal(grad[4:6], 0.0)  # unused vertices


def test_user_errors():
  vertices, faces = triangle_soup(0, num=2)
  cam = random_camera(0)
  with pytest.raises(UserError, match=r"vertices must be \(V, 3\)"):
    raster.project(vertices[:, :2], cam)
  with pytest.raises(UserError, match="faces must be"):
    raster.rasterize(raster.project(vertices, cam), faces[:, :2], 8, 8)
  with pytest.raises(UserError, match="integer"):
    raster.rasterize(raster.project(vertices, cam), faces.astype(jnp.float32), 8, 8)
  with pytest.raises(UserError, match="capacity"):
    raster.rasterize(raster.project(vertices, cam), faces, 8, 8, capacity=0)
  with pytest.raises(UserError, match="vertex_colors"):
    raster.render_mesh(vertices, faces, jnp.ones((2, 3)), cam)

  with pytest.raises(UserError, match="exactly one of vertex_colors and texture"):
    raster.render_mesh(vertices, faces, None, cam)
