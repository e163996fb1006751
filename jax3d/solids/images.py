"""2D checks of the solids prior: which colour and which solid an image shows.

An image is classified by its foreground (pixels far from its own background colour): the
circular median hue of the saturated ones, and the best mask IoU against a bank of
sphere-traced silhouettes of every solid over the world's camera distribution
(`scenes.camera_config`) on a grid.
"""

from __future__ import annotations

import functools

import numpy as np

from jax3d import cameras
from jax3d.solids import colour as colour_lib
from jax3d.solids import render
from jax3d.solids import scenes
from jax3d.solids import silhouettes as sil_lib

# Steps of the mask bank's grid over the camera distribution; its distances are the mean and
# both ends.
BANK_ELEVATION_STEP_DEG = 5.0
BANK_AZIMUTH_STEP_DEG = 7.5


def _as_image(image) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
  if image.dtype == np.uint8:
    return image.astype(np.float32) / 255.0
  return image.astype(np.float32)


def image_background(image) -> np.ndarray:
  """(3,) the image's background colour: the per-channel median of its one-pixel border
  (the solids world's background is uniform and objects are framed inside the image)."""
  image = _as_image(image)
  border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
  return np.median(border, axis=0)


def image_foreground(image, threshold: float = 0.1) -> np.ndarray:
  """(H, W) bool: pixels farther than `threshold` from the background colour in some channel.

  On a white background this is 1 − min(rgb) > threshold; measuring from the image's own
  background keeps a faint tint of a generated background out of the foreground."""
  image = _as_image(image)
  return np.abs(image - image_background(image)).max(-1) > threshold


def image_colour(image, min_saturation: float = 0.25) -> tuple[str | None, float | None]:
  """(nearest palette colour, hue in degrees) of the circular median hue of the saturated
  foreground pixels; (None, None) when there are none. Shading and blending with the white
  background change value and saturation, not hue."""
  image = _as_image(image)
  hue, sat, val = colour_lib.rgb_to_hsv(image)
  sel = image_foreground(image) & (sat > min_saturation) & (val > 0.05)
  if not sel.any():
    return None, None
  h = hue[sel]
  candidates = np.arange(0.0, 360.0, 0.5)
  cost = colour_lib.hue_distance(candidates[:, None], h[None, :]).sum(1)
  median = float(candidates[int(np.argmin(cost))])
  return colour_lib.nearest_colour(median), median


@functools.lru_cache(maxsize=8)
def _mask_bank(height: int, width: int) -> dict[str, np.ndarray]:
  """{solid: (M, H, W) bool} masks over the bank's camera poses (cube: azimuths over its
  90° period; the others are symmetric about z, so azimuth 0 suffices)."""
  cfg = scenes.camera_config(height)
  lo, hi = cfg.elevation_range
  elevations = np.arange(lo, hi + 1e-6, BANK_ELEVATION_STEP_DEG)
  distances = cfg.distance + cfg.distance_jitter * np.array([-1.0, 0.0, 1.0])
  bank = {}
  chunk = len(elevations) * len(distances)  # one azimuth: one compiled shape
  for solid in scenes.SOLIDS:
    period = scenes.SYMMETRY_PERIOD_DEG.get(solid)
    azimuths = np.arange(0.0, period, BANK_AZIMUTH_STEP_DEG) if period else np.zeros(1)
    az, el, dist = (g.ravel() for g in np.meshgrid(azimuths, elevations, distances,
                                                   indexing="ij"))
    cam = cameras.from_spherical(az, el, dist, cfg.fov_deg, height, width)
    masks = [render.masks(solid, cameras.Camera(c2w=cam.c2w[k:k + chunk],
                                                fov_y=cam.fov_y[k:k + chunk],
                                                height=height, width=width))
             for k in range(0, len(az), chunk)]
    bank[solid] = np.concatenate([np.asarray(m) for m in masks])
  return bank


def image_shape_scores(image, threshold: float = 0.1) -> dict[str, float]:
  """{solid: best IoU of the image's foreground with the solid's bank masks}."""
  fg = image_foreground(image, threshold)
  bank = _mask_bank(*fg.shape)
  return {s: float(sil_lib.mask_iou(m, fg).max()) for s, m in bank.items()}


def image_shape(image, threshold: float = 0.1) -> tuple[str | None, float]:
  """(the solid whose bank silhouette best matches the image's foreground, that IoU);
  (None, 0.0) for an image without foreground."""
  if not image_foreground(image, threshold).any():
    return None, 0.0
  scores = image_shape_scores(image, threshold)
  best = max(scores, key=scores.get)
  return best, scores[best]
