"""Tests for jax3d.fields.nerf: blob, activations, normals, gradients; and the shading modes
(render.shading) and regularisers (guidance.regularizers) applied to its outputs."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax3d import configuration
from jax3d.errors import UserError
from jax3d.fields import hashgrid
from jax3d.fields import nerf
from jax3d.guidance import regularizers
from jax3d.render import shading

GRID = hashgrid.HashGridConfig(num_levels=4, features_per_level=2, log2_table_size=10,
                               base_resolution=4, max_resolution=32)
CFG = nerf.NeRFConfig(hashgrid=GRID, bound=1.0, radius=0.0, hidden_dim=16,
                      num_hidden_layers=1, density_activation="softplus", blob_kind="gaussian",
                      blob_density=5.0, blob_radius=0.3, normal_method="finite_difference",
                      normal_eps=1e-2)
# Shared jitted entry points (cfg static) so each config compiles once per module.
QUERY = jax.jit(nerf.query, static_argnums=(2,), static_argnames=("with_normals",))
DENSITY = jax.jit(nerf.density, static_argnums=(2,))
NORMALS = jax.jit(nerf.normals, static_argnums=(2,))


@pytest.fixture(scope="module")
def params():
  p = nerf.init(jax.random.PRNGKey(0), CFG)
  # Unit-scale table entries so that the network's output actually varies with x.
  p["encoding"] = jax.random.normal(jax.random.PRNGKey(1), p["encoding"].shape)
  return p


def blob_only(params):
  """Params whose MLP outputs exactly zero: the density is the activated blob alone."""
  p = jax.tree.map(lambda a: a, params)
  p["mlp"] = [dict(layer) for layer in p["mlp"]]
  p["mlp"][-1] = {"w": jnp.zeros_like(p["mlp"][-1]["w"]), "b": jnp.zeros_like(p["mlp"][-1]["b"])}
  return p


def test_init_shapes_and_query_ranges(params):
  fresh = nerf.init(jax.random.PRNGKey(2), CFG)
  assert fresh["encoding"].shape == (4, 1024, 2) and fresh["encoding"].dtype == jnp.float32
  assert [l["w"].shape for l in fresh["mlp"]] == [(8, 16), (16, 4)]
  x = jax.random.uniform(jax.random.PRNGKey(3), (2, 7, 3), minval=-1, maxval=1)
  out = QUERY(params, x, CFG)
  assert out["density"].shape == (2, 7) and out["albedo"].shape == (2, 7, 3)
  assert float(jnp.min(out["density"])) >= 0
  assert 0 < float(jnp.min(out["albedo"])) and float(jnp.max(out["albedo"])) < 1
  np.testing.assert_allclose(DENSITY(params, x, CFG), out["density"], rtol=1e-6)


@pytest.mark.parametrize("activation", ["softplus", "exp"])
def test_blob_density_closed_form(params, activation):
  cfg = dataclasses.replace(CFG, density_activation=activation)
  p = blob_only(params)
  x = jax.random.uniform(jax.random.PRNGKey(4), (32, 3), minval=-1, maxval=1)
  r2 = np.sum(np.asarray(x, np.float64)**2, -1)
  for kind in ("gaussian", "linear"):
    cfg_k = dataclasses.replace(cfg, blob_kind=kind)
    for scale in (1.0, 0.25, 0.0):
      shape = (np.exp(-r2 / (2 * 0.3**2)) if kind == "gaussian" else 1 - np.sqrt(r2) / 0.3)
      raw = scale * 5.0 * shape
      want = np.logaddexp(0, raw) if activation == "softplus" else np.exp(raw)
      # blob_scale is traced here (systems anneal it inside jit).
      got = DENSITY(p, x, cfg_k, jnp.float32(scale))
      np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("method", ["analytic", "finite_difference"])
def test_blob_normals_point_outward(params, method):
  # σ decreases with |x| for the blob alone, so −∇σ/|∇σ| = x/|x|.
  cfg = dataclasses.replace(CFG, normal_method=method, normal_eps=1e-3)
  p = blob_only(params)
  x = jax.random.uniform(jax.random.PRNGKey(5), (32, 3), minval=-0.6, maxval=0.6)
  n = NORMALS(p, x, cfg)
  want = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  np.testing.assert_allclose(n, want, atol=2e-3)
  q = QUERY(p, x, cfg, with_normals=True)
  np.testing.assert_allclose(q["normal"], n, atol=1e-4)
  np.testing.assert_allclose(q["density"], QUERY(p, x, cfg)["density"], rtol=1e-6)


def test_analytic_and_fd_normals_agree_on_smooth_network(params):
  # Away from hash-cell faces the field is smooth, so both methods agree for a small step.
  an = dataclasses.replace(CFG, normal_method="analytic")
  fd = dataclasses.replace(CFG, normal_method="finite_difference", normal_eps=1e-4)
  rng = np.random.default_rng(0)
  x = rng.uniform(-0.9, 0.9, (400, 3))
  frac = (((x + 1) / 2)[:, None, :] * 32) % 1.0  # finest level cells; coarser ones divide it
  x = jnp.asarray(x[np.all((frac > 0.05) & (frac < 0.95), axis=(1, 2))][:16], jnp.float32)
  n_an = NORMALS(params, x, an)
  n_fd = NORMALS(params, x, fd)
  assert float(jnp.min(jnp.sum(n_an * n_fd, -1))) > 0.98


def test_shade_modes_with_traced_index():
  albedo = jnp.array([[0.2, 0.4, 0.6], [0.9, 0.1, 0.3]])
  normal = jnp.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
  light = jnp.array([0.0, 0.6, 0.8])
  ambient = 0.2
  shade = jax.jit(shading.shade)
  lam = ambient + (1 - ambient) * np.maximum(np.array([0.8, 0.6]), 0)
  want = {"albedo": np.asarray(albedo), "lambertian": np.asarray(albedo) * lam[:, None],
          "textureless": np.ones((2, 3)) * lam[:, None]}
  for name, expected in want.items():
    got = shade(albedo, normal, light, jnp.int32(shading.shading_index(name)), ambient)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
  # Back-facing normals get only the ambient term; the light direction is normalised.
  back = shade(albedo, -normal, 5.0 * light, jnp.int32(1), ambient)
  np.testing.assert_allclose(back, ambient * np.asarray(albedo), rtol=1e-6)
  assert shading.SHADING_MODES == ("albedo", "lambertian", "textureless")
  with pytest.raises(UserError):
    shading.shading_index("phong")


def test_orientation_loss_hand_computed():
  d = jnp.array([[0.0, 0.0, -1.0]])  # rays travel along −z
  normals = jnp.array([[[0.0, 0.0, 1.0], [0.0, 0.6, -0.8], [1.0, 0.0, 0.0]]])
  weights = jnp.array([[0.5, 0.25, 0.25]])
  # Only the second normal faces away (n·d = 0.8): 0.25 · 0.8² = 0.16.
  np.testing.assert_allclose(regularizers.orientation_loss(weights, normals, d), 0.16, rtol=1e-6)
  per_sample = jnp.broadcast_to(d[:, None, :], normals.shape)
  np.testing.assert_allclose(regularizers.orientation_loss(weights, normals, per_sample), 0.16,
                             rtol=1e-6)
  two_rays = regularizers.orientation_loss(jnp.concatenate([weights, weights]),
                                   jnp.concatenate([normals, -normals]), jnp.concatenate([d, d]))
  # The flipped ray: first normal faces away (n·d = 1), weight 0.5 → 0.5; mean (0.16+0.5)/2.
  np.testing.assert_allclose(two_rays, 0.33, rtol=1e-6)
  gw = jax.grad(lambda w: regularizers.orientation_loss(w, normals, d))(weights)
  np.testing.assert_array_equal(gw, 0.0)
  gw = jax.grad(lambda w: regularizers.orientation_loss(w, normals, d, stop_weight_gradient=False))(
      weights)
  np.testing.assert_allclose(gw, [[0.0, 0.64, 0.0]], atol=1e-6)


def test_opacity_losses():
  o = jnp.array([0.0, 0.5, 1.0, 0.25])
  np.testing.assert_allclose(regularizers.opacity_loss(o), 0.4375, rtol=1e-6)
  h = lambda p: -p * np.log2(p) - (1 - p) * np.log2(1 - p)
  np.testing.assert_allclose(regularizers.opacity_loss(o, "entropy"), (1.0 + h(0.25)) / 4,
                             atol=1e-3)
  with pytest.raises(UserError):
    regularizers.opacity_loss(o, "l2")


def test_gradients_match_finite_differences(params):
  x = jax.random.uniform(jax.random.PRNGKey(6), (64, 3), minval=-1, maxval=1)
  coeff = jax.random.normal(jax.random.PRNGKey(7), (64, 4))

  def loss(p, x, coeff):
    q = nerf.query(p, x, CFG, blob_scale=0.5)
    return jnp.sum(coeff[:, 0] * q["density"]) + jnp.sum(coeff[:, 1:] * q["albedo"])

  grads = jax.jit(jax.grad(loss))(params, x, coeff)  # the float32 path under test
  # Central differences in float64 with a step far below any ReLU kink or cell face.
  eps = 1e-6
  with jax.enable_x64(True):
    to64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
    params64, x64, coeff64 = to64(params), to64(x), to64(coeff)
    loss64 = jax.jit(loss)
    rng = np.random.default_rng(1)
    checked = 0
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
      g = np.asarray(g)
      big = np.argwhere(np.abs(g) > 1e-2)
      for idx in map(tuple, big[rng.choice(len(big), 2, replace=False)]):
        def bump(delta):
          return jax.tree_util.tree_map_with_path(
              lambda pth, leaf: leaf.at[idx].add(delta) if pth == path else leaf, params64)
        fd = (loss64(bump(eps), x64, coeff64) - loss64(bump(-eps), x64, coeff64)) / (2 * eps)
        np.testing.assert_allclose(g[idx], fd, rtol=1e-3, atol=1e-4, err_msg=f"{path} {idx}")
        checked += 1
  assert checked == 10  # table + 2 layers x (w, b)


def test_config_typed_from_a_preset_and_errors():
  toy = configuration.load("dreamfusion:toy").field
  cfg = configuration.typed(nerf.NeRFConfig, dict(toy.to_dict(), bound=1.5), "field")
  assert cfg.hashgrid == configuration.typed(hashgrid.HashGridConfig, toy.hashgrid)
  assert cfg.bound == 1.5 and isinstance(cfg.hashgrid, hashgrid.HashGridConfig)
  grid = dict(toy.hashgrid.to_dict(), num_levels=2, log2_table_size=8)
  cfg = configuration.typed(nerf.NeRFConfig, dict(toy.to_dict(), hashgrid=grid), "field")
  assert cfg.hashgrid.num_levels == 2 and cfg.hashgrid.log2_table_size == 8
  hash(cfg)  # usable as a static jit argument
  with pytest.raises(UserError):
    dataclasses.replace(CFG, density_activation="relu")
  with pytest.raises(UserError):
    dataclasses.replace(CFG, normal_method="sobel")
  with pytest.raises(UserError, match="unknown config key 'field.blob_strength'"):
    configuration.typed(nerf.NeRFConfig, dict(toy.to_dict(), blob_strength=3.0), "field")
  del grid["max_resolution"]
  with pytest.raises(UserError, match="'field.hashgrid.max_resolution' is missing"):
    configuration.typed(nerf.NeRFConfig, dict(toy.to_dict(), hashgrid=grid), "field")


@pytest.mark.parametrize("kind", ["nerf", "voxel"])
def test_a_field_radius_empties_everything_outside_its_ball(params, kind):
  """A radiance field with radius r: density unchanged where |x| <= r and exactly 0 beyond,
  through `density` and `query` alike; colour unchanged."""
  from jax3d.fields import radiance, voxel  # pylint: disable=g-import-not-at-top
  if kind == "nerf":
    free, p = radiance.NeRFField(CFG), params
    bounded = radiance.NeRFField(dataclasses.replace(CFG, radius=0.6))
  else:
    vcfg = voxel.VoxelConfig(resolution=6, channels=3, bound=1.0, radius=0.0,
                             density_shift=0.5, density_activation="softplus",
                             feature_activation="sigmoid", feature_init_scale=1.0)
    free = radiance.VoxelField(vcfg)
    bounded = radiance.VoxelField(dataclasses.replace(vcfg, radius=0.6))
    p = free.init(jax.random.PRNGKey(3))
  x = jax.random.uniform(jax.random.PRNGKey(2), (4096, 3), minval=-1.0, maxval=1.0)
  inside = np.linalg.norm(np.asarray(x), axis=-1) <= 0.6
  assert 0.05 < inside.mean() < 0.5
  d_free, d_ball = np.asarray(free.density(p, x)), np.asarray(bounded.density(p, x))
  np.testing.assert_array_equal(d_ball[inside], d_free[inside])
  assert np.all(d_ball[~inside] == 0.0) and np.all(d_free[~inside] > 0.0)
  q_free, q_ball = free.query(p, x), bounded.query(p, x)
  np.testing.assert_array_equal(np.asarray(q_ball["density"]), d_ball)
  np.testing.assert_array_equal(np.asarray(q_ball["color"]), np.asarray(q_free["color"]))
