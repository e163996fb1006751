"""Diffusion timesteps for distillation: the sampling range, its annealing, and w(t).

t is drawn uniformly from [t_min, t_max] (as fractions of the prior's train timesteps;
DreamFusion uses [0.02, 0.98]). `t_max` can move to `t_max_end` over `anneal_steps`,
linearly or in one step at `anneal_steps` (ProlificDreamer's official code: 0.98 → 0.5 at
step 5000 of 25k), coarse to fine.

Weightings w(t), named in configs:
  dreamfusion  1 − ᾱ_t              (Poole et al. 2022, Eq. 3's σ_t² choice)
  uniform      1                    (Magic3D)
  sqrt_snr     √ᾱ_t (1 − ᾱ_t)       (an SNR-damped variant)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jax3d.errors import UserError

WEIGHTINGS = ("dreamfusion", "uniform", "sqrt_snr")
ANNEALS = ("linear", "step")


@dataclasses.dataclass(frozen=True)
class TimestepConfig:
  t_min: float
  t_max: float
  t_max_end: float | None  # None: no annealing
  anneal_steps: int
  anneal: str  # one of ANNEALS
  weighting: str  # one of WEIGHTINGS

  def __post_init__(self):
    if not 0.0 <= self.t_min < self.t_max <= 1.0:
      raise UserError(f"timesteps need 0 <= t_min < t_max <= 1, got t_min={self.t_min}, "
                      f"t_max={self.t_max}")
    if self.t_max_end is not None and not self.t_min < self.t_max_end <= 1.0:
      raise UserError(f"t_max_end={self.t_max_end} must lie in (t_min, 1]")
    if self.anneal not in ANNEALS:
      raise UserError(f"unknown timesteps.anneal {self.anneal!r}; use one of "
                      f"{', '.join(ANNEALS)}")
    if self.weighting not in WEIGHTINGS:
      raise UserError(f"unknown weighting {self.weighting!r}; use one of {', '.join(WEIGHTINGS)}")


def t_max_at(cfg: TimestepConfig, step: jax.Array) -> jax.Array:
  """The (possibly annealed) upper end of the t range at a training step."""
  if cfg.t_max_end is None or cfg.anneal_steps <= 0:
    return jnp.asarray(cfg.t_max, jnp.float32)
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / cfg.anneal_steps, 0.0, 1.0)
  if cfg.anneal == "step":
    frac = jnp.floor(frac)
  return cfg.t_max + (cfg.t_max_end - cfg.t_max) * frac


def sample(key: jax.Array, cfg: TimestepConfig, num_train_timesteps: int,
           shape: tuple[int, ...] = (), step: jax.Array | int = 0) -> jax.Array:
  """Integer timesteps uniform in [t_min·T, t_max(step)·T]."""
  u = jax.random.uniform(key, shape, minval=cfg.t_min, maxval=t_max_at(cfg, step))
  return jnp.clip(jnp.round(u * num_train_timesteps).astype(jnp.int32), 0,
                  num_train_timesteps - 1)


def weight(name: str, alphas_cumprod: jax.Array, t: jax.Array) -> jax.Array:
  """w(t) of a named weighting."""
  a = alphas_cumprod[t]
  if name == "dreamfusion":
    return 1.0 - a
  if name == "uniform":
    return jnp.ones_like(a)
  if name == "sqrt_snr":
    return jnp.sqrt(a) * (1.0 - a)
  raise UserError(f"unknown weighting {name!r}; use one of {', '.join(WEIGHTINGS)}")
