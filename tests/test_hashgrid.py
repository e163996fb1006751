"""Tests for jax3d.fields.hashgrid against a brute-force NumPy reference and finite differences."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax3d import configuration
from jax3d.errors import UserError
from jax3d.fields import hashgrid

# Resolutions 4, 8, 16, 32 (b = 2): levels 0 and 1 fit T = 1024 (125 and 729 vertices) and are
# indexed directly, levels 2 and 3 (4913 and 35937 vertices) are hashed.
CFG = hashgrid.HashGridConfig(num_levels=4, features_per_level=2, log2_table_size=10,
                              base_resolution=4, max_resolution=32)


def preset_grid(preset):
  """The hash grid of a dreamfusion preset's field."""
  c = configuration.load(f"dreamfusion:{preset}")
  return configuration.typed(hashgrid.HashGridConfig, c.field.hashgrid, "field.hashgrid")


@pytest.fixture(scope="module")
def table():
  # Unit-scale values (not the ±1e-4 init) so interpolation errors would show.
  return jax.random.normal(jax.random.PRNGKey(0), (4, 1024, 2), jnp.float32)


@functools.lru_cache(maxsize=None)
def _encode_fn(cfg):
  return jax.jit(functools.partial(hashgrid.encode, cfg=cfg))


def reference_encode(table: np.ndarray, x: np.ndarray, cfg) -> np.ndarray:
  """One point at a time, one level at a time, one corner at a time, in Python integers."""
  table = np.asarray(table, np.float64)
  big_l, t = cfg.num_levels, 2**cfg.log2_table_size
  b = math.exp((math.log(cfg.max_resolution) - math.log(cfg.base_resolution)) / (big_l - 1))
  out = np.zeros((len(x), big_l * cfg.features_per_level))
  for p, point in enumerate(np.asarray(x, np.float64)):
    for level in range(big_l):
      n = int(math.floor(cfg.base_resolution * b**level + 1e-6))
      pos = point * n
      cell = np.minimum(np.floor(pos), n - 1).astype(int)
      frac = pos - cell
      acc = np.zeros(cfg.features_per_level)
      for dx in (0, 1):
        for dy in (0, 1):
          for dz in (0, 1):
            i, j, k = cell[0] + dx, cell[1] + dy, cell[2] + dz
            if (n + 1)**3 <= t:
              row = i + j * (n + 1) + k * (n + 1)**2
            else:
              row = ((i * 1) ^ (j * 2654435761) ^ (k * 805459861)) % 2**32 % t
            weight = ((frac[0] if dx else 1 - frac[0]) * (frac[1] if dy else 1 - frac[1]) *
                      (frac[2] if dz else 1 - frac[2]))
            acc += weight * table[level, row]
      out[p, level * cfg.features_per_level:(level + 1) * cfg.features_per_level] = acc
  return out


def test_level_resolutions_geometric():
  assert hashgrid.level_resolutions(CFG) == (4, 8, 16, 32)
  sd = preset_grid("sd")  # the paper's: L 16, F 2, T 2^19, N 16..2048
  res = hashgrid.level_resolutions(sd)
  b = math.exp((math.log(2048) - math.log(16)) / 15)
  assert res[0] == 16 and res[-1] == 2048
  assert res == tuple(math.floor(16 * b**l + 1e-6) for l in range(16))
  assert hashgrid.dense_levels(CFG) == (True, True, False, False)
  assert hashgrid.output_dim(sd) == 32
  toy = preset_grid("toy")
  assert toy.log2_table_size < sd.log2_table_size and toy.max_resolution < sd.max_resolution


def test_init_shape_dtype_range():
  table = hashgrid.init(jax.random.PRNGKey(1), CFG)
  assert table.shape == (4, 1024, 2) and table.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(table))) <= 1e-4
  assert float(jnp.std(table)) > 1e-5


def test_encode_matches_reference(table):
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (64, 3)).astype(np.float32)
  # Include the cube's corners and faces, where the cell index is clamped.
  x = np.concatenate([x, np.array([[0, 0, 0], [1, 1, 1], [1, 0, 0.5], [0.25, 1, 0]],
                                  np.float32)])
  got = np.asarray(_encode_fn(CFG)(table, jnp.asarray(x)))
  want = reference_encode(np.asarray(table), x, CFG)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_encode_batch_shape_and_clamp(table):
  x = jax.random.uniform(jax.random.PRNGKey(2), (2, 3, 5, 3))
  out = _encode_fn(CFG)(table, x)
  assert out.shape == (2, 3, 5, hashgrid.output_dim(CFG))
  np.testing.assert_allclose(out.reshape(-1, 8), _encode_fn(CFG)(table, x.reshape(-1, 3)),
                             rtol=1e-6, atol=1e-6)
  outside = jnp.array([[-0.5, 0.3, 1.7]])
  np.testing.assert_allclose(_encode_fn(CFG)(table, outside),
                             _encode_fn(CFG)(table, jnp.array([[0.0, 0.3, 1.0]])), atol=1e-6)


def test_gradient_wrt_table_matches_finite_differences(table):
  x = jax.random.uniform(jax.random.PRNGKey(3), (16, 3))
  coeff = jax.random.normal(jax.random.PRNGKey(4), (16, 8))
  loss = jax.jit(lambda t: jnp.sum(coeff * hashgrid.encode(t, x, CFG)))
  grad = np.asarray(jax.jit(jax.grad(loss))(table))
  touched = np.argwhere(np.abs(grad) > 1e-3)
  untouched = np.argwhere(grad == 0)
  rng = np.random.default_rng(1)
  picks = np.concatenate([touched[rng.choice(len(touched), 8, replace=False)],
                          untouched[rng.choice(len(untouched), 2, replace=False)]])
  eps = 0.05  # The encoding is linear in the table, so the central difference is exact.
  for idx in map(tuple, picks):
    fd = (loss(table.at[idx].add(eps)) - loss(table.at[idx].add(-eps))) / (2 * eps)
    np.testing.assert_allclose(grad[idx], fd, rtol=2e-3, atol=2e-3)


def test_gradient_wrt_x_matches_finite_differences(table):
  rng = np.random.default_rng(2)
  eps = 1e-3
  res = np.array(hashgrid.level_resolutions(CFG))
  x = rng.uniform(0.05, 0.95, (400, 3))
  # Keep points whose central difference stays inside one cell at every level: there the
  # encoding is linear along each axis and the difference is exact.
  frac = (x[:, None, :] * res[None, :, None]) % 1.0
  ok = np.all((frac > 2 * eps * res.max()) & (frac < 1 - 2 * eps * res.max()), axis=(1, 2))
  x = jnp.asarray(x[ok][:8], jnp.float32)
  assert x.shape[0] == 8
  coeff = jax.random.normal(jax.random.PRNGKey(5), (8,))
  f = lambda p: jnp.sum(coeff * hashgrid.encode(table, p, CFG))
  grad = np.asarray(jax.jit(jax.grad(f))(x))
  for p in range(x.shape[0]):
    for d in range(3):
      step = jnp.zeros((3,)).at[d].set(eps)
      xp = x.at[p].add(step)
      xm = x.at[p].add(-step)
      fd = (f(xp) - f(xm)) / (2 * eps)
      np.testing.assert_allclose(grad[p, d], fd, rtol=1e-2, atol=2e-2)


def test_encoding_continuous_across_cell_boundaries(table):
  # x = 0.5 is a vertex plane of every level; 17/32 one of the finest level only.
  for boundary in (0.5, 17 / 32, 3 / 8):
    rng = np.random.default_rng(3)
    yz = rng.uniform(0.1, 0.9, (16, 2))
    left = np.concatenate([np.full((16, 1), boundary - 1e-5), yz], axis=1)
    right = np.concatenate([np.full((16, 1), boundary + 1e-5), yz], axis=1)
    fl = _encode_fn(CFG)(table, jnp.asarray(left, jnp.float32))
    fr = _encode_fn(CFG)(table, jnp.asarray(right, jnp.float32))
    # Slopes are at most ~N_l·|table| ≈ 32·4, so a 2e-5 step moves features by < 3e-3; a
    # wrong corner lookup would jump by O(1).
    assert float(jnp.max(jnp.abs(fl - fr))) < 5e-3


def test_bad_config_is_user_error():
  with pytest.raises(UserError):
    hashgrid.HashGridConfig(num_levels=4, features_per_level=2, log2_table_size=10,
                            base_resolution=64, max_resolution=32)
  given = dict(num_levels=4, features_per_level=2, log2_table_size=10, base_resolution=4,
               max_resolution=32)
  assert configuration.typed(hashgrid.HashGridConfig, given) == CFG
  with pytest.raises(UserError, match="field.hashgrid.num_levels.*integer"):
    configuration.typed(hashgrid.HashGridConfig, dict(given, num_levels=4.5), "field.hashgrid")
  with pytest.raises(UserError, match="field.hashgrid: .*max_resolution"):
    configuration.typed(hashgrid.HashGridConfig, dict(given, base_resolution=64),
                        "field.hashgrid")
