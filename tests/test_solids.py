"""Tests for jax3d.solids' world and tracer: prompts, SDFs and the sphere tracer against closed
forms (the metrics, shapes and image checks have their own test_solids_*.py files)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax3d import cameras
from jax3d.errors import UserError
from jax3d.solids import colour
from jax3d.solids import render
from jax3d.solids import scenes
from test_solids_common import inside_reference


# ----------------------------------------------------------------------------------------------
# scenes


@pytest.mark.parametrize("prompt, expected", [
    ("a red cube", scenes.Scene("cube", "red", None)),
    ("an orange cone", scenes.Scene("cone", "orange", None)),
    ("a torus", scenes.Scene("torus", None, None)),
    ("a red cube, side view", scenes.Scene("cube", "red", "side")),
    ("a red cube, azimuth 30 view", scenes.Scene("cube", "red", "azimuth 30")),
    ("a cone,  azimuth   330 view", scenes.Scene("cone", None, "azimuth 330")),
    ("A Blue Sphere", scenes.Scene("sphere", "blue", None)),
])
def test_parse_prompt_accepts(prompt, expected):
  assert scenes.parse_prompt(prompt) == expected


@pytest.mark.parametrize("prompt", [
    "", "   ", "a pink cube", "a red pyramid", "red cube", "a cube cube", "a red cube, top view",
    "a red cube, azimuth 45 view", "a red cube, azimuth 360 view", "a red cube, front 30 view",
    "a red cube and a sphere", "the red cube", "a big red cube",
])
def test_parse_prompt_rejects(prompt):
  with pytest.raises(UserError):
    scenes.parse_prompt(prompt)


def test_prompt_lists_round_trip():
  prompts = scenes.colour_prompts()
  assert len(set(prompts)) == len(scenes.SOLIDS) * len(scenes.COLOURS) == 30
  parsed = {(s.solid, s.colour) for s in map(scenes.parse_prompt, prompts)}
  assert parsed == {(s, c) for s in scenes.SOLIDS for c in scenes.COLOURS}
  assert [scenes.parse_prompt(p) for p in scenes.colourless_prompts()] == [
      scenes.Scene(s) for s in scenes.SOLIDS]
  assert "an orange cone" in prompts


def test_palette_hues_match_spec():
  hue, sat, _ = colour.rgb_to_hsv(scenes.palette())
  np.testing.assert_allclose(hue, [scenes.HUES_DEG[c] for c in scenes.COLOURS], atol=0.5)
  assert (sat > 0.5).all()


@pytest.mark.parametrize("solid", scenes.SOLIDS)
def test_sdf_is_negative_exactly_inside(solid):
  key = jax.random.PRNGKey(scenes.SOLIDS.index(solid))
  p = jax.random.uniform(key, (400_000, 3), minval=-0.75, maxval=0.75)
  d = np.asarray(scenes.sdf(solid, p))
  p = np.asarray(p)
  ref = inside_reference(solid, p)
  clear = np.abs(d) > 1e-5  # Points on the surface may go either way in float32.
  np.testing.assert_array_equal((d < 0)[clear], ref[clear])
  estimate = (d < 0).mean() * 1.5**3
  sigma = 1.5**3 * math.sqrt(estimate / 1.5**3 / p.shape[0])
  assert abs(estimate - scenes.volume(solid)) < 4 * sigma + 1e-3, (estimate,
                                                                   scenes.volume(solid))
  # The traced-index path gives the same distances.
  traced = jax.jit(scenes.sdf)(jnp.int32(scenes.SOLIDS.index(solid)), p[:100])
  np.testing.assert_allclose(np.asarray(traced), d[:100], atol=1e-6)


@pytest.mark.parametrize("solid", scenes.SOLIDS)
def test_sdf_has_unit_gradient_and_is_1_lipschitz(solid):
  key_a, key_b = jax.random.split(jax.random.PRNGKey(7))
  p = jax.random.uniform(key_a, (200_000, 3), minval=-0.75, maxval=0.75)
  d = scenes.sdf(solid, p)
  near = np.asarray(p)[np.abs(np.asarray(d)) < 0.05][:4000]
  eps = 1e-3
  offsets = eps * np.eye(3, dtype=np.float32)
  grad = np.stack([(np.asarray(scenes.sdf(solid, near + o)) -
                    np.asarray(scenes.sdf(solid, near - o))) / (2 * eps) for o in offsets], -1)
  norm = np.linalg.norm(grad, axis=-1)
  assert norm.max() < 1.0 + 2e-3
  # |grad| = 1 except where the stencil straddles an edge (the medial axis inside).
  assert np.mean(np.abs(norm - 1.0) < 1e-2) > 0.95, np.mean(np.abs(norm - 1.0) < 1e-2)
  q = p + 0.05 * jax.random.normal(key_b, p.shape)
  lip = np.abs(np.asarray(scenes.sdf(solid, q) - d)) / np.linalg.norm(np.asarray(q - p), axis=-1)
  assert lip.max() < 1.0 + 1e-3


def test_sdf_is_the_distance_outside_sphere_and_cube():
  p = np.asarray(jax.random.uniform(jax.random.PRNGKey(3), (1000, 3), minval=-1, maxval=1))
  np.testing.assert_allclose(scenes.sdf("sphere", p), np.linalg.norm(p, axis=-1) - 0.5,
                             atol=1e-6)
  # Distance to the box = distance to its clamped point, outside.
  out = np.abs(p).max(-1) > 0.4
  closest = np.clip(p, -0.4, 0.4)
  np.testing.assert_allclose(np.asarray(scenes.sdf("cube", p))[out],
                             np.linalg.norm(p - closest, axis=-1)[out], atol=1e-6)


# ----------------------------------------------------------------------------------------------
# render


@pytest.mark.parametrize("distance, elevation", [(2.0, 20.0), (1.5, -10.0)])
def test_sphere_renders_disc_of_tangent_cone_radius(distance, elevation):
  size = 64
  cam = cameras.from_spherical(30.0, elevation, distance, 40.0, size, size)
  out = render.render(0, scenes.albedo("red"), cam, supersample=4)
  area = float(np.asarray(out["mask"]).sum())
  focal = 0.5 * size / math.tan(math.radians(20.0))
  expected = focal * math.tan(math.asin(0.5 / distance))
  assert abs(math.sqrt(area / math.pi) - expected) < 0.005 * expected
  # The naive r / D would be off by more than the tolerance.
  assert abs(focal * 0.5 / distance - expected) > 0.02 * expected
  image = np.asarray(out["image"])
  assert image.min() >= 0 and image.max() <= 1
  np.testing.assert_allclose(image[0, 0], 1.0)  # white background


def test_depth_matches_ray_sphere_intersection():
  size, distance = 33, 2.0  # odd size: the centre pixel looks straight at the origin
  cam = cameras.from_spherical(-70.0, 35.0, distance, 40.0, size, size)
  cam = cameras.Camera(c2w=cam.c2w, fov_y=cam.fov_y, height=size, width=size)
  out = render.render(0, scenes.albedo("blue"), cam)
  depth, mask = np.asarray(out["depth"]), np.asarray(out["mask"])
  assert abs(depth[size // 2, size // 2] - (distance - 0.5)) < 2e-3
  origins, dirs = (np.asarray(a, np.float64) for a in cameras.rays(cam))
  b = (origins * dirs).sum(-1)
  disc = b * b - ((origins * origins).sum(-1) - 0.25)
  hit = disc > 1e-3  # away from grazing rays
  t = -b - np.sqrt(np.maximum(disc, 0))
  assert (mask[hit] == 1).all() and (mask[disc < -1e-3] == 0).all()
  np.testing.assert_allclose(depth[hit], t[hit], atol=2e-3)


def test_depth_of_cube_face_at_centre():
  size = 33
  cam = cameras.from_spherical(0.0, 0.0, 2.0, 40.0, size, size)
  cam = cameras.Camera(c2w=cam.c2w, fov_y=cam.fov_y, height=size, width=size)
  depth = np.asarray(render.render(1, scenes.albedo("green"), cam)["depth"])
  assert abs(depth[size // 2, size // 2] - 1.6) < 2e-3


def test_masks_are_the_renderers_masks():
  """The mask-only tracer, with a traced solid index, hits exactly where `render` does."""
  cam = cameras.from_spherical(np.array([10.0, 100.0, 250.0]), np.array([-5.0, 30.0, 60.0]),
                               np.array([1.9, 2.0, 2.2]), 40.0, 24, 24)
  for solid in ("cube", "torus"):
    want = np.asarray(render.render_batch(solid, np.ones((3, 3)), cam)["mask"]) > 0.5
    np.testing.assert_array_equal(np.asarray(render.masks(solid, cam)), want)
  with pytest.raises(UserError):
    render.masks("pyramid", cam)
