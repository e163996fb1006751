"""Deterministic DDIM sampling (Song et al. 2021, Eq. 12 with η = 0) over any ε-model.

x_{t'} = √ᾱ_{t'} x̂0 + √(1 − ᾱ_{t'}) ε̂,   x̂0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t,
on diffusers' "leading" timestep spacing (t = T/S·i + 1) with ᾱ of the final step = ᾱ_0.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def timesteps(num_train_timesteps: int, num_steps: int, offset: int = 1) -> np.ndarray:
  """Descending DDIM timesteps, diffusers' 'leading' spacing."""
  ratio = num_train_timesteps // num_steps
  return (np.arange(num_steps) * ratio + offset)[::-1].astype(np.int32)


def ddim_loop(eps_fn: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array,
              shape: tuple[int, ...], alphas_cumprod: jax.Array, num_steps: int,
              clip_x0: float | None = None) -> jax.Array:
  """Samples x0 (shape, NHWC) from pure noise; `eps_fn(x_t, t (B,)) -> ε̂` (CFG inside)."""
  ts = jnp.asarray(timesteps(alphas_cumprod.shape[0], num_steps))
  prev = jnp.concatenate([ts[1:], jnp.array([-1], jnp.int32)])
  x = jax.random.normal(key, shape, jnp.float32)

  def body(x, tt):
    t, t_prev = tt
    a = alphas_cumprod[t]
    a_prev = jnp.where(t_prev >= 0, alphas_cumprod[jnp.maximum(t_prev, 0)], alphas_cumprod[0])
    eps = eps_fn(x, jnp.full((shape[0],), t, jnp.int32)).astype(jnp.float32)
    x0 = (x - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)
    if clip_x0 is not None:
      x0 = jnp.clip(x0, -clip_x0, clip_x0)
      eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)
    return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * eps, None

  x, _ = jax.lax.scan(body, x, (ts, prev))
  return x
