"""Tests for jax3d.fields.voxel: trilinear interpolation against NumPy, vertex exactness."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax3d import configuration
from jax3d.errors import UserError
from jax3d.fields import voxel


def config(**kwargs):
  """A VoxelConfig: SJC's Stable Diffusion setting (R 100, C 4, shift −1) with `kwargs`."""
  return voxel.VoxelConfig(**{**dict(resolution=100, channels=4, bound=1.0, radius=0.0,
                                     density_shift=-1.0, density_activation="softplus",
                                     feature_activation="identity", feature_init_scale=1.0),
                              **kwargs})


CFG = config(resolution=5, channels=3, bound=1.5, density_shift=-1.0)


@pytest.fixture(scope="module")
def params():
  p = voxel.init(jax.random.PRNGKey(0), CFG)
  p["density"] = jax.random.normal(jax.random.PRNGKey(1), p["density"].shape)
  return p


@pytest.fixture(scope="module")
def query_fn():
  return jax.jit(lambda p, x: voxel.query(p, x, CFG))


def reference_trilinear(grid: np.ndarray, x: np.ndarray, bound: float) -> np.ndarray:
  """Per point: find the cell by searching the vertex coordinates, blend its 8 corners."""
  grid = np.asarray(grid, np.float64)
  r = grid.shape[0]
  ticks = np.linspace(-bound, bound, r)
  out = []
  for p in np.clip(np.asarray(x, np.float64), -bound, bound):
    lo = [min(np.searchsorted(ticks, c, side="right") - 1, r - 2) for c in p]
    t = [(p[a] - ticks[lo[a]]) / (ticks[lo[a] + 1] - ticks[lo[a]]) for a in range(3)]
    acc = 0.0
    for dx in (0, 1):
      for dy in (0, 1):
        for dz in (0, 1):
          w = ((t[0] if dx else 1 - t[0]) * (t[1] if dy else 1 - t[1]) *
               (t[2] if dz else 1 - t[2]))
          acc = acc + w * grid[lo[0] + dx, lo[1] + dy, lo[2] + dz]
    out.append(acc)
  return np.stack(out)


def softplus(v):
  return np.logaddexp(0.0, v)


def test_init_and_memory():
  sd = configuration.typed(voxel.VoxelConfig, configuration.load("sjc:sd").field.voxel)
  assert sd == config()
  p = voxel.init(jax.random.PRNGKey(2), sd)
  assert p["density"].shape == (100, 100, 100)
  assert p["features"].shape == (100, 100, 100, 4)
  assert float(jnp.max(jnp.abs(p["density"]))) == 0.0
  assert 0.9 < float(jnp.std(p["features"])) < 1.1
  # SJC's grid: 100^3 vertices x 5 channels x 4 bytes x (params + 2 Adam moments) = 60 MB.
  assert voxel.memory_bytes(sd) == 60_000_000
  assert voxel.memory_bytes(CFG) == 3 * 4 * 125 * 4


def test_query_matches_numpy_trilinear(params, query_fn):
  rng = np.random.default_rng(0)
  x = rng.uniform(-1.7, 1.7, (200, 3)).astype(np.float32)  # Some points outside the cube.
  out = query_fn(params, jnp.asarray(x))
  assert out["density"].shape == (200,) and out["features"].shape == (200, 3)
  want_density = softplus(reference_trilinear(params["density"], x, 1.5) - 1.0)
  want_features = reference_trilinear(params["features"], x, 1.5)
  np.testing.assert_allclose(out["density"], want_density, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["features"], want_features, rtol=1e-5, atol=1e-5)


def test_exact_at_vertices(params, query_fn):
  verts = voxel.vertex_positions(CFG)
  # Vertex (i, j, k) sits at -bound + 2·bound·(i, j, k)/(R-1).
  np.testing.assert_allclose(verts[1, 2, 4], [-0.75, 0.0, 1.5], atol=1e-6)
  out = query_fn(params, verts)
  np.testing.assert_allclose(out["features"], params["features"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["density"], softplus(np.asarray(params["density"]) - 1.0),
                             rtol=1e-5, atol=1e-5)


def test_activations():
  cfg = config(resolution=2, channels=3, density_shift=0.5, density_activation="relu",
               feature_activation="sigmoid")
  p = {"density": jnp.full((2, 2, 2), -2.0), "features": jnp.zeros((2, 2, 2, 3))}
  out = voxel.query(p, jnp.zeros((1, 3)), cfg)
  np.testing.assert_allclose(out["density"], [0.0])
  np.testing.assert_allclose(out["features"], [[0.5, 0.5, 0.5]])
  p["density"] = jnp.full((2, 2, 2), 1.0)
  exp_cfg = config(resolution=2, channels=3, density_shift=-1.0, density_activation="exp")
  np.testing.assert_allclose(voxel.query(p, jnp.zeros((1, 3)), exp_cfg)["density"], [1.0],
                             rtol=1e-6)


def test_gradient_is_trilinear_weights(params):
  # d density_raw / d grid[vertex] equals the trilinear weight of that vertex.
  x = jnp.array([[0.1, -0.4, 1.2]])
  g = jax.grad(lambda grid: voxel.interpolate(grid, x, 1.5)[0])(params["density"])
  basis = np.zeros((5, 5, 5))
  nonzero = np.argwhere(np.asarray(g) != 0)
  assert len(nonzero) == 8
  for idx in map(tuple, nonzero):
    basis[:] = 0
    basis[idx] = 1.0
    np.testing.assert_allclose(g[idx], reference_trilinear(basis, np.asarray(x), 1.5)[0],
                               rtol=1e-5)
  np.testing.assert_allclose(jnp.sum(g), 1.0, rtol=1e-5)


def test_bad_config_is_user_error():
  with pytest.raises(UserError):
    config(resolution=1)
  with pytest.raises(UserError):
    config(feature_activation="tanh")
  given = dataclasses.asdict(config(resolution=8))
  assert configuration.typed(voxel.VoxelConfig, given) == config(resolution=8)
  with pytest.raises(UserError, match="unknown config key 'field.voxel.colour'"):
    configuration.typed(voxel.VoxelConfig, dict(given, colour=3), "field.voxel")


def test_laplace_density_is_volsdf():
  """σ = Ψ_β(s)/β, Ψ_β the Laplace(0, β) CDF: the integral of its density (VolSDF Eq. 2–3)."""
  beta = 0.05
  s = np.linspace(-0.4, 0.4, 17)
  fine = np.linspace(-2.0, 0.4, 240_001)
  pdf = np.exp(-np.abs(fine) / beta) / (2 * beta)
  cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(fine))])
  want = np.interp(s, fine, cdf) / beta
  np.testing.assert_allclose(voxel.laplace_density(jnp.asarray(s), beta), want, rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(voxel.laplace_density(jnp.zeros(()), beta), 0.5 / beta)


def test_init_radius_starts_from_a_ball():
  cfg = config(resolution=9, channels=3, density_shift=0.0, density_activation="laplace",
               density_beta=0.05, init_radius=0.5, feature_activation="sigmoid")
  p = voxel.init(jax.random.PRNGKey(0), cfg)
  verts = np.asarray(voxel.vertex_positions(cfg))
  np.testing.assert_allclose(p["density"], 0.5 - np.linalg.norm(verts, axis=-1), atol=1e-6)
  on_surface = jnp.array([[0.5, 0.0, 0.0], [0.0, 0.0, -0.5]])  # on grid lines: exact there
  np.testing.assert_allclose(voxel.query(p, on_surface, cfg)["density"], [10.0, 10.0],
                             rtol=1e-5)
  inside = voxel.query(p, jnp.zeros((1, 3)), cfg)["density"]
  np.testing.assert_allclose(inside, [(1 - 0.5 * np.exp(-10.0)) / 0.05], rtol=1e-5)
  with pytest.raises(UserError, match="density_beta"):
    config(density_beta=0.0)


def test_beta_schedule_is_geometric_from_start_to_beta():
  cfg = config(density_activation="laplace", density_shift=0.0, density_beta=0.03,
               density_beta_start=0.3, beta_anneal=0.5)
  steps = jnp.array([0, 50, 100, 150, 200, 400])
  got = np.asarray(jax.vmap(lambda s: voxel.beta_schedule(cfg, s, 400))(steps))
  # β(step) = 0.3^(1−u)·0.03^u with u = step/200 up to 1: 0.3, 0.3·10^(−1/4), …, 0.03.
  want = 0.3 * 10.0 ** -np.minimum(np.asarray(steps) / 200.0, 1.0) / 0.03
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert float(voxel.beta_schedule(config(), 7, 400)) == 1.0
  # A query with the multiplier is the laplace density at β·multiplier.
  p = voxel.init(jax.random.PRNGKey(0), dataclasses.replace(cfg, resolution=4))
  p["density"] = jax.random.normal(jax.random.PRNGKey(1), p["density"].shape)
  x = jax.random.uniform(jax.random.PRNGKey(2), (16, 3), minval=-1.0, maxval=1.0)
  raw = voxel.interpolate(p["density"], x, 1.0)
  np.testing.assert_allclose(
      voxel.query(p, x, dataclasses.replace(cfg, resolution=4), 4.0)["density"],
      voxel.laplace_density(raw, 0.12), rtol=1e-5)
  with pytest.raises(UserError, match="density_beta_start"):
    config(density_beta_start=0.3)  # softplus has no β
  with pytest.raises(UserError, match="beta_anneal"):
    config(density_activation="laplace", beta_anneal=0.0)


def test_eikonal_loss_of_distance_fields():
  cfg = config(resolution=11, channels=1)
  x = np.asarray(voxel.vertex_positions(cfg))
  n = np.array([2.0, -1.0, 2.0]) / 3.0
  plane = x @ n - 0.2  # an exact signed distance: |∇| = 1 everywhere
  assert float(voxel.eikonal_loss(jnp.asarray(plane), 1.0)) < 1e-10
  np.testing.assert_allclose(voxel.eikonal_loss(jnp.asarray(3.0 * plane), 1.0), 4.0,
                             rtol=1e-5)  # |∇| = 3
  # A sphere's distance about an off-grid centre, whose kink no interior vertex straddles
  # exactly: the central differences of |x − c| stay close to unit length.
  sphere = np.linalg.norm(x - np.array([0.05, 0.03, -0.02]), axis=-1)
  assert float(voxel.eikonal_loss(jnp.asarray(sphere), 1.0)) < 0.02
