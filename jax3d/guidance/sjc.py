"""Score Jacobian Chaining (Wang et al. 2023): perturb-and-average scoring (PAAS).

SJC reads a DDPM ε-model as a variance-exploding denoiser. With
  σ_t = √((1 − ᾱ_t)/ᾱ_t)                                   (SJC Sec. 3: x_t/√ᾱ_t = x + σ_t n),
the denoiser of a noisy z = x + σ n is (Karras et al. 2022, Eq. 7 with c_in = 1/√(1 + σ²))
  D(z, σ) = z − σ ε̂_CFG(z/√(1 + σ²), t(σ)),
and Tweedie gives the score ∇_z log p_σ(z) = (D(z, σ) − z)/σ². A clean render x is out of the
distribution the model was trained on, so PAAS (SJC Eq. 11–12) scores K perturbed copies
z_k = x + σ n_k and averages. The direction pushed through the renderer is σ times that score
with the variance-reduced numerator D(z_k, σ) − x (the official code's `var_red`):
  g = (1/K) Σ_k (D(x + σ n_k, σ) − x)/σ.
The K copies are one `vmap`ped batch of model calls.

σ is drawn per step and per view from the prior's own schedule, trimmed as in the official
code (`us[30:-10]`: the 30 smallest and 10 largest σ dropped). For Stable Diffusion's
scaled-linear schedule that keeps σ ∈ [0.17, 13.8]; for the solids prior's linear schedule
σ ∈ [0.11, 142] (`sigma_range` computes both).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jax3d.configuration import Range
from jax3d.errors import UserError
from jax3d.priors.base import Prior


@dataclasses.dataclass(frozen=True)
class PAASConfig:
  """PAAS settings; the official ones: K 1 (SD), CFG 100, trims 30 and 10, `var_red` on."""
  num_perturbations: Annotated[int, Range(1)]  # K
  scale: float  # classifier-free guidance
  # View guidance (`Prior.eps`): the scale of the view words' own direction; 0 = off.
  view_scale: Annotated[float, Range(0)]
  trim_low: Annotated[int, Range(0)]  # drop the smallest σ's of the schedule
  trim_high: Annotated[int, Range(0)]  # and the largest
  variance_reduction: bool  # numerator D − x (True) or D − z

  def validate(self, num_train_timesteps: int) -> None:
    """What the typed config cannot check without the prior: the trims leave some of its
    schedule."""
    if self.trim_low + self.trim_high >= num_train_timesteps:
      raise UserError(f"the sigma trim ({self.trim_low} low, {self.trim_high} high) must "
                      f"leave some of the prior's {num_train_timesteps} timesteps; the official "
                      f"values are 30 and 10")


def sigmas(alphas_cumprod: jax.Array) -> jax.Array:
  """σ_t = √((1 − ᾱ_t)/ᾱ_t), increasing in t."""
  a = jnp.asarray(alphas_cumprod, jnp.float32)
  return jnp.sqrt((1.0 - a) / a)


def sigma_range(alphas_cumprod, cfg: PAASConfig) -> tuple[float, float]:
  """(σ_min, σ_max) of the trimmed schedule that `sample_timesteps` draws from."""
  s = np.asarray(sigmas(alphas_cumprod))
  kept = s[cfg.trim_low:len(s) - cfg.trim_high]
  return float(kept[0]), float(kept[-1])


def sample_timesteps(key: jax.Array, cfg: PAASConfig, num_train_timesteps: int,
                     shape=()) -> jax.Array:
  """Timesteps uniform over the trimmed schedule (σ_t is increasing, so trimming t trims σ)."""
  return jax.random.randint(key, shape, cfg.trim_low, num_train_timesteps - cfg.trim_high)


def denoise(prior: Prior, prior_params: Any, z: jax.Array, t: jax.Array, cond: jax.Array,
            uncond: jax.Array, guidance_scale, plain: jax.Array | None = None,
            view_scale=None) -> jax.Array:
  """D(z, σ_t) = z − σ_t ε̂_CFG(z/√(1 + σ_t²), t) for z (B, h, w, c) in the VE scale."""
  sigma = sigmas(prior.alphas_cumprod)[t][:, None, None, None]
  eps = prior.eps(prior_params, z / jnp.sqrt(1.0 + sigma**2), t, cond, uncond, guidance_scale,
                  plain, view_scale)
  return z - sigma * eps


def paas(prior: Prior, prior_params: Any, key: jax.Array, x: jax.Array, t: jax.Array,
         cond: jax.Array, uncond: jax.Array, cfg: PAASConfig,
         plain: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """g = mean_k (D(x + σ n_k, σ) − x)/σ for clean x (B, h, w, c), timesteps t (B,).

  The K perturbations of the whole batch are scored in one vmapped call. No gradient flows
  through g.
  """
  chex.assert_rank(x, 4)
  b = x.shape[0]
  chex.assert_shape(t, (b,))
  x = jax.lax.stop_gradient(x)
  sigma = sigmas(prior.alphas_cumprod)[t][:, None, None, None]
  noise = jax.random.normal(key, (cfg.num_perturbations,) + x.shape, x.dtype)
  z = x[None] + sigma[None] * noise
  d = jax.vmap(lambda zk: denoise(prior, prior_params, zk, t, cond, uncond,
                                  cfg.scale, plain, cfg.view_scale))(z)
  numerator = d - (x[None] if cfg.variance_reduction else z)
  g = jnp.mean(numerator, axis=0) / sigma
  return jax.lax.stop_gradient(g), {"sigma": sigma[:, 0, 0, 0], "denoised": jnp.mean(d, 0)}


def sjc_loss(prior: Prior, prior_params: Any, key: jax.Array, x: jax.Array, t: jax.Array,
             cond: jax.Array, uncond: jax.Array, cfg: PAASConfig,
             plain: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The surrogate −Σ sg(g)·x / B whose gradient w.r.t. x is −g/B: descending it moves the
  render along the PAAS score (the official code's `y.backward(-grad)`), and through the
  renderer it reaches the 3D parameters as the vector–Jacobian product with g."""
  g, aux = paas(prior, prior_params, key, x, t, cond, uncond, cfg, plain)
  loss = -jnp.sum(g * x) / x.shape[0]
  aux = dict(aux, residual=g, residual_norm=jnp.sqrt(jnp.mean(jnp.sum(g * g, (1, 2, 3)))))
  return loss, aux


__all__ = ["PAASConfig", "sigmas", "sigma_range", "sample_timesteps", "denoise", "paas",
           "sjc_loss"]
