"""Volume renders of a radiance `Field` (fields/radiance.py): training batches and export views.

`render_views` renders a batch of cameras for a training step (stratified samples, one key per
view), optionally lit per sample or deferred (render/shading.py); `render_view` renders one
camera deterministically in chunks, with deferred normals, for previews, turntables and the
mesh iso-level.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jax3d import cameras
from jax3d.fields import radiance
from jax3d.render import shading
from jax3d.render import volume


class Lighting(NamedTuple):
  """Per-view shading of a training batch: SHADING_MODES indices (V,), light positions (V, 3),
  the ambient term, and whether to shade once per ray (deferred) or per sample."""
  modes: jax.Array
  lights: jax.Array
  ambient: float
  deferred: bool


def _identity(x):
  return x


def render_views(field: radiance.Field, params: Any, cams: cameras.Camera, key: jax.Array,
                 cfg: volume.RenderConfig, background: jax.Array, schedule=1.0,
                 lighting: Lighting | None = None, sample_normals: bool = False,
                 split_rays: Callable[[jax.Array], jax.Array] = _identity
                 ) -> dict[str, jax.Array]:
  """Renders V cameras (a batched `Camera`) with view v's ray jitter from split(key, V)[v].

  Returns 'color' (V, H, W, C) over `background` (C,), lit when `lighting` is given;
  'opacity' and 'depth' (V, H, W); 'weights' (V, H·W, S); 'normal' (V, H, W, 3) when normals
  are computed (deferred lighting, or `sample_normals`: −∇σ per sample, composited, and then
  also 'sample_normals' (V, H·W, S, 3)). `split_rays` places the (V·H·W, ...) per-ray arrays
  (e.g. `train.sharding.split_rays` over the views mesh axis).

  All views' rays go through the field as one batch (each ray carries its view's jitter key,
  light and shading mode) rather than a vmap over views: XLA:CPU compiles the hash grid's
  gathers under a size-1 batch axis ~3.5x slower (docs/results.md, "VSD speed").
  """
  v, h, w = cams.fov_y.shape[0], cams.height, cams.width
  n = h * w
  origins, dirs = cameras.rays(cams)
  origins, dirs = split_rays(origins.reshape(v * n, 3)), split_rays(dirs.reshape(v * n, 3))
  ray_keys = jax.vmap(lambda k: jax.random.split(k, n))(jax.random.split(key, v))
  ray_keys = split_rays(ray_keys.reshape(v * n))
  deferred = lighting is not None and lighting.deferred
  per_ray = lambda a: split_rays(jnp.repeat(a, n, axis=0))
  if lighting is not None:
    modes, lights = per_ray(lighting.modes), per_ray(lighting.lights)

  def field_fn(points, _):
    q = field.query(params, points, schedule, with_normals=sample_normals)
    out = {"density": q["density"], "color": q["color"]}
    if sample_normals:
      out["normal"] = q["normal"]
      if lighting is not None and not deferred:
        out["color"] = shading.shade(q["color"], q["normal"], lights[:, None] - points,
                                     modes[:, None], lighting.ambient)
    return out

  out = volume.render_rays(field_fn, origins, dirs, ray_keys, cfg,
                           background=None if deferred else {"color": background})
  if deferred:
    out["color"], out["normal"] = shading.deferred(
        out, origins, dirs, lambda x: field.density(params, x, schedule), field.normal_eps,
        background, lights, modes, lighting.ambient)
  maps = {"color": out["color"].reshape(v, h, w, -1), "opacity": out["opacity"].reshape(v, h, w),
          "depth": out["depth"].reshape(v, h, w), "weights": out["weights"].reshape(v, n, -1)}
  if "normal" in out:
    maps["normal"] = out["normal"].reshape(v, h, w, 3)
  if sample_normals:
    maps["sample_normals"] = out["samples"]["normal"].reshape(v, n, -1, 3)
  return maps


def render_view(field: radiance.Field, params: Any, camera: cameras.Camera,
                cfg: volume.RenderConfig, background: jax.Array, schedule=1.0, mode=None,
                ambient: float = shading.DEFAULT_AMBIENT, chunk: int = 4096
                ) -> dict[str, jax.Array]:
  """A deterministic render of one camera: 'color' (H, W, C) over `background`, lit by
  deferred shading under SHADING_MODES[mode] with the light at the camera (unlit when `mode`
  is None), 'normal' (H, W, 3) (one per pixel, at the expected surface) and 'opacity'."""
  def field_fn(points, _):
    q = field.query(params, points, schedule)
    return {"density": q["density"], "color": q["color"]}

  out = volume.render_image(field_fn, camera, None, cfg, chunk=chunk)
  origins, dirs = cameras.rays(camera)
  color, normal = shading.deferred(out, origins, dirs,
                                   lambda x: field.density(params, x, schedule),
                                   field.normal_eps, background, camera.position, mode,
                                   ambient)
  return {"color": color, "normal": normal, "opacity": out["opacity"]}


__all__ = ["Lighting", "render_views", "render_view"]
