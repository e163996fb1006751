"""Variational Score Distillation (ProlificDreamer, Wang et al. 2023).

VSD optimises a distribution μ of 3D parameters θ (particles) so that the renders'
distribution q_μ(x0 | y) matches the prior's p(x0 | y) (their Eq. 6, a KL over all t). Each
particle follows (their Eq. 9, Algorithm 1)
  ∇_θ L_VSD = E_{t, ε, c} [ w(t) (ε_pretrained(x_t; y, t) − ε_lora(x_t; y, t, c)) ∂x0/∂θ ],
with x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε, w(t) = 1 − ᾱ_t, ε_pretrained classifier-free guided (7.5)
and ε_lora the LoRA network's estimate of the *particles'* noisy-render score, conditioned on
the camera c (no CFG). The LoRA network is trained alongside by the ordinary diffusion loss
on the particles' detached renders (their Eq. 10). If μ is a single point x and ε_lora is the
exact score of that point mass, ε_lora(x_t) = (x_t − √ᾱ x)/√(1 − ᾱ) = ε, and VSD is SDS.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

from jax3d.guidance import sds
from jax3d.guidance import timesteps as timesteps_lib
from jax3d.priors.base import Prior

PREDICTIONS = ("epsilon", "v_prediction")

# (x_t (B, h, w, c), t (B,)) -> ε̂ of the LoRA network (its params and cameras closed over).
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


def vsd_residual(prior: Prior, prior_params: Any, eps_lora: EpsFn, key: jax.Array,
                 x0: jax.Array, t: jax.Array, cond: jax.Array, uncond: jax.Array,
                 guidance_scale, weighting: str = "dreamfusion",
                 plain: jax.Array | None = None,
                 view_scale=None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """g = w(t)(ε̂_CFG(x_t) − ε̂_lora(x_t)) for clean x0 (B, h, w, c); no gradient flows
  through it (neither into the prior nor into the LoRA network)."""
  x0 = jax.lax.stop_gradient(x0)
  eps = jax.random.normal(key, x0.shape, x0.dtype)
  a = prior.alphas_cumprod[t][:, None, None, None]
  x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps
  eps_hat = prior.eps(prior_params, x_t, t, cond, uncond, guidance_scale, plain, view_scale)
  eps_l = eps_lora(x_t, t).astype(eps_hat.dtype)
  w = timesteps_lib.weight(weighting, prior.alphas_cumprod, t)[:, None, None, None]
  g = jax.lax.stop_gradient(w * (eps_hat - eps_l))
  return g, {"eps_hat": eps_hat, "eps_lora": eps_l, "eps": eps, "x_t": x_t}


def vsd_loss(prior: Prior, prior_params: Any, eps_lora: EpsFn, key: jax.Array,
             images: jax.Array, t: jax.Array, cond: jax.Array, uncond: jax.Array,
             guidance_scale, weighting: str = "dreamfusion", max_grad_norm: float | None = None,
             plain: jax.Array | None = None, view_scale=None,
             encode: Callable[[Any, jax.Array], jax.Array] | None = None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The particle's surrogate loss of rendered images (B, H, W, 3) in [0, 1]: its gradient
  with respect to x0 = encode(images) is g / B (`sds.surrogate_loss`). `encode` replaces
  `prior.encode` (e.g. rematerialised)."""
  chex.assert_rank(images, 4)
  x0 = (encode or prior.encode)(prior_params, images)
  g, aux = vsd_residual(prior, prior_params, eps_lora, key, x0, t, cond, uncond,
                        guidance_scale, weighting, plain, view_scale)
  g = sds.clip_residual(g, max_grad_norm)
  loss = sds.surrogate_loss(x0, g)
  return loss, dict(aux, residual=g, x0=x0,
                    residual_norm=jnp.sqrt(jnp.mean(jnp.sum(g * g, axis=(1, 2, 3)))))


def lora_loss(eps_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
              alphas_cumprod: jax.Array, key: jax.Array, x0: jax.Array, c2w: jax.Array,
              prediction: str = "epsilon",
              camera_drop: float = 0.1) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The LoRA network's diffusion loss on detached renders x0 (B, h, w, c) seen from
  cameras c2w (B, 4, 4) (ProlificDreamer Eq. 10): t ~ U{0, …, T−1}, ε ~ N(0, I), each
  camera zeroed with probability `camera_drop`, and the mean squared error of the network's
  own output: ε̂ for an ε-model, v̂ for a v-model. `eps_fn(x_t, t, c2w)` is the network as
  ε̂ (a v-model's output converted by the prior); since ε̂ − ε = √ᾱ (v̂ − v),
  ‖v̂ − v‖² = ‖ε̂ − ε‖² / ᾱ_t, so the v-loss weights the ε error by 1/ᾱ_t."""
  if prediction not in PREDICTIONS:
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
  x0 = jax.lax.stop_gradient(x0)
  b = x0.shape[0]
  k_t, k_eps, k_drop = jax.random.split(key, 3)
  t = jax.random.randint(k_t, (b,), 0, alphas_cumprod.shape[0])
  eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
  a = alphas_cumprod[t][:, None, None, None]
  x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps
  keep = jax.random.uniform(k_drop, (b,)) >= camera_drop
  c2w = jnp.where(keep[:, None, None], c2w, 0.0)
  err = jnp.mean((eps_fn(x_t, t, c2w) - eps) ** 2, axis=(1, 2, 3))
  if prediction == "v_prediction":
    err = err / alphas_cumprod[t]
  return jnp.mean(err), {"lora_t": jnp.mean(t.astype(jnp.float32)),
                         "camera_kept": jnp.mean(keep.astype(jnp.float32))}


__all__ = ["vsd_residual", "vsd_loss", "lora_loss", "PREDICTIONS"]
