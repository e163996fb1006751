"""Score Distillation Sampling (DreamFusion, Poole et al. 2022).

The SDS gradient (their Eq. 3) of a rendered image x with respect to the render:
  ∇_x L_SDS = w(t) (ε̂_φ(x_t; y, t) − ε),  x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε,  x0 = encode(x),
with ε̂ classifier-free guided (DreamFusion uses scale 100). It skips the UNet Jacobian:
the residual is pushed through the encoder (VAE for latent priors) and the renderer by the
stop-gradient target form 0.5‖x0 − sg(x0 − g)‖², whose gradient with respect to x0 is g.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

from jax3d.guidance import timesteps as timesteps_lib
from jax3d.priors.base import Prior


def sds_residual(prior: Prior, prior_params: Any, key: jax.Array, x0: jax.Array,
                 t: jax.Array, cond: jax.Array, uncond: jax.Array, guidance_scale,
                 weighting: str = "dreamfusion", plain: jax.Array | None = None,
                 view_scale=None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """g = w(t)(ε̂_CFG(x_t) − ε) for clean x0 (B, h, w, c); no gradient flows through it.

  With `plain` (the prompt without view words) and `view_scale`, ε̂ is `Prior.eps`'s view
  guidance.
  """
  x0 = jax.lax.stop_gradient(x0)
  eps = jax.random.normal(key, x0.shape, x0.dtype)
  a = prior.alphas_cumprod[t][:, None, None, None]
  x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps
  eps_hat = prior.eps(prior_params, x_t, t, cond, uncond, guidance_scale, plain, view_scale)
  w = timesteps_lib.weight(weighting, prior.alphas_cumprod, t)[:, None, None, None]
  g = w * (eps_hat - eps)
  return jax.lax.stop_gradient(g), {"eps_hat": eps_hat, "eps": eps, "x_t": x_t}


def clip_residual(g: jax.Array, max_norm: float | None) -> jax.Array:
  """Rescales each batch element's residual to norm ≤ max_norm (None: unchanged)."""
  if max_norm is None or max_norm <= 0:
    return g
  norms = jnp.sqrt(jnp.sum(g * g, axis=(1, 2, 3), keepdims=True))
  return g * jnp.minimum(1.0, max_norm / (norms + 1e-12))


def surrogate_loss(x0: jax.Array, g: jax.Array) -> jax.Array:
  """0.5‖x0 − sg(x0 − g)‖² / B: its gradient with respect to x0 is g / B (batch B)."""
  target = jax.lax.stop_gradient(x0 - g)
  return 0.5 * jnp.sum((x0 - target)**2) / x0.shape[0]


def sds_loss(prior: Prior, prior_params: Any, key: jax.Array, images: jax.Array,
             t: jax.Array, cond: jax.Array, uncond: jax.Array, guidance_scale,
             weighting: str = "dreamfusion", max_grad_norm: float | None = None,
             plain: jax.Array | None = None, view_scale=None,
             encode: Callable[[Any, jax.Array], jax.Array] | None = None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The SDS surrogate loss of rendered images (B, H, W, 3) in [0, 1].

  Its gradient with respect to x0 = encode(images) is g / B per element (mean over the
  batch, sum over pixels); through `encode` and the renderer it reaches the 3D parameters.
  `encode` replaces `prior.encode` (e.g. rematerialised).
  """
  chex.assert_rank(images, 4)
  x0 = (encode or prior.encode)(prior_params, images)
  g, aux = sds_residual(prior, prior_params, key, x0, t, cond, uncond, guidance_scale,
                        weighting, plain, view_scale)
  g = clip_residual(g, max_grad_norm)
  loss = surrogate_loss(x0, g)
  aux = dict(aux, residual=g, x0=x0,
             residual_norm=jnp.sqrt(jnp.mean(jnp.sum(g * g, axis=(1, 2, 3)))))
  return loss, aux
