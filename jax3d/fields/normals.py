"""Unit normals of a density field: n = −∇σ/|∇σ|, the outward surface normal of a solid."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def normalize(v: jax.Array) -> jax.Array:
  """v/|v| over the last axis, safe at v = 0."""
  return v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + 1e-20)


def central_difference(density_fn: Callable[[jax.Array], jax.Array], points: jax.Array,
                       eps: float) -> jax.Array:
  """Unit normals −∇σ/|∇σ| (..., 3) at points (..., 3) by central differences of step `eps`.

  Six density queries per point and first order in whatever `density_fn` closes over, so it
  is cheap to train through at one point per ray (deferred shading at o + d·depth).
  """
  offsets = eps * jnp.concatenate([jnp.eye(3), -jnp.eye(3)], axis=0)  # (6, 3)
  sigma = density_fn(points[..., None, :] + offsets)  # (..., 6)
  grad = (sigma[..., :3] - sigma[..., 3:]) / (2.0 * eps)
  return -grad / jnp.sqrt(jnp.sum(grad * grad, axis=-1, keepdims=True) + 1e-20)
