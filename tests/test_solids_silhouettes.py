"""Tests for jax3d.solids.silhouettes: held-out silhouettes against the sphere tracer and closed
forms, and the framing of the held-out views on the prediction and the truth."""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial
import trimesh

from jax3d import cameras
from jax3d.fields import voxel
from jax3d.solids import metrics
from jax3d.solids import render
from jax3d.solids import scenes
from jax3d.solids import shapes
from jax3d.solids import silhouettes as sil
import test_solids_common as common

CFG = common.CFG
SIZE = CFG.image_size
# A disc as wide as the cone's base hanging below it, down to the box's floor region.
SKIRT_RADIUS, SKIRT_Z = 0.5, (-0.95, -0.9)


@pytest.fixture(scope="module")
def heldout_masks():
  """Sphere-traced masks of every solid from the held-out views (5, 9, H, W)."""
  rig = sil.heldout_cameras(SIZE)
  n = rig.c2w.shape[0]
  out = {}
  for i, solid in enumerate(scenes.SOLIDS):
    r = render.render_batch(jnp.full((n,), i), jnp.ones((n, 3)), rig)
    out[solid] = np.asarray(r["mask"]) > 0.5
  return out


@pytest.mark.parametrize("solid", scenes.SOLIDS)
def test_silhouettes_agree_with_sphere_tracer(solid, heldout_masks):
  rig = sil.heldout_cameras(SIZE)
  reference = sil.reference_silhouettes(solid, 0.0, SIZE)
  assert sil.mask_iou(reference, heldout_masks[solid]).min() > 0.995
  # Casting through a lattice rounds the edges by about a lattice step.
  cast = sil.reference_silhouettes(solid, 0.0, SIZE, (128, 1.0, 512))
  np.testing.assert_array_equal(
      cast, sil.silhouettes(shapes.shape_from_sdf(solid, resolution=128), rig, 512))
  iou = sil.mask_iou(cast, heldout_masks[solid])
  assert iou.min() > 0.97, iou


def test_rasterized_box_matches_traced_cube():
  """An exact 12-triangle cube, turned by 25°, against the traced cube turned alike."""
  box = common.rotated(trimesh.creation.box(extents=[0.8] * 3), 25.0)
  shape = shapes.shape_from_mesh(box, resolution=16)
  raster = sil.silhouettes(shape, sil.heldout_cameras(SIZE))
  assert sil.mask_iou(raster, sil.reference_silhouettes("cube", 25.0, SIZE)).min() > 0.99
  assert sil.mask_iou(raster, sil.reference_silhouettes("cube", 0.0, SIZE)).min() < 0.97


def test_references_follow_the_distances():
  """From distance 3 the sphere's silhouette is the disc of its tangent cone from there."""
  disc = sil.reference_silhouettes("sphere", 0.0, SIZE, None, (3.0,) * sil.NUM_VIEWS)
  focal = 0.5 * SIZE / math.tan(math.radians(0.5 * sil.EVAL_FOV_DEG))
  radius = focal * math.tan(math.asin(scenes.SPHERE_RADIUS / 3.0))
  np.testing.assert_allclose(np.sqrt(disc.sum((1, 2)) / np.pi), radius, atol=0.3)
  near = sil.reference_silhouettes("sphere", 0.0, SIZE)
  assert (near.sum((1, 2)) > 1.5 * disc.sum((1, 2))).all()


# ----------------------------------------------------------------------------------------------
# Framing


def _projected_inside(distances, points, size: int = SIZE) -> np.ndarray:
  """(V,) whether every point projects inside the image of each framed held-out view."""
  rig = sil.heldout_cameras(size, distances)
  pix, depth = cameras.project(rig, jnp.asarray(points, jnp.float32)[:, None, :])
  pix, depth = np.asarray(pix), np.asarray(depth)
  ok = (pix >= -1e-3).all(-1) & (pix <= size + 1e-3).all(-1) & (depth > 0)
  return ok.all(0)


def _box_corners(lo, hi) -> np.ndarray:
  return np.array(list(itertools.product(*zip(lo, hi))), np.float64)


@pytest.mark.parametrize("lo, hi", [
    ((-0.3, -0.3, -0.3), (0.3, 0.3, 0.3)),  # fits from distance 2
    ((-0.5, -0.5, -0.95), (0.5, 0.5, 0.45)),  # the cone with a skirt to the floor
    ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)),  # the whole scene box
    ((0.2, -0.9, 0.1), (0.9, 0.4, 0.8)),  # off centre
])
def test_framing_puts_every_corner_inside_the_image(lo, hi):
  corners = _box_corners(lo, hi)
  distances = sil.framing_distances(corners)
  for size in (SIZE, 64):
    assert _projected_inside(distances, corners, size).all()
  fits = _projected_inside((sil.EVAL_DISTANCE,) * sil.NUM_VIEWS, corners)
  for v, d in enumerate(distances):
    if fits[v]:
      assert d == sil.EVAL_DISTANCE
    else:  # The smallest such distance: a little nearer, some corner leaves the image.
      assert d > sil.EVAL_DISTANCE
      nearer = list(distances)
      nearer[v] = d - 2e-3
      assert not _projected_inside(nearer, corners)[v]
  if lo[0] == -0.3:
    assert distances == (sil.EVAL_DISTANCE,) * sil.NUM_VIEWS


@pytest.mark.parametrize("solid", scenes.SOLIDS)
def test_true_solids_keep_the_unframed_views(solid):
  """Meshes and lattices of the true solids (any turn) and the truth hulls fit from 2."""
  unframed = (sil.EVAL_DISTANCE,) * sil.NUM_VIEWS
  truth = sil.solid_hull_points(solid)
  assert sil.framing_distances(truth) == unframed
  mesh = common.mesh_shapes()[solid]
  assert sil.framing_distances(np.concatenate([sil.hull_points(mesh), truth])) == unframed
  for turn in (0.0, 30.0, 45.0):
    lattice = shapes.shape_from_sdf(solid, rotation_deg=turn, resolution=CFG.resolution)
    assert sil.framing_distances(sil.hull_points(lattice)) == unframed
  # The truth hull holds the solid at every turn: points inside it lie inside the hull.
  p = np.random.default_rng(0).uniform(-0.75, 0.75, (100_000, 3))
  inside = common.inside_reference(solid, p)
  for turn in (0.0, 20.0, 45.0):
    a = np.deg2rad(turn)
    turned = p @ np.array([[np.cos(a), np.sin(a), 0], [-np.sin(a), np.cos(a), 0], [0, 0, 1]])
    assert _in_hull(truth, turned[inside]).all()


def _in_hull(points: np.ndarray, x: np.ndarray) -> np.ndarray:
  eq = scipy.spatial.ConvexHull(points).equations
  return (x @ eq[:, :3].T + eq[:, 3] <= 1e-9).all(-1)


def test_lattice_hull_holds_the_trilinear_positive_set():
  """Random lattice values: every point where the trilinear interpolation is positive lies in
  the hull of the lattice shape's hull points."""
  rng = np.random.default_rng(1)
  for threshold in (0.5, 1.5):  # many positive corners; a few scattered ones
    values = (rng.normal(size=(7, 7, 7)) - threshold).astype(np.float32)
    values[0] = values[-1] = values[:, 0] = values[:, -1] = -1.0
    shape = shapes.Shape(values=values, bound=1.0, colours=np.zeros((0, 3), np.float32),
                         weights=np.zeros((0,), np.float32))
    x = rng.uniform(-1.0, 1.0, (400_000, 3)).astype(np.float32)
    positive = np.asarray(voxel.interpolate(jnp.asarray(values), jnp.asarray(x), 1.0)) > 0
    assert positive.sum() > 100
    hull = sil.hull_points(shape)
    assert _in_hull(hull, x[positive]).all()
    # And it is not the whole box: the far corners of the box lie outside it.
    assert not _in_hull(hull, _box_corners((-1.0,) * 3, (1.0,) * 3)).any()


def _cone_mesh() -> trimesh.Trimesh:
  cone = trimesh.creation.cone(radius=scenes.CONE_RADIUS, height=2 * scenes.CONE_HALF_HEIGHT,
                               sections=128)
  cone.apply_translation([0.0, 0.0, -scenes.CONE_HALF_HEIGHT])
  return cone


def _skirted_cone_mesh() -> trimesh.Trimesh:
  lo, hi = SKIRT_Z
  disc = trimesh.creation.cylinder(radius=SKIRT_RADIUS, height=hi - lo, sections=128)
  disc.apply_translation([0.0, 0.0, 0.5 * (lo + hi)])
  return trimesh.util.concatenate([_cone_mesh(), disc])


def _traced_by_sampling(camera: cameras.Camera, inside, reach: float = 2.0,
                        samples: int = 1000) -> np.ndarray:
  """Masks (V, H, W): pixels whose ray has a point `inside` among `samples` evenly spaced
  within `reach` of the depth of the origin (an independent, slow silhouette renderer)."""
  origins, dirs = (np.asarray(a, np.float64) for a in cameras.rays(camera))
  out = np.zeros(origins.shape[:-1], bool)
  for v in range(origins.shape[0]):
    o, d = origins[v].reshape(-1, 3), dirs[v].reshape(-1, 3)
    centre = np.linalg.norm(o[0])
    hit = np.zeros(len(o), bool)
    for t in np.array_split(np.linspace(centre - reach, centre + reach, samples), 10):
      hit |= inside(o[:, None] + t[None, :, None] * d[:, None]).any(-1)
    out[v] = hit.reshape(origins.shape[1:3])
  return out


def _inside_skirted_cone(p: np.ndarray) -> np.ndarray:
  lo, hi = SKIRT_Z
  disc = (np.hypot(p[..., 0], p[..., 1]) < SKIRT_RADIUS) & (p[..., 2] > lo) & (p[..., 2] < hi)
  return common.inside_reference("cone", p) | disc


@pytest.fixture(scope="module")
def skirt_shapes():
  return {name: shapes.shape_from_mesh(m, resolution=CFG.resolution)
          for name, m in (("cone", _cone_mesh()), ("skirted", _skirted_cone_mesh()))}


def test_skirt_below_the_cone_is_scored(skirt_shapes):
  """A skirt hanging to z = -0.95 under the cone: the unframed views crop it away (the old
  blind spot); the framed ones see all of it and score what an independent renderer sees."""
  cone_iou, _ = metrics.silhouette_iou(skirt_shapes["cone"], "cone", CFG)
  assert cone_iou > 0.99
  skirted = skirt_shapes["skirted"]
  framed_iou, _ = metrics.silhouette_iou(skirted, "cone", CFG)
  distances = sil.framing_distances(np.concatenate(
      [sil.hull_points(skirted), sil.solid_hull_points("cone")]))
  assert min(distances[:8]) > 2.5 and distances[8] == sil.EVAL_DISTANCE  # above: hidden
  cone = lambda p: common.inside_reference("cone", p)
  expected = {}
  for name, d in (("framed", distances), ("unframed", None)):
    rig = sil.heldout_cameras(SIZE, d)
    truth = _traced_by_sampling(rig, cone)
    pred = _traced_by_sampling(rig, _inside_skirted_cone)
    expected[name] = float(sil.mask_iou(pred, truth).mean())
  unframed_iou = float(sil.mask_iou(sil.silhouettes(skirted, sil.heldout_cameras(SIZE)),
                                    sil.reference_silhouettes("cone", 0.0, SIZE)).mean())
  assert abs(framed_iou - expected["framed"]) < 0.01, (framed_iou, expected)
  assert abs(unframed_iou - expected["unframed"]) < 0.01, (unframed_iou, expected)
  # Unframed, the skirt nearly passed for the cone; framed, it costs a third of the union.
  assert unframed_iou > 0.92 and framed_iou < 0.75, (unframed_iou, framed_iou)


def test_diversity_frames_each_pair(skirt_shapes):
  """The pair (cone, skirted cone) is framed on both: it scores as the skirted cone does
  against the true cone, not as the unframed views would."""
  div = metrics.diversity([skirt_shapes["cone"], skirt_shapes["skirted"]], CFG)
  framed_iou, _ = metrics.silhouette_iou(skirt_shapes["skirted"], "cone", CFG)
  assert abs(div["mean_pairwise_silhouette_iou"] - framed_iou) < 0.01, (div, framed_iou)
