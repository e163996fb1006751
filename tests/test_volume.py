"""Tests for jax3d.render.volume: closed forms, sphere silhouettes, gradients, chunking."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax3d import cameras
from jax3d.fields import voxel
from jax3d.render import volume

SIGMA = 1.3
COLOUR = jnp.array([0.2, 0.5, 0.9])


def render_config(num_samples, stratified=True):
  """Ray marching through the cube [-1, 1]^3 from the ray origin on."""
  return volume.RenderConfig(num_samples=num_samples, bound=1.0, stratified=stratified,
                             min_near=0.0)


def constant_field(points, dirs):
  del dirs
  shape = points.shape[:-1]
  return {"density": jnp.full(shape, SIGMA), "rgb": jnp.broadcast_to(COLOUR, shape + (3,))}


def halfspace_field(points, dirs):
  """Density SIGMA where x > 0, else empty."""
  del dirs
  return {"density": jnp.where(points[..., 0] > 0, SIGMA, 0.0)}


def sphere_field(centre, radius):
  def field(points, dirs):
    del dirs
    inside = jnp.sum((points - centre)**2, axis=-1) < radius**2
    return {"density": jnp.where(inside, 1e4, 0.0),
            "rgb": jnp.broadcast_to(jnp.array([1.0, 0.0, 0.0]), points.shape)}
  return field


def chord_through_box(origins, dirs, bound):
  """Length of each ray inside [-bound, bound]^3, in float64 NumPy (independent of JAX)."""
  o, d = np.asarray(origins, np.float64), np.asarray(dirs, np.float64)
  with np.errstate(divide="ignore"):
    t0, t1 = (-bound - o) / d, (bound - o) / d
  near = np.maximum(np.max(np.minimum(t0, t1), -1), 0.0)
  far = np.min(np.maximum(t0, t1), -1)
  return np.maximum(far - near, 0.0)


@pytest.fixture(scope="module")
def random_rays():
  rng = np.random.default_rng(0)
  # Origins on a sphere of radius 2.5 aimed near the origin: some rays hit, some miss the box.
  o = rng.normal(size=(64, 3))
  o = 2.5 * o / np.linalg.norm(o, axis=-1, keepdims=True)
  target = rng.uniform(-1.6, 1.6, (64, 3))
  d = target - o
  d /= np.linalg.norm(d, axis=-1, keepdims=True)
  return jnp.asarray(o, jnp.float32), jnp.asarray(d, jnp.float32)


@pytest.mark.parametrize("stratified", [False, True])
def test_constant_density_matches_beer_lambert(random_rays, stratified):
  o, d = random_rays
  cfg = render_config(16)
  key = jax.random.PRNGKey(0) if stratified else None
  bg = jnp.array([1.0, 1.0, 0.0])
  out = jax.jit(lambda o, d, k: volume.render_rays(constant_field, o, d, k, cfg,
                                                   background={"rgb": bg}))(o, d, key)
  chord = chord_through_box(o, d, 1.0)
  assert 0 < np.sum(chord == 0) < len(chord)  # Both hits and misses are exercised.
  trans = np.exp(-SIGMA * chord)
  np.testing.assert_allclose(1 - out["opacity"], trans, rtol=1e-5, atol=1e-6)
  want_rgb = (1 - trans)[:, None] * np.asarray(COLOUR) + trans[:, None] * np.asarray(bg)
  np.testing.assert_allclose(out["rgb"], want_rgb, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.sum(out["deltas"], -1), chord, rtol=1e-5, atol=1e-5)
  missed = chord == 0
  np.testing.assert_array_equal(np.asarray(out["weights"])[missed], 0.0)
  # Samples lie in the box and increase along each ray.
  t = np.asarray(out["t"])
  assert np.all(np.diff(t[~missed], axis=-1) > 0)
  pts = np.asarray(o)[:, None] + t[..., None] * np.asarray(d)[:, None]
  assert np.all(np.abs(pts[~missed]) <= 1.0 + 1e-5)


def test_stratified_jitter_varies_and_eval_is_midpoints(random_rays):
  o, d = random_rays
  cfg = render_config(8)
  t_eval = volume.render_rays(constant_field, o, d, None, cfg)["t"]
  t_a = volume.render_rays(constant_field, o, d, jax.random.PRNGKey(1), cfg)["t"]
  t_b = volume.render_rays(constant_field, o, d, jax.random.PRNGKey(2), cfg)["t"]
  near, far, hit = volume.intersect_box(o, d, 1.0)
  bins = (np.arange(8) + 0.5) / 8
  want = np.asarray(near)[:, None] + np.asarray(far - near)[:, None] * bins
  np.testing.assert_allclose(t_eval, want, rtol=1e-6, atol=1e-6)
  assert float(jnp.max(jnp.abs(t_a - t_b)[hit])) > 0.01
  # Each jittered sample stays within its bin.
  width = np.asarray(far - near)[:, None] / 8
  assert np.all(np.abs(np.asarray(t_a) - want) <= 0.5 * width + 1e-5)
  no_jitter = render_config(8, stratified=False)
  np.testing.assert_allclose(
      volume.render_rays(constant_field, o, d, jax.random.PRNGKey(1), no_jitter)["t"], t_eval)


def test_halfspace_slab_transmittance_and_depth():
  # Rays along +x from x = -3 cross the box over t in [2, 4]; density fills t in (3, 4]. With
  # an even sample count the slab face x = 0 is a bin edge, so the discrete result is exact.
  yz = jnp.array([[0.0, 0.0], [0.3, -0.7], [0.9, 0.9]])
  o = jnp.concatenate([jnp.full((3, 1), -3.0), yz], axis=1)
  d = jnp.tile(jnp.array([[1.0, 0.0, 0.0]]), (3, 1))
  out = volume.render_rays(halfspace_field, o, d, None, render_config(32))
  np.testing.assert_allclose(out["opacity"], 1 - np.exp(-SIGMA * 1.0), rtol=1e-5)
  # Expected termination depth given termination in the slab, for samples at bin midpoints:
  # Σ_i t_i (e^{-σ(i)δ} − e^{-σ(i+1)δ}) / (1 − e^{-σ·1}), with 16 slab bins of width δ.
  delta = 1.0 / 16
  i = np.arange(16)
  t_mid = 3.0 + (i + 0.5) * delta
  w = np.exp(-SIGMA * i * delta) - np.exp(-SIGMA * (i + 1) * delta)
  np.testing.assert_allclose(out["depth"], np.sum(w * t_mid) / np.sum(w), rtol=1e-5)


@pytest.mark.parametrize("centre", [(0.0, 0.0, 0.0), (0.25, -0.2, 0.1)])
def test_hard_sphere_renders_tangent_cone_disc(centre):
  centre = np.array(centre)
  radius = 0.45
  camera = cameras.from_spherical(30.0, 20.0, 2.0, 40.0, 48, 48)
  cfg = render_config(128)
  out = jax.jit(lambda c: volume.render_image(sphere_field(jnp.asarray(centre), radius), c,
                                              None, cfg, chunk=1024))(camera)
  opacity = np.asarray(out["opacity"])
  # Truth: a pixel ray sees the sphere iff its angle to the centre is below the tangent-cone
  # half-angle asin(r / D).
  _, dirs = cameras.rays(camera)
  pos = np.asarray(camera.position, np.float64)
  to_centre = centre - pos
  dist = np.linalg.norm(to_centre)
  cos_angle = np.asarray(dirs, np.float64) @ (to_centre / dist)
  angle = np.arccos(np.clip(cos_angle, -1, 1))
  half_angle = np.arcsin(radius / dist)
  inside = angle < half_angle - 2e-3
  outside = angle > half_angle + 2e-3
  assert inside.sum() > 100 and outside.sum() > 100
  np.testing.assert_allclose(opacity[inside], 1.0, atol=1e-4)
  np.testing.assert_allclose(opacity[outside], 0.0, atol=1e-6)
  # Cross-check with the pinhole projection: the projected centre sees the sphere, and the
  # disc's area matches the cone's footprint in pixels (within the boundary pixels).
  (px, py), depth = cameras.project(camera, jnp.asarray(centre, jnp.float32))
  assert float(depth) > 0
  assert opacity[int(py), int(px)] > 0.999
  boundary = (~inside & ~outside).sum()
  assert abs((opacity > 0.5).sum() - (angle < half_angle).sum()) <= max(boundary, 2)
  # Depth at the centre pixel is the distance to the near surface (within one bin).
  ray_angle = angle[int(py), int(px)]
  t_hit = dist * np.cos(ray_angle) - np.sqrt(radius**2 - (dist * np.sin(ray_angle))**2)
  assert abs(float(out["depth"][int(py), int(px)]) - t_hit) < 2.0 * np.sqrt(3) / 128


@pytest.fixture(scope="module")
def tiny_voxel():
  cfg = voxel.VoxelConfig(resolution=4, channels=3, bound=1.0, radius=0.0,
                          density_shift=0.0, density_activation="softplus",
                          feature_activation="sigmoid", feature_init_scale=1.0)
  params = voxel.init(jax.random.PRNGKey(3), cfg)
  params["density"] = jax.random.uniform(jax.random.PRNGKey(4), (4, 4, 4), minval=-1,
                                         maxval=2.0)
  return cfg, params


def test_gradients_match_finite_differences(tiny_voxel):
  vcfg, params = tiny_voxel
  camera = cameras.from_spherical(20.0, 15.0, 2.5, 40.0, 6, 6)
  o, d = cameras.rays(camera)
  o, d = o.reshape(-1, 3), d.reshape(-1, 3)
  rcfg = render_config(16)
  coeff = jax.random.normal(jax.random.PRNGKey(5), (36, 3))

  def loss(p):
    field = lambda x, _: {"density": voxel.query(p, x, vcfg)["density"],
                          "rgb": voxel.query(p, x, vcfg)["features"]}
    out = volume.render_rays(field, o, d, jax.random.PRNGKey(6), rcfg,
                             background={"rgb": jnp.ones(3)})
    return jnp.sum(coeff * out["rgb"]) + jnp.sum(out["depth"]) + jnp.sum(out["opacity"])

  loss_fn = jax.jit(loss)
  grads = jax.jit(jax.grad(loss))(params)
  flat = {k: np.asarray(v) for k, v in grads.items()}
  assert np.abs(flat["density"]).max() > 1e-2 and np.abs(flat["features"]).max() > 1e-2
  rng = np.random.default_rng(0)
  eps = 1e-2
  for name in ("density", "features"):
    big = np.argwhere(np.abs(flat[name]) > 1e-2)
    for idx in map(tuple, big[rng.choice(len(big), 4, replace=False)]):
      plus = dict(params, **{name: params[name].at[idx].add(eps)})
      minus = dict(params, **{name: params[name].at[idx].add(-eps)})
      fd = (loss_fn(plus) - loss_fn(minus)) / (2 * eps)
      np.testing.assert_allclose(flat[name][idx], fd, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("stratified", [False, True])
def test_chunked_render_equals_unchunked(tiny_voxel, stratified):
  vcfg, params = tiny_voxel
  field = lambda x, _: {"density": voxel.query(params, x, vcfg)["density"],
                        "rgb": voxel.query(params, x, vcfg)["features"]}
  camera = cameras.from_spherical(-60.0, 30.0, 2.2, 45.0, 9, 11)
  cfg = render_config(12)
  key = jax.random.PRNGKey(7) if stratified else None
  bg = {"rgb": jnp.array([0.1, 0.2, 0.3])}
  chunked = volume.render_image(field, camera, key, cfg, background=bg, chunk=40)  # 99 rays
  whole = volume.render_image(field, camera, key, cfg, background=bg, chunk=10_000)
  o, d = cameras.rays(camera)
  rays = volume.render_rays(field, o.reshape(-1, 3), d.reshape(-1, 3), key, cfg, background=bg)
  assert chunked["rgb"].shape == (9, 11, 3) and chunked["opacity"].shape == (9, 11)
  assert "weights" not in chunked
  for name in ("rgb", "opacity", "depth"):
    np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(chunked[name].reshape(rays[name].shape), rays[name],
                               rtol=1e-6, atol=1e-6)
  kept = volume.render_image(field, camera, key, cfg, background=bg, chunk=40,
                             keep_samples=True)
  np.testing.assert_allclose(kept["weights"].reshape(99, 12), rays["weights"], atol=1e-6)
