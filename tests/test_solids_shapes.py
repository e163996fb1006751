"""Tests for jax3d.solids.shapes: shapes from meshes (voxelization), fields and exact solids
against the exact occupancy, and reading exported mesh files."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh

from jax3d.errors import UserError
from jax3d.export import mesh as mesh_lib
from jax3d.solids import colour as colour_lib
from jax3d.solids import metrics
from jax3d.solids import scenes
from jax3d.solids import shapes
import test_solids_common as common

CFG = common.CFG


@pytest.mark.parametrize("solid", scenes.SOLIDS)
def test_mesh_voxelization_matches_exact_occupancy(solid):
  exact = shapes.shape_from_sdf(solid, resolution=CFG.resolution)
  pred = common.mesh_shapes()[solid]
  # Disagreement only where the marching-cubes surface departs from the exact one.
  wrong = pred.occupancy != exact.occupancy
  assert np.all(np.abs(exact.values[wrong]) < 0.1), exact.values[wrong]
  if solid == "sphere":
    # Values are linear in the distance near a smooth surface: the zero level of their
    # interpolation along lattice edges sits on the mesh.
    radius = np.linalg.norm(shapes.crossings(pred.values, pred.bound), axis=-1)
    assert np.abs(radius - 0.5).max() < 0.05 * pred.spacing


def test_voxelization_of_large_triangles_and_lattice_vertices():
  """A 12-triangle box whose corners lie on lattice points, and a rotated one."""
  r, bound = 41, 1.0
  axis = np.linspace(-bound, bound, r)
  half = axis[30]  # corners exactly on lattice lines
  box = trimesh.creation.box(extents=[2 * half] * 3)
  grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
  got = shapes.shape_from_mesh(box, resolution=r, bound=bound)
  clear = np.abs(np.abs(grid).max(-1) - half) > 1e-9
  np.testing.assert_array_equal(got.occupancy[clear], (np.abs(grid).max(-1) < half)[clear])
  turned = common.rotated(box, 25.0)
  got = shapes.shape_from_mesh(turned, resolution=r, bound=bound)
  local = grid @ trimesh.transformations.rotation_matrix(np.deg2rad(25.0), [0, 0, 1])[:3, :3]
  dist = np.abs(local).max(-1) - half
  clear = np.abs(dist) > 1e-9
  np.testing.assert_array_equal(got.occupancy[clear], (dist < 0)[clear])
  assert got.hue_deg is None  # trimesh's default grey has no hue


def test_shape_from_field_and_exported_file(tmp_path):
  density = lambda p: 50.0 * jax.nn.sigmoid(-scenes.sdf("cone", p) / 0.01)
  colour = lambda p: jnp.broadcast_to(jnp.asarray(scenes.albedo("green")), p.shape)
  shape = shapes.shape_from_field(density, colour, level=25.0, bound=1.0,
                                  resolution=CFG.resolution)
  exact = shapes.shape_from_sdf("cone", resolution=CFG.resolution)
  r = metrics.evaluate(shape, "a green cone", CFG)
  assert r["occupancy_iou"] > 0.99 and r["silhouette_iou"] > 0.99, r
  assert r["shape_correct"] and r["colour_correct"], r
  assert colour_lib.nearest_colour(shape.hue_deg) == "green"
  assert shape.colours.shape[0] > 100
  np.testing.assert_array_equal(shape.occupancy, exact.occupancy)
  # The same field through the exporter's file, read back from disk.
  mesh = mesh_lib.extract_mesh(density, colour, bound=1.0, resolution=64, level=25.0)
  path = mesh_lib.write_mesh(mesh, tmp_path / "cone.glb")["glb"]
  from_file = shapes.shape_from_mesh(path, resolution=CFG.resolution)
  r = metrics.evaluate(from_file, "a green cone", CFG)
  assert r["occupancy_iou"] > 0.97 and r["shape_correct"] and r["colour_correct"], r


def test_missing_mesh_file_is_a_user_error(tmp_path):
  with pytest.raises(UserError):
    shapes.shape_from_mesh(tmp_path / "nope.glb")

