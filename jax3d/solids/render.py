"""Sphere tracing of the solids over the same camera rays as the NeRF renderer.

Shading is Lambertian, `albedo · (ambient + (1 − ambient) · max(0, n·l))`, with a point light
at the camera (so it sits "near the camera" for every view), over a plain white background.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jax3d import cameras
from jax3d.solids import scenes

AMBIENT = 0.35
BACKGROUND = 1.0
_HIT_EPS = 1e-3
_NORMAL_EPS = 1e-3


def _normal(solid, x):
  """Unit SDF gradient by central differences (autodiff of `norm` is NaN at 0, e.g. on
  the cube's faces, and a traced solid index differentiates every SDF branch)."""
  offsets = _NORMAL_EPS * jnp.eye(3)
  d = scenes.sdf(solid, x + offsets) - scenes.sdf(solid, x - offsets)
  return d / (jnp.linalg.norm(d) + 1e-12)


def _trace(solid, origin, direction, num_steps: int):
  """Marches one ray; returns (hit, t) with t the ray distance of the surface."""
  # Start where the ray enters the bounding sphere (the cameras are outside it).
  b = jnp.dot(origin, direction)
  c = jnp.dot(origin, origin) - (scenes.BOUNDING_RADIUS + 0.05)**2
  disc = b * b - c
  t0 = jnp.maximum(-b - jnp.sqrt(jnp.maximum(disc, 0.0)), 0.0)
  t_far = -b + jnp.sqrt(jnp.maximum(disc, 0.0))

  def step(t, _):
    d = scenes.sdf(solid, origin + t * direction)
    return t + jnp.maximum(d, 0.0), None

  t, _ = jax.lax.scan(step, t0, None, length=num_steps)
  d = scenes.sdf(solid, origin + t * direction)
  hit = (disc > 0) & (d < _HIT_EPS) & (t < t_far)
  return hit, t


def _render_rays(solid, rgb, origins, directions, light, ambient, num_steps):
  def one(o, d):
    hit, t = _trace(solid, o, d, num_steps)
    x = o + t * d
    n = _normal(solid, x)
    l = light - x
    l = l / jnp.linalg.norm(l)
    shade = ambient + (1.0 - ambient) * jnp.maximum(jnp.dot(n, l), 0.0)
    colour = jnp.where(hit, rgb * shade, BACKGROUND)
    return colour, hit.astype(jnp.float32), jnp.where(hit, t, 0.0)
  return jax.vmap(one)(origins, directions)


def _render_one(solid, rgb, camera: cameras.Camera, supersample: int = 1,
                ambient: float = AMBIENT, num_steps: int = 96) -> dict[str, jax.Array]:
  """Renders one solid (name index, traced ok) with albedo `rgb` (3,) from one camera.

  Returns image (H, W, 3) in [0, 1], mask (H, W) (fractional when supersampled) and depth
  (H, W): the ray distance to the surface, 0 where the ray misses. `supersample` renders at
  s× resolution and box-filters down (anti-aliased masks and images).
  """
  h, w, s = camera.height, camera.width, supersample
  hi_res = cameras.Camera(c2w=camera.c2w, fov_y=camera.fov_y, height=h * s, width=w * s)
  origins, directions = cameras.rays(hi_res)
  colour, mask, depth = _render_rays(
      solid, jnp.asarray(rgb, jnp.float32), origins.reshape(-1, 3), directions.reshape(-1, 3),
      camera.position, ambient, num_steps)

  def down(a):
    a = a.reshape(h, s, w, s, *a.shape[1:])
    return a.mean(axis=(1, 3))

  hits = down(mask)
  depth_sum = down(depth)
  return {"image": down(colour.reshape(h * s * w * s, 3)).reshape(h, w, 3),
          "mask": hits,
          "depth": jnp.where(hits > 0, depth_sum / jnp.maximum(hits, 1e-8), 0.0)}


render = jax.jit(_render_one, static_argnames=("supersample", "num_steps"))


def _render_many(solid, rgb, camera: cameras.Camera, supersample: int, ambient: float,
                 num_steps: int) -> dict[str, jax.Array]:
  one = functools.partial(_render_one, supersample=supersample, ambient=ambient,
                          num_steps=num_steps)
  if isinstance(solid, str):  # One static solid: closed over, only its SDF is traced.
    return jax.vmap(functools.partial(one, solid))(jnp.asarray(rgb), camera)
  return jax.vmap(one)(jnp.asarray(solid), jnp.asarray(rgb), camera)


_render_many_static = jax.jit(_render_many,
                              static_argnames=("solid", "supersample", "num_steps"))
_render_many_traced = jax.jit(_render_many, static_argnames=("supersample", "num_steps"))


def render_batch(solid, rgb, camera: cameras.Camera, supersample: int = 1,
                 ambient: float = AMBIENT, num_steps: int = 96) -> dict[str, jax.Array]:
  """`render` over a leading batch axis of rgb and camera (and solid, unless a name).

  A solid given by name (one for the whole batch) evaluates only its own SDF; an array of
  solid indices evaluates all five and selects (several times slower).
  """
  fn = _render_many_static if isinstance(solid, str) else _render_many_traced
  return fn(solid, rgb, camera, supersample=supersample, ambient=ambient, num_steps=num_steps)


@functools.partial(jax.jit, static_argnames=("num_steps",))
def _masks(solid: jax.Array, camera: cameras.Camera, num_steps: int) -> jax.Array:
  def one(cam):
    origins, directions = cameras.rays(cam)
    hit, _ = jax.vmap(lambda o, d: _trace(solid, o, d, num_steps))(
        origins.reshape(-1, 3), directions.reshape(-1, 3))
    return hit.reshape(cam.height, cam.width)
  return jax.lax.map(one, camera)


def masks(solid: int | str | jax.Array, camera: cameras.Camera,
          num_steps: int = 96) -> jax.Array:
  """Hit masks (N, H, W) bool of one solid (name or index) from a batch of N cameras.

  One ray per pixel centre: `render`'s mask without supersampling or shading. The solid is a
  traced index here, so one compilation serves all five.
  """
  index = scenes.index_of(solid) if isinstance(solid, str) else solid
  return _masks(jnp.asarray(index, jnp.int32), camera, num_steps=num_steps)
