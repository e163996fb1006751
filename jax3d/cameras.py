"""Pinhole cameras on an orbit around the origin, world z up.

Conventions (shared by the NeRF renderer, the solids sphere tracer and the prior's data):
- `c2w` is camera-to-world; its columns are the camera's right, up and backward axes and its
  position (OpenGL style: the camera looks along -z of its own frame, image y points down).
- Azimuth is measured in the xy plane from +x towards +y; elevation from the xy plane towards
  +z. A camera at azimuth 0, elevation 0 sits on the +x axis looking at the origin.
- Pixel (row i, column j) has its centre at (j + 0.5, i + 0.5) in image coordinates.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import chex
import flax.struct
import jax
import jax.numpy as jnp

from jax3d.configuration import Range
from jax3d.errors import UserError


@flax.struct.dataclass
class Camera:
  """A (batch of) pinhole camera(s); leading dims of `c2w`/`fov_y` are batch dims."""
  c2w: jax.Array  # (..., 4, 4)
  fov_y: jax.Array  # (...,) vertical field of view, radians
  height: int = flax.struct.field(pytree_node=False, default=64)
  width: int = flax.struct.field(pytree_node=False, default=64)

  @property
  def position(self) -> jax.Array:
    return self.c2w[..., :3, 3]

  @property
  def focal(self) -> jax.Array:
    """Focal length in pixels."""
    return 0.5 * self.height / jnp.tan(0.5 * self.fov_y)


@dataclasses.dataclass(frozen=True)
class CameraConfig:
  """A random-orbit camera distribution (values: configs/, or `solids.scenes.camera_config`)."""
  height: Annotated[int, Range(1, 8192)]
  width: Annotated[int, Range(1, 8192)]
  distance: Annotated[float, Range(0, lo_open=True)]
  distance_jitter: Annotated[float, Range(0)]
  fov_deg: Annotated[float, Range(0, 179, lo_open=True)]
  fov_jitter_deg: Annotated[float, Range(0)]
  elevation_range: tuple[float, float]
  azimuth_range: tuple[float, float]


def look_at(position: jax.Array, target: jax.Array | None = None,
            up: jax.Array | None = None) -> jax.Array:
  """Camera-to-world matrices (..., 4, 4) for cameras at `position` looking at `target`."""
  position = jnp.asarray(position, jnp.float32)
  target = jnp.zeros_like(position) if target is None else jnp.broadcast_to(target, position.shape)
  up = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0]) if up is None else up, position.shape)
  back = position - target
  back = back / jnp.linalg.norm(back, axis=-1, keepdims=True)
  right = jnp.cross(up, back)
  right_norm = jnp.linalg.norm(right, axis=-1, keepdims=True)
  # Looking straight down (or up) the z axis: any right vector works; pick +y x back.
  fallback = jnp.cross(jnp.broadcast_to(jnp.array([0.0, 1.0, 0.0]), back.shape), back)
  right = jnp.where(right_norm > 1e-6, right, fallback)
  right = right / jnp.linalg.norm(right, axis=-1, keepdims=True)
  cam_up = jnp.cross(back, right)
  rot = jnp.stack([right, cam_up, back], axis=-1)
  top = jnp.concatenate([rot, position[..., None]], axis=-1)
  bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0]), top.shape[:-2] + (1, 4))
  return jnp.concatenate([top, bottom], axis=-2)


def spherical_to_position(azimuth_deg, elevation_deg, distance) -> jax.Array:
  az, el, distance = jnp.broadcast_arrays(jnp.asarray(azimuth_deg, jnp.float32),
                                          jnp.asarray(elevation_deg, jnp.float32),
                                          jnp.asarray(distance, jnp.float32))
  az, el = jnp.deg2rad(az), jnp.deg2rad(el)
  return jnp.stack([distance * jnp.cos(el) * jnp.cos(az),
                    distance * jnp.cos(el) * jnp.sin(az),
                    distance * jnp.sin(el)], axis=-1)


def from_spherical(azimuth_deg, elevation_deg, distance, fov_deg, height: int,
                   width: int) -> Camera:
  """Cameras at the given spherical coordinates, looking at the origin."""
  position = spherical_to_position(azimuth_deg, elevation_deg, distance)
  fov = jnp.broadcast_to(jnp.deg2rad(jnp.asarray(fov_deg, jnp.float32)), position.shape[:-1])
  return Camera(c2w=look_at(position), fov_y=fov, height=height, width=width)


def to_spherical(camera: Camera) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(azimuth_deg in (-180, 180], elevation_deg, distance) of each camera's position."""
  p = camera.position
  distance = jnp.linalg.norm(p, axis=-1)
  azimuth = jnp.rad2deg(jnp.arctan2(p[..., 1], p[..., 0]))
  elevation = jnp.rad2deg(jnp.arcsin(jnp.clip(p[..., 2] / distance, -1.0, 1.0)))
  return azimuth, elevation, distance


def sample(key: jax.Array, n: int, cfg: CameraConfig) -> Camera:
  """Draws `n` random orbit cameras: azimuth and elevation uniform in their ranges."""
  k_az, k_el, k_d, k_f = jax.random.split(key, 4)
  azimuth = jax.random.uniform(k_az, (n,), minval=cfg.azimuth_range[0],
                               maxval=cfg.azimuth_range[1])
  elevation = jax.random.uniform(k_el, (n,), minval=cfg.elevation_range[0],
                                 maxval=cfg.elevation_range[1])
  distance = cfg.distance + jax.random.uniform(
      k_d, (n,), minval=-cfg.distance_jitter, maxval=cfg.distance_jitter)
  fov = cfg.fov_deg + jax.random.uniform(
      k_f, (n,), minval=-cfg.fov_jitter_deg, maxval=cfg.fov_jitter_deg)
  return from_spherical(azimuth, elevation, distance, fov, cfg.height, cfg.width)


def orbit(n: int, elevation_deg: float = 15.0, distance: float = 2.0, fov_deg: float = 40.0,
          height: int = 64, width: int = 64) -> Camera:
  """A turntable path: `n` cameras at equally spaced azimuths starting from 0°."""
  azimuth = jnp.arange(n, dtype=jnp.float32) * (360.0 / n)
  return from_spherical(azimuth, jnp.full((n,), elevation_deg), distance, fov_deg,
                        height, width)


def rays(camera: Camera) -> tuple[jax.Array, jax.Array]:
  """Per-pixel ray origins and unit directions in world space, each (..., H, W, 3)."""
  h, w = camera.height, camera.width
  j, i = jnp.meshgrid(jnp.arange(w, dtype=jnp.float32) + 0.5,
                      jnp.arange(h, dtype=jnp.float32) + 0.5, indexing="xy")
  focal = camera.focal[..., None, None]
  dirs_cam = jnp.stack([(j - 0.5 * w) / focal,
                        -(i - 0.5 * h) / focal,
                        -jnp.ones(jnp.broadcast_shapes(focal.shape, j.shape))], axis=-1)
  rot = camera.c2w[..., None, None, :3, :3]
  dirs = jnp.einsum("...ij,...j->...i", rot, dirs_cam)
  dirs = dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)
  origins = jnp.broadcast_to(camera.position[..., None, None, :], dirs.shape)
  return origins, dirs


def project(camera: Camera, points: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Projects world points (..., 3) to pixel coordinates (x, y) and camera-space depth."""
  rot = camera.c2w[..., :3, :3]
  rel = points - camera.position
  p_cam = jnp.einsum("...ji,...j->...i", rot, rel)  # R^T (p - o)
  depth = -p_cam[..., 2]
  x = camera.focal * p_cam[..., 0] / depth + 0.5 * camera.width
  y = -camera.focal * p_cam[..., 1] / depth + 0.5 * camera.height
  return jnp.stack([x, y], axis=-1), depth


# DreamFusion's view-dependent prompting (Poole et al. 2022, Sec. 3.2 and Appendix): elevations
# above 60° are "overhead"; otherwise the azimuth picks front (|az| < 45°), back (|az| > 135°)
# or side. The thresholds are the ones of the public implementations (threestudio, stable-
# dreamfusion); azimuth 0 (camera on +x) is the front.
OVERHEAD_ELEVATION_DEG = 60.0
FRONT_HALF_ANGLE_DEG = 45.0
BACK_HALF_ANGLE_DEG = 45.0
VIEW_LABELS = ("front", "side", "back", "overhead")


# A finer, camera-conditioned labelling for priors that know it: 12 azimuth sectors of 30°
# labelled by their centres ('azimuth 0', 'azimuth 30', …). DreamFusion's words cannot tell a
# solid's orientation whenever the solid is symmetric under a rotation that fits inside a
# sector (a cube's 90° inside the 90°-wide front sector); distillation then converges to the
# union of the rotations (for the cube, its circumscribed cylinder).
VIEW_SCHEMES = ("dreamfusion", "azimuth")
AZIMUTH_SECTOR_DEG = 30.0
AZIMUTH_LABELS = tuple(f"azimuth {30 * k}" for k in range(12))


def check_view_scheme(scheme: str) -> None:
  if scheme not in VIEW_SCHEMES:
    raise UserError(f"unknown view labels {scheme!r}; choose one of {', '.join(VIEW_SCHEMES)} "
                    f"or auto (the prior's own)")


def view_labels(scheme: str = "dreamfusion") -> tuple[str, ...]:
  """The labels of a view scheme, in `view_index` order."""
  check_view_scheme(scheme)
  return VIEW_LABELS if scheme == "dreamfusion" else AZIMUTH_LABELS


def view_index(azimuth_deg, elevation_deg, scheme: str = "dreamfusion") -> jax.Array:
  """Index into `view_labels(scheme)` per camera; jit-friendly.

  dreamfusion: overhead above 60° elevation, else front/side/back by azimuth; azimuth: the
  30° sector whose centre is nearest (elevation ignored).
  """
  check_view_scheme(scheme)
  if scheme == "azimuth":
    sector = jnp.floor((jnp.asarray(azimuth_deg) % 360.0) / AZIMUTH_SECTOR_DEG + 0.5)
    return sector.astype(jnp.int32) % len(AZIMUTH_LABELS)
  az = (jnp.asarray(azimuth_deg) + 180.0) % 360.0 - 180.0
  abs_az = jnp.abs(az)
  idx = jnp.where(abs_az < FRONT_HALF_ANGLE_DEG, 0,
                  jnp.where(abs_az > 180.0 - BACK_HALF_ANGLE_DEG, 2, 1))
  return jnp.where(jnp.asarray(elevation_deg) > OVERHEAD_ELEVATION_DEG, 3, idx)


def view_label(azimuth_deg: float, elevation_deg: float, scheme: str = "dreamfusion") -> str:
  """The prompt suffix word(s) for one view, e.g. 'front' or 'azimuth 30'."""
  return view_labels(scheme)[int(view_index(azimuth_deg, elevation_deg, scheme))]


def view_suffix(label: str) -> str:
  """The text appended to a prompt for a view label, e.g. ', side view'."""
  return f", {label} view"


def check_camera(camera: Camera) -> None:
  chex.assert_shape(camera.c2w, camera.fov_y.shape + (4, 4))


__all__ = ["Camera", "CameraConfig", "sample", "orbit", "rays", "project", "view_label",
           "view_index", "view_suffix", "look_at", "from_spherical", "to_spherical",
           "VIEW_LABELS", "VIEW_SCHEMES", "AZIMUTH_LABELS", "view_labels",
           "check_view_scheme"]
