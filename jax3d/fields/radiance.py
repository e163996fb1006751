"""One interface over the radiance fields, so a system is wiring rather than a copy.

A `Field` turns params and world points into what the volume renderer and the systems need:
  density (...,), color (..., C) — RGB albedo in [0, 1] or a prior's latent channels —
  and, when asked, unit normals (..., 3) = −∇σ/|∇σ|.
`labels(params)` tags each leaf "grid" (hash tables, voxel values: the high learning rate) or
"mlp" (the low one), which the systems' optimizers read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jax3d.errors import UserError
from jax3d.fields import nerf
from jax3d.fields import voxel

KINDS = ("nerf", "voxel")


@dataclasses.dataclass(frozen=True)
class NeRFField:
  """The hash-grid NeRF (DreamFusion, Magic3D coarse stage); `blob` scales its density blob."""
  cfg: nerf.NeRFConfig

  def init(self, key: jax.Array) -> Any:
    return nerf.init(key, self.cfg)

  def query(self, params, x: jax.Array, blob=1.0, with_normals: bool = False):
    q = nerf.query(params, x, self.cfg, blob, with_normals=with_normals)
    q["color"] = q.pop("albedo")
    return q

  def density(self, params, x: jax.Array, blob=1.0) -> jax.Array:
    return nerf.density(params, x, self.cfg, blob)

  def labels(self, params) -> Any:
    return {"encoding": "grid", "mlp": jax.tree.map(lambda _: "mlp", params["mlp"])}


@dataclasses.dataclass(frozen=True)
class VoxelField:
  """The dense voxel grid (SJC); it has no blob, and its normals come from one vjp."""
  cfg: voxel.VoxelConfig

  def init(self, key: jax.Array) -> Any:
    return voxel.init(key, self.cfg)

  def query(self, params, x: jax.Array, blob=1.0, with_normals: bool = False):
    del blob
    if not with_normals:
      q = voxel.query(params, x, self.cfg)
      return {"density": q["density"], "color": q["features"]}
    # Each point's outputs depend on that point alone, so one vjp gives every gradient.
    (sigma, color), vjp = jax.vjp(
        lambda p: tuple(voxel.query(params, p, self.cfg).values()), x)
    (grad,) = vjp((jnp.ones_like(sigma), jnp.zeros_like(color)))
    normal = -grad / jnp.maximum(jnp.linalg.norm(grad, axis=-1, keepdims=True), 1e-12)
    return {"density": sigma, "color": color, "normal": normal}

  def density(self, params, x: jax.Array, blob=1.0) -> jax.Array:
    del blob
    return voxel.query(params, x, self.cfg)["density"]

  def labels(self, params) -> Any:
    return jax.tree.map(lambda _: "grid", params)


Field = NeRFField | VoxelField


def from_config(c: ml_collections.ConfigDict, channels: int | None = None) -> Field:
  """`c.kind` picks the field; `c.nerf` or `c.voxel` holds its settings.

  `channels` (the voxel grid's C) defaults to the config's; systems pass the prior's channel
  count when rendering latents.
  """
  kind = c.get("kind", "nerf")
  if kind == "nerf":
    return NeRFField(nerf.NeRFConfig.from_config(c.nerf))
  if kind == "voxel":
    vc = voxel.VoxelConfig.from_config(c.voxel)
    if channels is not None and channels != vc.channels:
      vc = dataclasses.replace(vc, channels=channels)
    return VoxelField(vc)
  raise UserError(f"unknown field kind {kind!r}; choose one of {', '.join(KINDS)}")


__all__ = ["Field", "NeRFField", "VoxelField", "from_config", "KINDS"]
