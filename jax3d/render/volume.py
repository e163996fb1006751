"""Static-shape volume rendering of any field inside the scene cube [-bound, bound]^3.

Each ray is clipped to the cube (slab test), and S samples t_1 < … < t_S are placed in
[near, far]: sample i sits in the i-th of S equal bins, at the bin's midpoint at eval (key None)
or uniformly jittered inside it in training (stratified sampling, Mildenhall et al. 2020 Eq. 2).
Sample i stands for the interval between the midpoints to its neighbours (the first and last
reach near and far), so the intervals δ_i tile [near, far] exactly. Compositing (NeRF Eq. 3):
  α_i = 1 − exp(−σ_i δ_i),  T_i = Π_{j<i} (1 − α_j),  w_i = T_i α_i,
  C = Σ_i w_i c_i + (1 − Σ_i w_i) · background.
Rays that miss the cube get zero weights. Every per-sample quantity a field returns besides
'density' (e.g. 'rgb', 'albedo', 'normal', 'features') is composited the same way.

The renderer is generic: `field_fn(points (R, S, 3), dirs (R, S, 3)) -> dict` closes over the
field's params, so NeRF, voxel grids and anything else share it.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Callable, Mapping

import chex
import jax
import jax.numpy as jnp

from jax3d import cameras
from jax3d.configuration import Range

FieldFn = Callable[[jax.Array, jax.Array], Mapping[str, jax.Array]]
# Per-sample outputs of render_rays; render_image drops them unless asked (they are S× larger).
PER_SAMPLE_KEYS = ("weights", "t", "deltas", "samples")


@dataclasses.dataclass(frozen=True)
class RenderConfig:
  """Ray-marching settings."""
  num_samples: Annotated[int, Range(1, 16384)]  # S, samples per ray
  bound: Annotated[float, Range(0, lo_open=True)]  # the scene cube's half size
  stratified: bool  # jitter samples in their bins when a key is given
  min_near: Annotated[float, Range(0)]  # samples start no closer than this to the ray origin


def intersect_box(origins: jax.Array, directions: jax.Array, bound: float,
                  min_near: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Slab test against [-bound, bound]^3: (near (R,), far (R,), hit (R,) bool).

  Missing rays get near = far = min_near.
  """
  safe = jnp.where(jnp.abs(directions) < 1e-12,
                   jnp.where(directions < 0, -1e-12, 1e-12), directions)
  inv = 1.0 / safe
  t0 = (-bound - origins) * inv
  t1 = (bound - origins) * inv
  near = jnp.maximum(jnp.max(jnp.minimum(t0, t1), axis=-1), min_near)
  far = jnp.min(jnp.maximum(t0, t1), axis=-1)
  hit = far > near
  return jnp.where(hit, near, min_near), jnp.where(hit, far, min_near), hit


def _sample_distances(near: jax.Array, far: jax.Array, jitter: jax.Array | None,
                      num_samples: int) -> tuple[jax.Array, jax.Array]:
  """Sample distances t (R, S) and their interval lengths δ (R, S)."""
  u = 0.5 if jitter is None else jitter
  frac = (jnp.arange(num_samples, dtype=jnp.float32) + u) / num_samples
  span = (far - near)[:, None]
  t = near[:, None] + span * frac
  mids = 0.5 * (t[:, 1:] + t[:, :-1])
  edges = jnp.concatenate([near[:, None], mids, far[:, None]], axis=-1)
  return t, edges[:, 1:] - edges[:, :-1]


def composite(density: jax.Array, deltas: jax.Array) -> jax.Array:
  """Weights w_i = T_i α_i (..., S) from densities and interval lengths (NeRF Eq. 3)."""
  alpha = 1.0 - jnp.exp(-density * deltas)
  # T_i = exp(−Σ_{j<i} σ_j δ_j): the exclusive cumulative sum is stabler than a product.
  optical = density * deltas
  trans = jnp.exp(-(jnp.cumsum(optical, axis=-1) - optical))
  return trans * alpha


def _per_ray_jitter(key: jax.Array, num_rays: int, num_samples: int) -> jax.Array:
  """Uniform jitter (R, S) with ray r's row drawn from its own key, split(key, R)[r]."""
  keys = jax.random.split(key, num_rays)
  return _jitter_from_keys(keys, num_samples)


def _jitter_from_keys(keys: jax.Array, num_samples: int) -> jax.Array:
  return jax.vmap(lambda k: jax.random.uniform(k, (num_samples,), jnp.float32))(keys)


def _render(field_fn: FieldFn, origins: jax.Array, directions: jax.Array,
            jitter: jax.Array | None, cfg: RenderConfig,
            background: Mapping[str, jax.Array] | None) -> dict[str, jax.Array]:
  near, far, hit = intersect_box(origins, directions, cfg.bound, cfg.min_near)
  t, deltas = _sample_distances(near, far, jitter, cfg.num_samples)
  points = origins[:, None, :] + t[..., None] * directions[:, None, :]
  dirs = jnp.broadcast_to(directions[:, None, :], points.shape)
  samples = dict(field_fn(points, dirs))
  if "density" not in samples:
    raise ValueError("field_fn must return a 'density' entry of shape (R, S)")
  sigma = samples["density"]
  chex.assert_shape(sigma, t.shape)
  weights = jnp.where(hit[:, None], composite(sigma, deltas), 0.0)
  opacity = jnp.sum(weights, axis=-1)
  out = {"opacity": opacity, "weights": weights, "t": t, "deltas": deltas,
         "depth": jnp.sum(weights * t, axis=-1) / jnp.maximum(opacity, 1e-10),
         "samples": samples}
  for name, value in samples.items():
    if name == "density":
      continue
    chex.assert_rank(value, 3)
    out[name] = jnp.sum(weights[..., None] * value, axis=-2)
  for name, colour in (background or {}).items():
    if name not in out or name in ("opacity", "depth"):
      raise ValueError(f"background given for {name!r}, which the field does not return")
    out[name] = out[name] + (1.0 - opacity)[:, None] * jnp.asarray(colour, jnp.float32)
  return out


def render_rays(field_fn: FieldFn, origins: jax.Array, directions: jax.Array,
                key: jax.Array | None, cfg: RenderConfig,
                background: Mapping[str, jax.Array] | None = None) -> dict[str, jax.Array]:
  """Volume-renders rays (R, 3) (unit directions) through `field_fn`.

  Returns per ray: every composited field output (R, k), 'opacity' Σw (R,), 'depth' (R,) —
  the expected distance along the ray given that it terminates in the volume, Σ w t / Σ w
  (0 where nothing is hit) — and per sample 'weights', 't', 'deltas' (R, S) and 'samples' (the
  field's raw outputs). `background` maps output names to colours (k,) or (R, k) blended in
  with weight 1 − opacity. With a key and `cfg.stratified`, ray r's jitter is drawn from
  `jax.random.split(key, R)[r]`, so the samples do not depend on how rays are batched; `key`
  may also be (R,) keys, one per ray.
  """
  chex.assert_shape(origins, (None, 3))
  chex.assert_equal_shape([origins, directions])
  jitter = None
  if key is not None and cfg.stratified:
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    one_key = key.ndim == (0 if typed else 1)
    jitter = (_per_ray_jitter(key, origins.shape[0], cfg.num_samples) if one_key
              else _jitter_from_keys(key, cfg.num_samples))
  return _render(field_fn, origins, directions, jitter, cfg, background)


def render_image(field_fn: FieldFn, camera: cameras.Camera, key: jax.Array | None,
                 cfg: RenderConfig, background: Mapping[str, jax.Array] | None = None,
                 chunk: int = 4096, keep_samples: bool = False) -> dict[str, jax.Array]:
  """Renders one camera's image as a dict of (H, W, k) (or (H, W)) maps.

  Rays go through the field in static chunks of `chunk` rays under `lax.map`, so memory scales
  with the chunk, not the image. The result equals `render_rays` on all H·W rays (row-major)
  with the same key. Background colours must be (k,) here (one per image). Per-sample
  outputs (weights, t, deltas, samples) are dropped unless `keep_samples`.
  """
  chex.assert_shape(camera.c2w, (4, 4))
  origins, dirs = cameras.rays(camera)
  h, w = camera.height, camera.width
  origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
  num_rays = h * w
  chunk = max(1, min(chunk, num_rays))
  num_chunks = -(-num_rays // chunk)
  pad = num_chunks * chunk - num_rays

  def padded(a):
    a = jnp.concatenate([a, jnp.broadcast_to(a[:1], (pad,) + a.shape[1:])], axis=0)
    return a.reshape((num_chunks, chunk) + a.shape[1:])

  use_jitter = key is not None and cfg.stratified
  xs = {"o": padded(origins), "d": padded(dirs)}
  if use_jitter:
    xs["k"] = padded(jax.random.split(key, num_rays))

  def render_chunk(batch):
    jitter = _jitter_from_keys(batch["k"], cfg.num_samples) if use_jitter else None
    out = _render(field_fn, batch["o"], batch["d"], jitter, cfg, background)
    if not keep_samples:
      out = {k: v for k, v in out.items() if k not in PER_SAMPLE_KEYS}
    return out

  out = jax.lax.map(render_chunk, xs)
  return jax.tree.map(
      lambda v: v.reshape((num_chunks * chunk,) + v.shape[2:])[:num_rays].reshape(
          (h, w) + v.shape[2:]), out)


__all__ = ["RenderConfig", "render_rays", "render_image", "intersect_box", "composite",
           "PER_SAMPLE_KEYS"]
