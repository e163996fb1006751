"""Regularizers on rendered fields, added to a distillation loss by the systems."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax3d.errors import UserError

OPACITY_LOSS_KINDS = ("mean", "entropy")


def orientation_loss(weights: jax.Array, normals: jax.Array, view_dirs: jax.Array,
                     stop_weight_gradient: bool = True) -> jax.Array:
  """Mean over rays of Σ_i w_i · max(0, n_i · d)² (Ref-NeRF Eq. 10, DreamFusion Sec. 3.1).

  Penalises visible normals that face away from the camera; `d` is the ray direction (from the
  camera), `view_dirs` (R, 3) per ray or (R, S, 3) per sample; weights (R, S), normals
  (R, S, 3). The weights are treated as constants by default, as DreamFusion's public
  re-implementations do, so the loss moves the normals rather than hiding the samples.
  """
  if view_dirs.ndim == normals.ndim - 1:
    view_dirs = view_dirs[..., None, :]
  if stop_weight_gradient:
    weights = jax.lax.stop_gradient(weights)
  facing_away = jnp.maximum(jnp.sum(normals * view_dirs, axis=-1), 0.0)
  return jnp.mean(jnp.sum(weights * facing_away**2, axis=-1))


def opacity_loss(opacity: jax.Array, kind: str = "mean") -> jax.Array:
  """Sparsity penalty on accumulated opacity (...,).

  'mean': the mean opacity (an L1 penalty, opacity >= 0), which shrinks the object and clears
  floaters — DreamFusion's regulariser against filling the frame.
  'entropy': the mean binary entropy −o·log2(o) − (1−o)·log2(1−o) (stable-dreamfusion), which
  pushes each ray to fully opaque or fully empty without preferring either.
  """
  if kind == "mean":
    return jnp.mean(opacity)
  if kind == "entropy":
    o = jnp.clip(opacity, 1e-5, 1.0 - 1e-5)
    return jnp.mean(-o * jnp.log2(o) - (1.0 - o) * jnp.log2(1.0 - o))
  raise UserError(f"unknown opacity loss {kind!r}; choose one of {', '.join(OPACITY_LOSS_KINDS)}")


def emptiness_loss(weights: jax.Array, scale: float) -> jax.Array:
  """mean(log(1 + scale·w)) over every ray sample's weight (SJC's sparsity prior)."""
  return jnp.mean(jnp.log1p(scale * weights))


def center_depth_loss(depth: jax.Array, border: float) -> jax.Array:
  """−log(mean depth of the centre − mean depth of the border) of (V, H, W) accumulated
  depth maps; the border is the outer `border` fraction of each side (official: 7 of 64)."""
  _, h, w = depth.shape
  bh, bw = max(1, round(border * h)), max(1, round(border * w))
  inside = jnp.zeros((h, w), bool).at[bh:h - bh, bw:w - bw].set(True)
  centre = jnp.sum(depth * inside, (1, 2)) / jnp.sum(inside)
  edge = jnp.sum(depth * ~inside, (1, 2)) / jnp.sum(~inside)
  return jnp.mean(-jnp.log(jnp.maximum(centre - edge, 0.0) + 1e-12))


__all__ = ["orientation_loss", "opacity_loss", "emptiness_loss", "center_depth_loss",
           "OPACITY_LOSS_KINDS"]
