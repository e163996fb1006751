"""Deferred shading: one central-difference normal per ray at the expected surface point."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax3d import cameras
from jax3d import configuration
from jax3d.fields import normals as normals_lib
from jax3d.priors import analytic
from jax3d.render import shading
from jax3d.render import volume
from jax3d.solids import render as solids_render
from jax3d.systems import dreamfusion

RADIUS = 0.5


def sphere_density(x, radius=RADIUS, sharpness=200.0):
  """A near-solid ball: σ = 1e3·sigmoid(k(r − |x|))."""
  return 1e3 * jax.nn.sigmoid(sharpness * (radius - jnp.linalg.norm(x, axis=-1)))


def test_surface_normals_of_a_ball_are_radial():
  dirs = jax.random.normal(jax.random.key(0), (64, 3))
  dirs = dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)
  points = RADIUS * dirs
  n = normals_lib.central_difference(lambda x: sphere_density(x, sharpness=20.0), points, 1e-2)
  np.testing.assert_allclose(np.asarray(n), np.asarray(dirs), atol=2e-3)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_shade_composite_closed_forms(mode):
  color = jnp.array([[0.6, 0.3, 0.15], [0.2, 0.4, 0.8]]) * 0.5  # Σ w c with Σ w = 0.5
  opacity = jnp.array([0.5, 0.5])
  normal = jnp.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
  light = jnp.array([[0.0, 0.6, 0.8], [-1.0, 0.0, 0.0]])  # n·l = 0.8 and -1 (unlit)
  got = shading.shade_composite(color, opacity, normal, light, mode, 0.35)
  lambert = np.array([0.35 + 0.65 * 0.8, 0.35])[:, None]
  want = {0: np.asarray(color), 1: np.asarray(color) * lambert,
          2: 0.5 * np.ones((2, 3)) * lambert}[mode]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


def test_deferred_shading_of_a_ball_matches_the_sphere_tracer():
  """Volume render + deferred Lambertian shading of a near-solid red ball reproduces the
  solids world's sphere-traced image (light at the camera, ambient 0.35, white background)."""
  cam = cameras.from_spherical(np.array([30.0]), np.array([20.0]), 2.0, 40.0, 32, 32)
  cam = jax.tree.map(lambda x: x[0], cam)
  red = jnp.array([1.0, 0.0, 0.0])
  traced = solids_render.render_batch("sphere", red[None], jax.tree.map(lambda x: x[None], cam),
                                     supersample=4)
  truth, mask = traced["image"][0], np.asarray(traced["mask"][0])

  def field(points, dirs):
    del dirs
    sigma = sphere_density(points)
    return {"density": sigma, "color": jnp.broadcast_to(red, points.shape)}
  cfg = volume.RenderConfig(num_samples=512, bound=1.0, stratified=False, min_near=0.0)
  out = volume.render_image(field, cam, None, cfg)
  o, d = cameras.rays(cam)
  x_s = o + d * out["depth"][..., None]
  normal = normals_lib.central_difference(sphere_density, x_s, 1e-2)
  rgb = shading.shade_composite(out["color"], out["opacity"], normal, cam.position - x_s, 1,
                                0.35)
  rgb = rgb + (1.0 - out["opacity"])[..., None]
  # `shading.deferred` is these steps in one call (white background, light at the camera).
  deferred, deferred_normal = shading.deferred(out, o, d, sphere_density, 1e-2, jnp.ones(3),
                                               cam.position, 1, 0.35)
  np.testing.assert_allclose(np.asarray(deferred), np.asarray(rgb), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(deferred_normal), np.asarray(normal), atol=1e-6)
  err = np.abs(np.asarray(rgb) - np.asarray(truth)).max(-1)
  # Pixels at the silhouette differ by anti-aliasing (4x supersampling vs a soft volume edge);
  # compare those whose 3x3 neighbourhood is wholly inside or outside the traced silhouette.
  padded = np.pad(mask, 1, mode="edge")
  windows = np.stack([padded[i:i + 32, j:j + 32] for i in range(3) for j in range(3)])
  solid = (windows.min(0) == 1.0) | (windows.max(0) == 0.0)
  assert solid.sum() > 0.6 * mask.size
  assert err[solid].max() < 0.08, err[solid].max()  # shading varies across a pixel near the limb
  assert err[solid].mean() < 0.01, err[solid].mean()


def test_gradient_through_deferred_shading_matches_finite_differences():
  """d/dr of the shaded image of a ball of radius r, by autodiff through the depth and the
  six density queries per ray, against central differences."""
  cam = cameras.from_spherical(np.array([0.0]), np.array([10.0]), 2.0, 40.0, 12, 12)
  cam = jax.tree.map(lambda x: x[0], cam)
  o, d = cameras.rays(cam)
  o, d = o.reshape(-1, 3), d.reshape(-1, 3)
  cfg = volume.RenderConfig(num_samples=128, bound=1.0, stratified=False, min_near=0.0)
  weights = jax.random.uniform(jax.random.key(3), (o.shape[0], 3))

  def image_loss(radius):
    density = lambda x: 50.0 * jax.nn.sigmoid(10.0 * (radius - jnp.linalg.norm(x, axis=-1)))

    def field(points, dirs):
      del dirs
      return {"density": density(points), "color": jnp.full(points.shape, 0.7)}
    out = volume.render_rays(field, o, d, None, cfg)
    x_s = o + d * out["depth"][:, None]
    normal = normals_lib.central_difference(density, x_s, 2e-2)
    rgb = shading.shade_composite(out["color"], out["opacity"], normal,
                                  jnp.array([0.3, -2.0, 0.8]) - x_s, 1, 0.35)
    return jnp.sum(weights * rgb)

  r, h = 0.45, 1e-3
  auto = jax.grad(image_loss)(r)
  numeric = (image_loss(r + h) - image_loss(r - h)) / (2 * h)
  np.testing.assert_allclose(float(auto), float(numeric), rtol=2e-2)


def test_dreamfusion_trains_with_surface_shading():
  c = configuration.load("dreamfusion:toy")
  c.views_per_step = 1
  c.camera.height = c.camera.width = 8
  c.field.hashgrid.update(num_levels=2, log2_table_size=8, base_resolution=4, max_resolution=8)
  c.field.hidden_dim = 8
  c.render.num_samples = 8
  c.shading.probs = (0.0, 0.5, 0.5)
  c.shading.normals = "surface"
  images = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
  prior = analytic.analytic_prior(images, lambda p: np.array([True, False]))
  system = dreamfusion.DreamFusion("p", configuration.typed(dreamfusion.Config, c), prior)
  assert not dreamfusion.needs_normals(system.config)  # no per-sample (second-order) normals
  state = system.init(jax.random.key(0))
  before = jax.tree.map(np.asarray, state.particles["params"])
  state, metrics = system.train_step(state, jax.random.key(1))
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  moved = jax.tree.map(lambda a, b: np.abs(a - np.asarray(b)).max(), before,
                       state.particles["params"])
  assert max(jax.tree.leaves(moved)) > 0


def test_unknown_shading_normals_is_a_user_error():
  from jax3d.errors import UserError  # pylint: disable=g-import-not-at-top
  c = configuration.load("dreamfusion:toy")
  c.shading.normals = "vertex"
  with pytest.raises(UserError, match="shading.normals"):
    configuration.typed(dreamfusion.Config, c)
