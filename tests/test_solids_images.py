"""Tests for jax3d.solids' colour helpers and 2D image checks (jax3d.solids.colour, .images)."""

from __future__ import annotations

import colorsys

import jax
import numpy as np

from jax3d import cameras
from jax3d.solids import colour
from jax3d.solids import images
from jax3d.solids import render
from jax3d.solids import scenes


def test_hsv_and_hue_distance():
  rng = np.random.default_rng(0)
  rgb = rng.uniform(size=(200, 3))
  want = np.array([colorsys.rgb_to_hsv(*c) for c in rgb])
  hue, sat, val = colour.rgb_to_hsv(rgb)
  np.testing.assert_allclose(colour.hue_distance(hue, want[:, 0] * 360), 0, atol=1e-6)
  np.testing.assert_allclose(sat, want[:, 1], atol=1e-9)
  np.testing.assert_allclose(val, want[:, 2], atol=1e-9)
  assert colour.hue_distance(350.0, 10.0) == 20.0
  assert colour.nearest_colour(345.0) == "red" and colour.nearest_colour(300.0) == "purple"
  for c in scenes.COLOURS:
    assert colour.nearest_colour(scenes.HUES_DEG[c]) == c


def test_image_colour_ignores_shading_and_background():
  rgb = scenes.albedo("yellow")
  shade = np.linspace(0.35, 1.0, 16)[:, None, None] * np.ones((16, 16, 1))
  alpha = np.linspace(0.2, 1.0, 16)[None, :, None]
  image = np.pad(alpha * shade * rgb + (1 - alpha), ((2, 2), (2, 2), (0, 0)),
                 constant_values=1.0)  # framed by the white background
  name, hue = images.image_colour(image)
  assert name == "yellow" and colour.hue_distance(hue, 55.0) < 1.0
  white = np.ones((8, 8, 3))
  assert not images.image_foreground(white).any()
  assert images.image_colour(white) == (None, None)
  assert images.image_shape(white) == (None, 0.0)


def test_foreground_is_measured_from_the_images_own_background():
  """A faint tint of the whole background (as generated samples have) is not foreground."""
  image = np.ones((16, 16, 3))
  image[5:11, 4:12] = scenes.albedo("blue")
  tinted = image * np.asarray([1.0, 0.88, 0.93])  # a pale pink cast over everything
  np.testing.assert_allclose(images.image_background(tinted), [1.0, 0.88, 0.93])
  want = np.zeros((16, 16), bool)
  want[5:11, 4:12] = True
  np.testing.assert_array_equal(images.image_foreground(image), want)
  np.testing.assert_array_equal(images.image_foreground(tinted), want)
  assert images.image_colour(tinted)[0] == "blue"


def test_images_of_every_solid_and_colour_are_classified():
  size = 32
  n = len(scenes.SOLIDS) * len(scenes.COLOURS)
  cam = cameras.sample(jax.random.PRNGKey(0), n, scenes.camera_config(size))
  solids = np.repeat(np.arange(len(scenes.SOLIDS)), len(scenes.COLOURS))
  colours = np.tile(np.arange(len(scenes.COLOURS)), len(scenes.SOLIDS))
  rendered = np.asarray(render.render_batch(solids, scenes.palette()[colours], cam,
                                            supersample=2)["image"])
  wrong = []
  for img, s, c in zip(rendered, solids, colours):
    solid, iou = images.image_shape(img)
    name, _ = images.image_colour(img)
    if (solid, name) != (scenes.SOLIDS[s], scenes.COLOURS[c]) or iou < 0.8:
      wrong.append((scenes.SOLIDS[s], scenes.COLOURS[c], solid, name, iou))
  assert not wrong, wrong
