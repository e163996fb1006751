"""Tests for jax3d.solids.metrics: the 3D scores of shapes (meshes, exact solids) against the
exact solids, over rotations and scales, and the diversity of a set of shapes."""

from __future__ import annotations

import numpy as np
import pytest

from jax3d.solids import colour
from jax3d.solids import metrics
from jax3d.solids import scenes
from jax3d.solids import shapes
import test_solids_common as common

CFG = common.CFG
SOLID_COLOUR = common.SOLID_COLOUR


@pytest.fixture(scope="module")
def meshes():
  return common.solid_meshes()


@pytest.fixture(scope="module")
def mesh_shapes():
  return common.mesh_shapes()


@pytest.fixture(scope="module")
def mesh_results(mesh_shapes):
  return {s: metrics.evaluate(shape, scenes.prompt_for(s, SOLID_COLOUR[s]), CFG)
          for s, shape in mesh_shapes.items()}


@pytest.mark.parametrize("solid", scenes.SOLIDS)
def test_every_solid_scores_itself(solid, mesh_results):
  r = mesh_results[solid]
  assert r["silhouette_iou"] > 0.97 and r["occupancy_iou"] > 0.97, r
  assert r["predicted_solid"] == solid and r["shape_correct"], r
  assert r["predicted_colour"] == SOLID_COLOUR[solid] and r["colour_correct"], r
  assert colour.hue_distance(r["hue_deg"], scenes.HUES_DEG[SOLID_COLOUR[solid]]) < 2.0
  # The competing solids fit clearly worse.
  others = [v for k, v in r["shape_scores"].items() if k != solid]
  assert max(others) < 0.85


def test_exact_shape_scores_one():
  r = metrics.evaluate(shapes.shape_from_sdf("torus", colour="yellow", resolution=48),
                       "a yellow torus", CFG)
  # Ground truth and prediction are cast through the same lattice: identical silhouettes.
  assert r["occupancy_iou"] == 1.0 and r["silhouette_iou"] == 1.0
  assert r["colour_correct"] and r["predicted_colour"] == "yellow"


def test_colourless_prompt_has_no_colour_verdict(mesh_shapes):
  r = metrics.evaluate(mesh_shapes["cone"], "a cone", CFG)
  assert r["colour_correct"] is None and r["predicted_colour"] == "blue"


def test_sphere_against_cube(mesh_shapes):
  r = metrics.evaluate(mesh_shapes["sphere"], "a red cube", CFG)
  assert r["silhouette_iou"] < 0.9 and r["occupancy_iou"] < 0.9, r
  assert r["predicted_solid"] == "sphere" and not r["shape_correct"]
  # Independent estimate of the occupancy IoU of a ball r=0.5 and a box of half-edge 0.4 on a
  # fine grid (the cube's best rotation is axis-aligned for this pair).
  axis = np.linspace(-0.6, 0.6, 121)
  g = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
  ball, box = np.linalg.norm(g, axis=-1) < 0.5, np.abs(g).max(-1) < 0.4
  assert abs(r["occupancy_iou"] - (ball & box).sum() / (ball | box).sum()) < 0.02


def test_circumscribed_cylinder_iou_closed_forms():
  """A cube fills (0.8³)/(π·(0.4√2)²·0.8) = 2/π of its circumscribed cylinder at any turn; the
  cylinder itself scores 1; only cube prompts report it."""
  for turn in (0.0, 30.0):  # At eval's lattice (R = 96) no cube face lies on a lattice plane.
    cube = shapes.shape_from_sdf("cube", rotation_deg=turn, resolution=96)
    assert abs(metrics.circumscribed_cylinder_iou(cube) - 2.0 / np.pi) < 0.01
  x = np.linspace(-1.0, 1.0, 64)
  r = np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + 0 * x[None, None, :])
  values = np.minimum(0.4 * np.sqrt(2.0) - r, 0.4 - np.abs(x[None, None, :]))
  cylinder = shapes.Shape(values=values.astype(np.float32), bound=1.0,
                          colours=np.zeros((0, 3), np.float32),
                          weights=np.zeros((0,), np.float32))
  assert metrics.circumscribed_cylinder_iou(cylinder) == 1.0
  cube = shapes.shape_from_sdf("cube", colour="red", resolution=48)
  assert metrics.evaluate(cube, "a red cube", CFG)["cylinder_iou"] < 0.7
  assert metrics.evaluate(cube, "a red sphere", CFG)["cylinder_iou"] is None


def test_scaled_solid_is_still_classified():
  shape = shapes.shape_from_sdf("cylinder", scale=0.85, rotation_deg=20.0,
                                resolution=CFG.resolution)
  predicted, scores = metrics.classify_shape(shape, CFG)
  assert predicted == "cylinder" and scores["cylinder"] > 0.97
  iou, _ = metrics.occupancy_iou(shape, "cylinder", CFG)
  # Unscaled IoU of nested solids = volume ratio 0.85^3.
  assert abs(iou - 0.85**3) < 0.03


@pytest.mark.parametrize("solid", ["cube", "cone"])
def test_metrics_are_invariant_to_rotating_the_mesh(solid, meshes, mesh_results):
  shape = shapes.shape_from_mesh(common.rotated(meshes[solid], 37.0),
                                  resolution=CFG.resolution)
  r = metrics.evaluate(shape, scenes.prompt_for(solid, SOLID_COLOUR[solid]), CFG)
  base = mesh_results[solid]
  assert abs(r["silhouette_iou"] - base["silhouette_iou"]) < 0.01, (r, base)
  assert abs(r["occupancy_iou"] - base["occupancy_iou"]) < 0.01, (r, base)
  for k in ("predicted_solid", "predicted_colour", "colour_correct"):
    assert r[k] == base[k]
  if solid == "cube":  # the fit recovers the rotation (mod the cube's 90° symmetry)
    assert colour.hue_distance(4 * r["rotation_deg"], 4 * 37.0) / 4 < 1.0, r["rotation_deg"]


def test_diversity(mesh_shapes, meshes):
  cube = mesh_shapes["cube"]
  turned = shapes.shape_from_mesh(common.rotated(meshes["cube"], 37.0),
                                   resolution=CFG.resolution)
  same = metrics.diversity([cube, turned], CFG)
  assert same["mean_pairwise_occupancy_iou"] > 0.97
  assert same["mean_pairwise_silhouette_iou"] > 0.97
  assert same["hue_spread"] < 1e-6
  apart = metrics.diversity([mesh_shapes["sphere"], mesh_shapes["torus"]], CFG)
  assert apart["mean_pairwise_silhouette_iou"] < 0.7
  # Two opposite hues spread fully, identical ones not at all.
  assert colour.hue_spread([30.0, 210.0]) == pytest.approx(1.0)
  assert colour.hue_spread([scenes.HUES_DEG[c] for c in scenes.COLOURS]) > 0.5
  assert metrics.diversity([cube], CFG)["mean_pairwise_silhouette_iou"] is None
