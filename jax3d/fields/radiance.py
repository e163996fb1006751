"""One interface over the radiance fields, so a system is wiring rather than a copy.

A `Field` turns params and world points into what the volume renderer and the systems need:
  density (...,), color (..., C) — RGB albedo in [0, 1] or a prior's latent channels —
  and, when asked, unit normals (..., 3) = −∇σ/|∇σ|.
A field with `cfg.radius` > 0 has no density outside the ball |x| <= radius: the training
cameras frame a ball of about distance·sin(fov/2) around the origin, and density farther out is
seen by few views, in front of or behind the object, where a distillation loss cannot tell it
from the object (docs/results.md, "Unseen geometry").
`labels(params)` tags each leaf "grid" (hash tables, voxel features: the high learning rate),
"mlp" (the low one) or "density" (a voxel grid's: its own, if set), which the systems'
optimizers read; `normal_eps` is the central-difference
step of render normals and `bound` the half size of the scene cube the field fills.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jax3d.errors import UserError
from jax3d.fields import nerf
from jax3d.fields import voxel

KINDS = ("nerf", "voxel")


def in_ball(density: jax.Array, x: jax.Array, radius: float) -> jax.Array:
  """`density` (...,) where |x| <= radius, 0 outside; unchanged for radius 0 (no ball)."""
  if radius <= 0:
    return density
  return jnp.where(jnp.sum(x * x, axis=-1) <= radius**2, density, 0.0)


@dataclasses.dataclass(frozen=True)
class FieldConfig:
  """A choice of field: `kind` picks which of the two settings groups is used."""
  kind: str  # one of KINDS
  nerf: nerf.NeRFConfig
  voxel: voxel.VoxelConfig

  def __post_init__(self):
    if self.kind not in KINDS:
      raise UserError(f"unknown field kind {self.kind!r}; choose one of {', '.join(KINDS)}")


@dataclasses.dataclass(frozen=True)
class NeRFField:
  """The hash-grid NeRF (DreamFusion, Magic3D coarse stage); `schedule` scales its density
  blob (`FieldSystem.density_schedule`)."""
  cfg: nerf.NeRFConfig

  def init(self, key: jax.Array) -> Any:
    return nerf.init(key, self.cfg)

  def query(self, params, x: jax.Array, schedule=1.0, with_normals: bool = False):
    q = nerf.query(params, x, self.cfg, schedule, with_normals=with_normals)
    q["color"] = q.pop("albedo")
    q["density"] = in_ball(q["density"], x, self.cfg.radius)
    return q

  def density(self, params, x: jax.Array, schedule=1.0) -> jax.Array:
    return in_ball(nerf.density(params, x, self.cfg, schedule), x, self.cfg.radius)

  def labels(self, params) -> Any:
    return {"encoding": "grid", "mlp": jax.tree.map(lambda _: "mlp", params["mlp"])}

  @property
  def normal_eps(self) -> float:
    return self.cfg.normal_eps

  @property
  def bound(self) -> float:
    return self.cfg.bound


@dataclasses.dataclass(frozen=True)
class VoxelField:
  """The dense voxel grid (SJC); `schedule` multiplies a laplace grid's β
  (`voxel.beta_schedule`), and its normals come from one vjp."""
  cfg: voxel.VoxelConfig

  def init(self, key: jax.Array) -> Any:
    return voxel.init(key, self.cfg)

  def query(self, params, x: jax.Array, schedule=1.0, with_normals: bool = False):
    if not with_normals:
      q = voxel.query(params, x, self.cfg, schedule)
      return {"density": in_ball(q["density"], x, self.cfg.radius), "color": q["features"]}
    # Each point's outputs depend on that point alone, so one vjp gives every gradient.
    (sigma, color), vjp = jax.vjp(
        lambda p: tuple(voxel.query(params, p, self.cfg, schedule).values()), x)
    (grad,) = vjp((jnp.ones_like(sigma), jnp.zeros_like(color)))
    normal = -grad / jnp.maximum(jnp.linalg.norm(grad, axis=-1, keepdims=True), 1e-12)
    return {"density": in_ball(sigma, x, self.cfg.radius), "color": color, "normal": normal}

  def density(self, params, x: jax.Array, schedule=1.0) -> jax.Array:
    return in_ball(voxel.query(params, x, self.cfg, schedule)["density"], x, self.cfg.radius)

  def labels(self, params) -> Any:
    return {"density": "density", "features": "grid"}

  @property
  def normal_eps(self) -> float:
    """One voxel."""
    return 2.0 * self.cfg.bound / (self.cfg.resolution - 1)

  @property
  def bound(self) -> float:
    return self.cfg.bound


Field = NeRFField | VoxelField


def make(cfg: FieldConfig, channels: int | None = None) -> Field:
  """The field `cfg.kind` picks; `channels` (the voxel grid's C) overrides the config's, for
  systems that render a prior's latent channels."""
  if cfg.kind == "nerf":
    return NeRFField(cfg.nerf)
  vc = cfg.voxel
  if channels is not None and channels != vc.channels:
    vc = dataclasses.replace(vc, channels=channels)
  return VoxelField(vc)


__all__ = ["Field", "FieldConfig", "NeRFField", "VoxelField", "make", "KINDS"]
