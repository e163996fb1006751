"""Shading of rendered fields: Lambertian modes per sample or deferred to one point per ray.

Modes (DreamFusion, Poole et al. 2022, Sec. 3.1): albedo; Lambertian,
albedo · (ambient + (1 − ambient) · max(0, n·l)); textureless, the same with white albedo.
Deferred shading lights the composited albedo once per ray, at the expected termination point
x_s = o + d·depth, with one central-difference normal there (`fields.normals`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jax3d.errors import UserError
from jax3d.fields import normals as normals_lib

SHADING_MODES = ("albedo", "lambertian", "textureless")
DEFAULT_AMBIENT = 0.1


def shading_index(name: str) -> int:
  """Index of a shading mode name in SHADING_MODES."""
  if name not in SHADING_MODES:
    raise UserError(f"unknown shading mode {name!r}; choose one of {', '.join(SHADING_MODES)}")
  return SHADING_MODES.index(name)


def shade(albedo: jax.Array, normal: jax.Array, light_dir: jax.Array, mode_index,
          ambient=DEFAULT_AMBIENT) -> jax.Array:
  """Shaded colour (..., 3) under the mode SHADING_MODES[mode_index] (a traced int is fine).

  `light_dir` (3,) or (..., 3) points from the surface towards the light (normalised here);
  `mode_index` is a scalar or broadcasts against (...,).
  """
  light_dir = normals_lib.normalize(jnp.asarray(light_dir, jnp.float32))
  n_dot_l = jnp.sum(normal * light_dir, axis=-1, keepdims=True)
  lambert = ambient + (1.0 - ambient) * jnp.maximum(n_dot_l, 0.0)
  mode = jnp.asarray(mode_index)[..., None]
  base = jnp.where(mode == 2, jnp.ones_like(albedo), albedo)
  return base * jnp.where(mode == 0, jnp.ones_like(lambert), lambert)


def shade_composite(color: jax.Array, opacity: jax.Array, normal: jax.Array,
                    light_dir: jax.Array, mode_index, ambient=DEFAULT_AMBIENT) -> jax.Array:
  """Deferred shading of a composited albedo Σw·c (..., 3) with opacity Σw (...,): `shade` at
  one normal per ray; textureless lights the opacity (a white object) instead of the albedo.
  The background is not included."""
  mode = jnp.asarray(mode_index)
  base = jnp.where(mode[..., None] == 2, opacity[..., None], color)
  return shade(base, normal, light_dir, jnp.where(mode == 2, 1, mode), ambient)


def deferred(out: dict[str, jax.Array], origins: jax.Array, dirs: jax.Array,
             density_fn: Callable[[jax.Array], jax.Array], eps: float, background: jax.Array,
             light_pos=None, mode=None,
             ambient: float = DEFAULT_AMBIENT) -> tuple[jax.Array, jax.Array]:
  """(colour (..., C), normal (..., 3)) of rendered rays `out` (colour 'color' composited
  without a background): one normal per ray, −∇σ/|∇σ| by central differences of step `eps`
  at x_s = o + d·depth; with a `mode`, the colour is lit there by `shade_composite` (light at
  `light_pos`); then the background fills 1 − opacity. Gradients reach the surface's
  orientation through the six density queries per ray and its position through the depth."""
  x_s = origins + dirs * out["depth"][..., None]
  normal = normals_lib.central_difference(density_fn, x_s, eps)
  color = out["color"]
  if mode is not None:
    color = shade_composite(color, out["opacity"], normal, light_pos - x_s, mode, ambient)
  return color + (1.0 - out["opacity"])[..., None] * background, normal


__all__ = ["SHADING_MODES", "DEFAULT_AMBIENT", "shading_index", "shade", "shade_composite",
           "deferred"]
