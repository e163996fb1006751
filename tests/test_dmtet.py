"""Tests for jax3d.fields.dmtet: the tet grid tiles the cube, marching tets against a per-tet
NumPy reference and closed-surface topology, gradients against finite differences, the mesh
regularisers against brute-force references, initialisation and compaction."""

from __future__ import annotations

import collections
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial
import trimesh

from jax3d.errors import UserError
from jax3d.fields import dmtet


def config(**kwargs) -> dmtet.DMTetConfig:
  return dmtet.DMTetConfig(**{**dict(resolution=16, bound=1.0, deform_scale=0.15), **kwargs})


march = jax.jit(dmtet.marching_tetrahedra)
regularisers = jax.jit(lambda v, f, m: (dmtet.normal_consistency(v, f, m),
                                        dmtet.laplacian_loss(v, f, m)))


def compact(sdf: np.ndarray, grid: dmtet.TetGrid, positions=None):
  positions = grid.vertices if positions is None else positions
  return dmtet.compact_mesh(*march(jnp.asarray(sdf, jnp.float32), jnp.asarray(positions), grid))


def undirected_edges(faces: np.ndarray) -> np.ndarray:
  e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
  return np.sort(e, axis=1)


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
  v = vertices[faces].astype(np.float64)
  return float(np.sum(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2]))) / 6.0)


def euler_characteristic(vertices: np.ndarray, faces: np.ndarray) -> int:
  return len(vertices) - len(np.unique(undirected_edges(faces), axis=0)) + len(faces)


def assert_closed_and_oriented(faces: np.ndarray):
  """Every edge in exactly two faces, once in each direction (consistent winding)."""
  _, counts = np.unique(undirected_edges(faces), axis=0, return_counts=True)
  assert np.all(counts == 2)
  directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
  assert len(np.unique(directed, axis=0)) == len(directed)


# --- the grid ---------------------------------------------------------------------------------


def test_grid_tiles_the_cube_with_positive_tets():
  n, bound = 3, 1.3
  grid = dmtet.tet_grid(n, bound)
  assert (len(grid.vertices), len(grid.tets), len(grid.edges)) == dmtet.grid_sizes(n)
  v = grid.vertices[grid.tets].astype(np.float64)
  vol = np.linalg.det(v[:, 1:] - v[:, :1]) / 6.0
  assert np.all(vol > 0)
  np.testing.assert_allclose(np.abs(vol).sum(), (2 * bound)**3, rtol=1e-6)
  # Each cell's 6 tets fill exactly that cell.
  h = 2 * bound / n
  cell = np.floor((v.mean(axis=1) + bound) / h).astype(int)
  assert np.all((v >= -bound + cell[:, None] * h - 1e-6) & (v <= -bound + (cell[:, None] + 1)
                                                            * h + 1e-6))
  per_cell = collections.defaultdict(float)
  for c, w in zip(map(tuple, cell), vol):
    per_cell[c] += w
  assert len(per_cell) == n**3
  np.testing.assert_allclose(list(per_cell.values()), h**3, rtol=1e-6)


def test_grid_is_conforming():
  n, bound = 3, 1.0
  grid = dmtet.tet_grid(n, bound)
  faces = collections.Counter(tuple(sorted(f)) for t in grid.tets
                              for f in itertools.combinations(t, 3))

  def on_boundary(face):  # all three corners on one side of the cube
    p = grid.vertices[list(face)]
    return np.any(np.all(np.isclose(p, bound), 0) | np.all(np.isclose(p, -bound), 0))

  boundary = [f for f in faces if on_boundary(f)]
  assert len(boundary) == 6 * n * n * 2  # two triangles per boundary square
  assert all(faces[f] == 1 for f in boundary)
  assert all(c == 2 for f, c in faces.items() if not on_boundary(f))


def test_edges_are_unique_and_match_the_tets():
  grid = dmtet.tet_grid(3, 1.0)
  assert np.all(grid.edges[:, 0] < grid.edges[:, 1])
  assert len(np.unique(grid.edges, axis=0)) == len(grid.edges)
  pairs = np.array(dmtet.EDGE_PAIRS)
  local = np.sort(np.stack([grid.tets[:, pairs[:, 0]], grid.tets[:, pairs[:, 1]]], -1), -1)
  np.testing.assert_array_equal(grid.edges[grid.tet_edges], local)
  assert {tuple(e) for e in local.reshape(-1, 2)} == {tuple(e) for e in grid.edges}


# --- marching tetrahedra ------------------------------------------------------------------------


def test_sphere_is_closed_genus_0_and_outward():
  grid = dmtet.tet_grid(16, 1.0)
  r = 0.6
  vertices, faces = compact(np.linalg.norm(grid.vertices, axis=-1) - r, grid)
  assert_closed_and_oriented(faces)
  assert euler_characteristic(vertices, faces) == 2
  assert np.abs(np.linalg.norm(vertices, axis=-1) - r).max() < 0.02
  volume = signed_volume(vertices, faces)
  np.testing.assert_allclose(volume, 4 / 3 * np.pi * r**3, rtol=0.04)


def test_torus_has_euler_characteristic_0():
  grid = dmtet.tet_grid(16, 1.0)
  x = grid.vertices
  sdf = np.hypot(np.hypot(x[:, 0], x[:, 1]) - 0.55, x[:, 2]) - 0.25
  vertices, faces = compact(sdf, grid)
  assert_closed_and_oriented(faces)
  assert euler_characteristic(vertices, faces) == 0
  assert signed_volume(vertices, faces) > 0


def reference_triangles(sdf: np.ndarray, positions: np.ndarray, tets: np.ndarray) -> list:
  """Per tet: crossings on the edges between inside (s < 0) and outside vertices; one triangle,
  or the quad split along the diagonal (i_min o_min)–(i_max o_max); each wound so that its
  normal has a positive component along the gradient of the tet's linear SDF interpolant."""
  out = []
  for tet in tets:
    s, p = sdf[tet].astype(np.float64), positions[tet].astype(np.float64)

    def cross(a, b, s=s, p=p):
      return (p[a] * s[b] - p[b] * s[a]) / (s[b] - s[a])

    inner = [v for v in range(4) if s[v] < 0]
    outer = [v for v in range(4) if s[v] >= 0]
    if len(inner) in (1, 3):
      lone, rest = (inner[0], outer) if len(inner) == 1 else (outer[0], inner)
      tris = [[cross(lone, r) for r in rest]]
    elif len(inner) == 2:
      (a, b), (c, d) = inner, outer
      tris = [[cross(a, c), cross(a, d), cross(b, d)], [cross(a, c), cross(b, d), cross(b, c)]]
    else:
      tris = []
    grad = np.linalg.solve(p[1:] - p[0], s[1:] - s[0])
    for tri in tris:
      if np.dot(np.cross(tri[1] - tri[0], tri[2] - tri[0]), grad) < 0:
        tri = tri[::-1]
      out.append(np.array(tri))
  return out


def test_marching_matches_a_per_tet_reference_on_a_random_sdf():
  cfg = config(resolution=4, deform_scale=0.15)
  grid = dmtet.tet_grid(cfg.resolution, cfg.bound)
  rng = np.random.default_rng(0)
  params = {"sdf": rng.normal(size=len(grid.vertices)).astype(np.float32),
            "deform": rng.normal(size=grid.vertices.shape).astype(np.float32)}
  positions = np.asarray(dmtet.deformed_vertices(params, grid, cfg))
  vertices, faces, mask = map(np.asarray, march(params["sdf"], positions, grid))
  got = vertices[faces[mask]]
  want = np.stack(reference_triangles(params["sdf"], positions, grid.tets))
  assert got.shape == want.shape
  # Match triangles by centroid, then their vertices up to a cyclic rotation (same winding).
  dist, idx = scipy.spatial.cKDTree(got.mean(axis=1)).query(want.mean(axis=1))
  assert dist.max() < 1e-5 and len(set(idx)) == len(idx)
  for w, g in zip(want, got[idx]):
    assert min(np.abs(np.roll(g, k, axis=0) - w).max() for k in range(3)) < 1e-5
  # Invalid faces are degenerate.
  bad = faces[~mask]
  assert np.all((bad[:, 0] == bad[:, 1]) & (bad[:, 1] == bad[:, 2]))


def test_gradients_match_finite_differences():
  cfg = config(resolution=3, deform_scale=0.15)
  grid = dmtet.tet_grid(cfg.resolution, cfg.bound)
  rng = np.random.default_rng(1)
  sdf = rng.normal(size=len(grid.vertices))
  sdf = (np.sign(sdf) * (0.2 + np.abs(sdf))).astype(np.float32)  # no sign flips within eps
  deform = rng.normal(size=grid.vertices.shape).astype(np.float32)
  weights = jnp.asarray(rng.normal(size=(len(grid.edges), 3)), jnp.float32)

  @jax.jit
  def f(sdf, deform):
    v, faces, mask = dmtet.extract({"sdf": sdf, "deform": deform}, grid, cfg)
    return (jnp.sum(weights * v) + dmtet.normal_consistency(v, faces, mask)
            + 10.0 * dmtet.laplacian_loss(v, faces, mask))

  g_sdf, g_deform = jax.grad(f, argnums=(0, 1))(sdf, deform)
  eps = 1e-3
  for _ in range(3):
    u = rng.normal(size=sdf.shape).astype(np.float32)
    w = rng.normal(size=deform.shape).astype(np.float32)
    fd = (f(sdf + eps * u, deform + eps * w) - f(sdf - eps * u, deform - eps * w)) / (2 * eps)
    analytic = jnp.vdot(g_sdf, u) + jnp.vdot(g_deform, w)
    np.testing.assert_allclose(fd, analytic, rtol=2e-3, atol=2e-3)


# --- regularisers -------------------------------------------------------------------------------


def plane_mesh(n: int = 8):
  """Marching tets of the plane z = c half-way between lattice planes: every mesh vertex is
  an edge midpoint and its neighbourhood is point-symmetric about it."""
  grid = dmtet.tet_grid(n, 1.0)
  c = -1.0 + (n // 2 + 0.5) * 2.0 / n
  return grid, march(jnp.asarray(grid.vertices[:, 2] - c), jnp.asarray(grid.vertices), grid)


def test_normal_consistency_plane_and_bumps():
  grid, (v, f, m) = plane_mesh()
  nc, _ = regularisers(v, f, m)
  assert abs(float(nc)) < 1e-6
  normals = np.asarray(dmtet.face_normals(v, f))[np.asarray(m)]
  np.testing.assert_allclose(normals, np.tile([0.0, 0.0, 1.0], (len(normals), 1)), atol=1e-6)
  x = grid.vertices
  bumpy = x[:, 2] - 0.3 * np.sin(4 * x[:, 0]) * np.cos(4 * x[:, 1])
  nc, _ = regularisers(*march(jnp.asarray(bumpy), jnp.asarray(x), grid))
  assert float(nc) > 1e-3


def test_laplacian_vanishes_on_an_affine_arrangement():
  """A planar lattice, each square split along the same diagonal (every interior vertex is the
  mean of its 6 neighbours), mapped affinely into 3-D: δ = 0 at interior vertices."""
  n = 6
  ij = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2)
  idx = lambda i, j: i * n + j
  faces = np.array([f for i in range(n - 1) for j in range(n - 1)
                    for f in ([idx(i, j), idx(i + 1, j), idx(i + 1, j + 1)],
                              [idx(i, j), idx(i + 1, j + 1), idx(i, j + 1)])], np.int32)
  a = np.array([[1.2, 0.3], [0.2, 0.9], [0.5, -0.3]])
  v = jnp.asarray(ij @ a.T + [0.3, -0.2, 0.7], jnp.float32)
  mask = jnp.ones(len(faces), bool)
  delta, used = map(np.asarray, dmtet.uniform_laplacian(v, jnp.asarray(faces), mask))
  interior = np.all((ij > 0) & (ij < n - 1), axis=-1)
  assert used.all()
  np.testing.assert_allclose(delta[interior], 0.0, atol=1e-5)
  assert np.abs(delta[~interior]).max() > 0.1  # the rim is not balanced
  bent = v.at[idx(2, 3), 2].add(0.5)
  assert float(dmtet.laplacian_loss(bent, jnp.asarray(faces), mask)) > 1e-3


def test_regularisers_match_brute_force_references():
  grid = dmtet.tet_grid(8, 1.0)
  x = grid.vertices
  sdf = np.linalg.norm(x * [1.0, 1.3, 0.8], axis=-1) - 0.61  # no zero at a grid vertex
  v, f, m = march(jnp.asarray(sdf), jnp.asarray(x), grid)
  nc, lap = regularisers(v, f, m)
  vertices, faces = dmtet.compact_mesh(v, f, m)
  vertices = vertices.astype(np.float64)
  n = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]],
               vertices[faces[:, 2]] - vertices[faces[:, 0]])
  n /= np.linalg.norm(n, axis=-1, keepdims=True)
  by_edge = collections.defaultdict(list)
  neighbours = collections.defaultdict(set)
  for i, face in enumerate(faces):
    for a, b in ((face[0], face[1]), (face[1], face[2]), (face[2], face[0])):
      by_edge[(min(a, b), max(a, b))].append(i)
      neighbours[a].add(b)
      neighbours[b].add(a)
  want_nc = np.mean([1.0 - n[i] @ n[j] for i, j in by_edge.values()])
  want_lap = np.mean([np.sum((vertices[i] - vertices[list(nb)].mean(axis=0))**2)
                      for i, nb in neighbours.items()])
  np.testing.assert_allclose(nc, want_nc, rtol=1e-4)
  np.testing.assert_allclose(lap, want_lap, rtol=1e-4)


def test_invalid_faces_and_unused_vertices_contribute_nothing():
  grid = dmtet.tet_grid(8, 1.0)
  v, f, m = march(jnp.asarray(np.linalg.norm(grid.vertices, axis=-1) - 0.5),
                  jnp.asarray(grid.vertices), grid)
  rng = np.random.default_rng(2)
  f2 = jnp.where(m[:, None], f, jnp.asarray(rng.integers(0, len(v), f.shape), jnp.int32))
  used = np.zeros(len(v), bool)
  used[np.asarray(f)[np.asarray(m)].ravel()] = True
  v2 = jnp.where(used[:, None], v, jnp.asarray(rng.normal(size=v.shape), jnp.float32))
  np.testing.assert_allclose(regularisers(v2, f2, m), regularisers(v, f, m), rtol=1e-6)
  grads = jax.grad(lambda v: sum(regularisers(v, f2, m)))(v2)
  assert np.all(np.asarray(grads)[~used] == 0)
  assert np.all(np.isfinite(np.asarray(grads)))


def test_degenerate_faces_keep_gradients_finite_and_small():
  """An SDF of exactly 0 at grid vertices (the sphere |x| = 0.5 through lattice points) makes
  zero-area faces; they have no normal and must not blow up or poison the gradients."""
  cfg = config(resolution=8, deform_scale=0.15)
  grid = dmtet.tet_grid(cfg.resolution, cfg.bound)
  sdf = jnp.asarray(np.linalg.norm(grid.vertices, axis=-1) - 0.5, jnp.float32)
  assert int(jnp.sum(sdf == 0)) == 6

  def loss(params):
    v, f, m = dmtet.extract(params, grid, cfg)
    return dmtet.normal_consistency(v, f, m) + dmtet.laplacian_loss(v, f, m)

  params = {"sdf": sdf, "deform": jnp.zeros(grid.vertices.shape)}
  grads = jax.jit(jax.grad(loss))(params)
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g)) and np.abs(g).max() < 1.0


# --- params, init, export -------------------------------------------------------------------


def test_config_validation():
  for bad in (dict(resolution=0), dict(resolution=dmtet.MAX_RESOLUTION + 1), dict(bound=0.0),
              dict(deform_scale=-0.1), dict(deform_scale=1.5)):
    with pytest.raises(UserError) as err:
      config(**bad)
    assert "\n" not in str(err.value)


def test_memory_estimate():
  cfg = config(resolution=4)
  grid = dmtet.tet_grid(4, 1.0)
  params = dmtet.init(cfg)
  assert sum(x.size for x in jax.tree.leaves(params)) == dmtet.num_params(cfg)
  nv, nt, ne = dmtet.grid_sizes(4)
  assert (nv, nt, ne) == (len(grid.vertices), len(grid.tets), len(grid.edges))
  assert dmtet.memory_bytes(cfg) >= 16 * dmtet.num_params(cfg) + 12 * (nv + ne) + 40 * nt
  assert dmtet.memory_bytes(config(resolution=128)) > dmtet.memory_bytes(config(resolution=64))
  assert dmtet.memory_bytes(cfg, texture_params=10) == dmtet.memory_bytes(cfg) + 160
  dmtet.check_memory(cfg, 2**40)
  with pytest.raises(UserError, match="GiB") as err:
    dmtet.check_memory(config(resolution=128), 2**30)
  assert "\n" not in str(err.value)


def test_init_from_density_and_compaction():
  cfg = config(resolution=8)
  grid = dmtet.tet_grid(cfg.resolution, cfg.bound)
  # 50·exp(−|x|²/0.18) = 25 on the sphere |x| = sqrt(0.18·ln 2).
  density = lambda x: 50.0 * jnp.exp(-jnp.sum(x * x, axis=-1) / 0.18)
  sigma = np.asarray(density(jnp.asarray(grid.vertices)))
  sdf = dmtet.init_sdf_from_density(density, jnp.asarray(grid.vertices), 25.0, chunk=100)
  np.testing.assert_allclose(sdf, np.clip(-(sigma - 25.0), -1.0, 1.0), atol=1e-5)
  # Scale 1/25 keeps σ in [0, 50] unclipped, so crossings interpolate the density linearly.
  params = dmtet.init(cfg, density_fn=density, level=25.0, sdf_scale=0.04)
  np.testing.assert_allclose(params["sdf"], -(sigma - 25.0) * 0.04, atol=1e-5)
  assert params["deform"].shape == grid.vertices.shape and not np.any(params["deform"])

  vertices, faces = dmtet.compact_mesh(*jax.jit(dmtet.extract, static_argnums=2)(
      params, grid, cfg))
  assert_closed_and_oriented(faces)
  assert np.abs(np.linalg.norm(vertices, axis=-1) - np.sqrt(0.18 * np.log(2))).max() < 0.05
  loaded = trimesh.Trimesh(vertices, faces, process=False)
  assert loaded.is_watertight and loaded.volume > 0

  sphere = dmtet.init(cfg)  # no density: the clipped sphere |x| = 0.5
  np.testing.assert_allclose(
      sphere["sdf"], np.clip(np.linalg.norm(grid.vertices, axis=-1) - 0.5, -1, 1), atol=1e-6)


def test_drop_small_interiors_keeps_the_large_region():
  n = 16
  grid = dmtet.tet_grid(n, 1.0)
  x = grid.vertices
  big = np.linalg.norm(x - [-0.3, 0, 0], axis=-1) - 0.5
  small = np.linalg.norm(x - [0.7, 0.6, 0.6], axis=-1) - 0.15
  sdf = np.minimum(big, small).astype(np.float32)
  out, dropped = dmtet.drop_small_interiors(sdf, n, 0.05)
  assert dropped == 1
  np.testing.assert_array_equal(out[big < 0], sdf[big < 0])
  assert np.all(out[(small < 0) & (big >= 0)] == 1.0)
  kept, none = dmtet.drop_small_interiors(sdf, n, 0.0)
  assert none == 0 and np.array_equal(kept, sdf)
