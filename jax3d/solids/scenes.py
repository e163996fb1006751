"""The solids world: prompts, exact signed distance functions and palette colours.

The spec is fixed (docs/architecture.md; the benchmark and outside checkers depend on it):
world z up, every solid centred at the origin —
  sphere   radius 0.5
  cube     edge 0.8, axis-aligned
  cylinder radius 0.4, height 0.9, axis z
  cone     base radius 0.5, height 0.9, base at z = -0.45, apex at z = +0.45
  torus    major radius 0.35, minor radius 0.15, in the xy plane
Colours by hue: red 0°, orange 30°, yellow 55°, green 120°, blue 230°, purple 280°.
"""

from __future__ import annotations

import colorsys
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from jax3d import cameras
from jax3d.errors import UserError, shown

SOLIDS = ("sphere", "cube", "cylinder", "cone", "torus")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
HUES_DEG = {"red": 0.0, "orange": 30.0, "yellow": 55.0, "green": 120.0, "blue": 230.0,
            "purple": 280.0}
# Saturation and value of every palette albedo (HSV). Fixed with the spec.
SATURATION = 0.85
VALUE = 0.9

SPHERE_RADIUS = 0.5
CUBE_HALF_EDGE = 0.4
CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT = 0.4, 0.45
CONE_RADIUS, CONE_HALF_HEIGHT = 0.5, 0.45
TORUS_MAJOR, TORUS_MINOR = 0.35, 0.15
# Every solid fits in this sphere (the cube's corner is the farthest point: 0.4·√3 ≈ 0.693).
BOUNDING_RADIUS = 0.7
# Rotational symmetry period about z of the solids that have a finite one; the others are
# symmetric under every rotation about z.
SYMMETRY_PERIOD_DEG = {"cube": 90.0}


@dataclasses.dataclass(frozen=True)
class Scene:
  """A parsed solids prompt: which solid, which colour (None = any), which view suffix."""
  solid: str
  colour: str | None = None
  view: str | None = None

  @property
  def solid_index(self) -> int:
    return SOLIDS.index(self.solid)

  @property
  def base_prompt(self) -> str:
    """The prompt without its view suffix, with the right article."""
    return prompt_for(self.solid, self.colour)

  @property
  def prompt(self) -> str:
    return prompt_for(self.solid, self.colour, self.view)


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def prompt_for(solid: str, colour: str | None = None, view: str | None = None,
               article: str | None = None) -> str:
  """'a red cube', 'an orange cone', 'a torus, side view'."""
  noun = f"{colour} {solid}" if colour else solid
  text = f"{article or _article(noun)} {noun}"
  return text + (cameras.view_suffix(view) if view else "")


def colour_prompts() -> list[str]:
  """The 30 benchmark prompts `a {colour} {solid}`, solid-major order."""
  return [prompt_for(s, c) for s in SOLIDS for c in COLOURS]


def colourless_prompts() -> list[str]:
  """The 5 prompts `a {solid}` whose colour is left open."""
  return [prompt_for(s) for s in SOLIDS]


_KNOWN_VIEWS = frozenset(cameras.VIEW_LABELS + cameras.AZIMUTH_LABELS)


def _view(text: str) -> str:
  return " ".join(text.split())


_PROMPT_RE = re.compile(
    r"^(?:an?\s+)(?:(?P<colour>[a-z]+)\s+)?(?P<solid>[a-z]+)"
    r"(?:\s*,\s*(?P<view>[a-z]+(?:\s+\d+)?)\s+view)?\s*\.?$")


def parse_prompt(prompt: str) -> Scene:
  """Parses 'a {colour} {solid}', 'an {colour} {solid}' or 'a {solid}' (+ ', {view} view'),
  the view a label of either scheme in `cameras.VIEW_SCHEMES`."""
  if not isinstance(prompt, str) or not prompt.strip():
    raise UserError("the prompt is empty; give a solids prompt such as 'a red cube'")
  m = _PROMPT_RE.match(prompt.strip().lower())
  ok = (m is not None and m.group("solid") in SOLIDS and
        (m.group("colour") is None or m.group("colour") in COLOURS) and
        (m.group("view") is None or _view(m.group("view")) in _KNOWN_VIEWS))
  if not ok:
    raise UserError(
        f"{shown(prompt)} is not a solids prompt; the solids world knows 'a {{colour}} {{solid}}' "
        f"and 'a {{solid}}' (optionally ', {{front|side|back|overhead}} view' or ', azimuth "
        f"{{0|30|...|330}} view') with colour in "
        f"{{{', '.join(COLOURS)}}} and solid in {{{', '.join(SOLIDS)}}}")
  view = m.group("view")
  return Scene(solid=m.group("solid"), colour=m.group("colour"),
               view=None if view is None else _view(view))


def hue_to_rgb(hue_deg: float, saturation: float = SATURATION,
               value: float = VALUE) -> np.ndarray:
  return np.asarray(colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, saturation, value),
                    np.float32)


def albedo(colour: str) -> np.ndarray:
  """The palette albedo (RGB in [0, 1]) of a colour name."""
  return hue_to_rgb(HUES_DEG[colour])


def palette() -> np.ndarray:
  """(6, 3) albedos in COLOURS order."""
  return np.stack([albedo(c) for c in COLOURS])


# Exact signed distances (negative inside).
def _sdf_sphere(p):
  return jnp.linalg.norm(p, axis=-1) - SPHERE_RADIUS


def _sdf_box(p, half):
  q = jnp.abs(p) - half
  outside = jnp.linalg.norm(jnp.maximum(q, 0.0), axis=-1)
  inside = jnp.minimum(jnp.max(q, axis=-1), 0.0)
  return outside + inside


def _sdf_cylinder(p):
  d = jnp.stack([jnp.linalg.norm(p[..., :2], axis=-1) - CYLINDER_RADIUS,
                 jnp.abs(p[..., 2]) - CYLINDER_HALF_HEIGHT], axis=-1)
  return jnp.minimum(jnp.max(d, axis=-1), 0.0) + jnp.linalg.norm(jnp.maximum(d, 0.0), axis=-1)


def _sdf_cone(p):
  """Capped cone (top radius 0) in the (radial, z) half-plane: min distance to the base disc
  edge segment and the slanted side segment, signed by inside/outside."""
  h, r1 = CONE_HALF_HEIGHT, CONE_RADIUS
  qx = jnp.linalg.norm(p[..., :2], axis=-1)
  qy = p[..., 2]
  # Distance to the flat base (and the apex cap, which has radius 0).
  cap_r = jnp.where(qy < 0.0, r1, 0.0)
  ca = jnp.stack([qx - jnp.minimum(qx, cap_r), jnp.abs(qy) - h], axis=-1)
  # Distance to the slanted side from (r1, -h) to (0, h).
  k1 = jnp.array([0.0, h])
  k2 = jnp.array([-r1, 2.0 * h])
  q = jnp.stack([qx, qy], axis=-1)
  s = jnp.clip(jnp.sum((k1 - q) * k2, axis=-1) / jnp.sum(k2 * k2), 0.0, 1.0)
  cb = q - k1 + k2 * s[..., None]
  sign = jnp.where((cb[..., 0] < 0.0) & (ca[..., 1] < 0.0), -1.0, 1.0)
  return sign * jnp.sqrt(jnp.minimum(jnp.sum(ca * ca, -1), jnp.sum(cb * cb, -1)))


def _sdf_torus(p):
  q = jnp.stack([jnp.linalg.norm(p[..., :2], axis=-1) - TORUS_MAJOR, p[..., 2]], axis=-1)
  return jnp.linalg.norm(q, axis=-1) - TORUS_MINOR


_SDFS = (_sdf_sphere, lambda p: _sdf_box(p, CUBE_HALF_EDGE), _sdf_cylinder, _sdf_cone,
         _sdf_torus)


def index_of(solid: str) -> int:
  """The index of a solid's name in SOLIDS."""
  if solid not in SOLIDS:
    raise UserError(f"unknown solid {solid!r}; pick one of {', '.join(SOLIDS)}")
  return SOLIDS.index(solid)


def sdf(solid: int | str | jax.Array, x: jax.Array) -> jax.Array:
  """Signed distance (…,) of points x (…, 3) to a solid, given by name or (traced) index.

  A traced index evaluates only that solid's SDF (one compilation serves all solids); under
  vmap over indices all five are evaluated and selected.
  """
  if isinstance(solid, str):
    return _SDFS[SOLIDS.index(solid)](x)
  return jax.lax.switch(jnp.asarray(solid, jnp.int32), _SDFS, x)


def volume(solid: str) -> float:
  """Closed-form volume of a solid (for tests and metrics)."""
  return {
      "sphere": 4.0 / 3.0 * np.pi * SPHERE_RADIUS**3,
      "cube": (2 * CUBE_HALF_EDGE)**3,
      "cylinder": np.pi * CYLINDER_RADIUS**2 * 2 * CYLINDER_HALF_HEIGHT,
      "cone": np.pi * CONE_RADIUS**2 * 2 * CONE_HALF_HEIGHT / 3.0,
      "torus": 2 * np.pi**2 * TORUS_MAJOR * TORUS_MINOR**2,
  }[solid]


def camera_config(resolution: int) -> cameras.CameraConfig:
  """The world's camera distribution (fixed with the spec; shared by the solids renderer, the
  prior's training data and the toy configs): look at the origin from distance 2.0 ± 0.1,
  vertical fov 40°, elevation −10…45°, azimuth uniform; `resolution`² pixels."""
  return cameras.CameraConfig(height=resolution, width=resolution, distance=2.0,
                              distance_jitter=0.1, fov_deg=40.0, fov_jitter_deg=0.0,
                              elevation_range=(-10.0, 45.0), azimuth_range=(-180.0, 180.0))
