"""Hues of the solids world: HSV, circular hue distances and the nearest palette colour."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jax3d.solids import scenes

# Below this HSV saturation a colour is grey and has no hue.
MIN_HUE_SATURATION = 0.02


def rgb_to_hsv(rgb) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """HSV of RGB (..., 3) in [0, 1]: hue in degrees [0, 360), saturation, value."""
  rgb = np.asarray(rgb, np.float64)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  mx, mn = rgb.max(-1), rgb.min(-1)
  delta = mx - mn
  safe = np.where(delta > 0, delta, 1.0)
  hue = np.where(mx == r, ((g - b) / safe) % 6.0,
                 np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  hue = np.where(delta > 0, 60.0 * hue, 0.0) % 360.0
  sat = np.where(mx > 0, delta / np.where(mx > 0, mx, 1.0), 0.0)
  return hue, sat, mx


def hue_of(rgb) -> float | None:
  """Hue (degrees) of one RGB colour (3,); None when it is grey."""
  h, s, _ = rgb_to_hsv(rgb)
  return float(h) if s >= MIN_HUE_SATURATION else None


def hue_distance(a, b) -> np.ndarray:
  """Circular distance between hues in degrees, in [0, 180]."""
  d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)) % 360.0
  return np.minimum(d, 360.0 - d)


def nearest_colour(hue_deg: float) -> str:
  """The palette colour whose hue is circularly nearest."""
  return min(scenes.COLOURS, key=lambda c: float(hue_distance(hue_deg, scenes.HUES_DEG[c])))


def hue_spread(hues_deg: Sequence[float]) -> float:
  """1 - |mean unit hue vector|: 0 when all hues agree, 1 for hues spread evenly."""
  a = np.deg2rad(np.asarray(hues_deg, np.float64))
  return float(1.0 - np.hypot(np.cos(a).mean(), np.sin(a).mean()))
