"""Dense voxel-grid field (the representation of Score Jacobian Chaining, Wang et al. 2023).

A grid of R³ vertices spans [-bound, bound]³ with a vertex on every corner of the cube:
vertex (i, j, k) sits at −bound + 2·bound·(i, j, k)/(R − 1). Each vertex stores a raw density
and C feature channels; a query point gets their trilinear interpolation, then
  density  = density_activation(raw_density + density_shift)
  features = feature_activation(raw_features)
SJC's official setting is R = 100, density_shift = −1 with softplus, and C = 4 raw channels
(Stable Diffusion latents, rendered and decoded by the VAE) or C = 3 RGB through a sigmoid.

The "laplace" activation reads the raw value as a negated signed distance s = −d (positive
inside) and gives VolSDF's density (Yariv et al. 2021, Eq. 2–3):
  σ = (1/β) Ψ_β(s),  Ψ_β(s) = ½ exp(s/β) for s ≤ 0, 1 − ½ exp(−s/β) for s > 0,
the CDF of a zero-mean Laplace distribution of scale β: an opaque solid of density 1/β
inside, falling to zero within a few β of the surface, so the field cannot stay a translucent
blob. `init_radius` > 0 starts every activation from the ball of that radius (raw value
r − |x|, the sphere's negated distance) instead of zero. `density_beta_start` > 0 anneals β
geometrically from that value down to `density_beta` over the first `beta_anneal` of the run
(`beta_schedule`): a wide β early keeps a gradient deep inside the start ball, so a hole (a
torus') or a tip (a cone's) can form; the narrow β at the end makes the surface opaque.
(SJC samples its grid with `grid_sample`'s cell-centred convention; here vertices sit on the
cube's corners, so a grid value is returned exactly at its vertex.) Points outside the cube
take the value at the nearest point of the cube.

Params: {"density": (R, R, R), "features": (R, R, R, C)}, indexed [x, y, z]. Initialisation
follows SJC: zero raw density (a faint uniform fog of softplus(shift)) and standard-normal
features scaled by `feature_init_scale`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jax3d.errors import UserError

DENSITY_ACTIVATIONS = ("softplus", "exp", "relu", "laplace")
FEATURE_ACTIVATIONS = ("identity", "sigmoid")

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class VoxelConfig:
  """Voxel-grid hyperparameters (SJC's Stable Diffusion setting: R 100, C 4, shift −1)."""
  resolution: int  # R vertices per axis
  channels: int  # C: 4 SD latent channels, or 3 for RGB
  bound: float
  radius: float  # > 0: no density outside the ball |x| <= radius (fields/radiance.py)
  density_shift: float  # added to the raw density before the activation
  density_activation: str  # one of DENSITY_ACTIVATIONS
  feature_activation: str  # one of FEATURE_ACTIVATIONS; "sigmoid" for RGB
  feature_init_scale: float
  density_beta: float = 0.03  # β of the "laplace" activation, in world units
  init_radius: float = 0.0  # > 0: the raw density starts as init_radius − |x|
  density_beta_start: float = 0.0  # > 0: β at step 0, annealed to density_beta
  beta_anneal: float = 0.5  # the fraction of the run over which β is annealed

  def __post_init__(self):
    if self.resolution < 2 or self.channels < 1:
      raise UserError(f"voxel grid needs resolution >= 2 and channels >= 1, got "
                      f"{self.resolution} and {self.channels}")
    if self.bound <= 0 or self.radius < 0:
      raise UserError(f"voxel bound must be positive and radius >= 0, got {self.bound} and "
                      f"{self.radius}")
    if self.density_beta <= 0 or self.init_radius < 0:
      raise UserError(f"voxel density_beta must be positive and init_radius >= 0, got "
                      f"{self.density_beta} and {self.init_radius}")
    if self.density_beta_start < 0 or not 0 < self.beta_anneal <= 1:
      raise UserError(f"voxel density_beta_start must be >= 0 and beta_anneal in (0, 1], got "
                      f"{self.density_beta_start} and {self.beta_anneal}")
    if self.density_beta_start > 0 and self.density_activation != "laplace":
      raise UserError(f"voxel density_beta_start anneals the 'laplace' activation's β; set "
                      f"density_activation='laplace' or density_beta_start=0 (it is "
                      f"{self.density_activation!r})")
    if self.density_activation not in DENSITY_ACTIVATIONS:
      raise UserError(f"unknown voxel density_activation {self.density_activation!r}; choose "
                      f"one of {', '.join(DENSITY_ACTIVATIONS)}")
    if self.feature_activation not in FEATURE_ACTIVATIONS:
      raise UserError(f"unknown voxel feature_activation {self.feature_activation!r}; choose "
                      f"one of {', '.join(FEATURE_ACTIVATIONS)}")


def num_params(cfg: VoxelConfig) -> int:
  """R³ · (1 + C) scalars."""
  return cfg.resolution**3 * (1 + cfg.channels)


def memory_bytes(cfg: VoxelConfig) -> int:
  """float32 bytes of the params plus Adam's two moments (3× the params).

  Gradients and activations during a step come on top (about one more copy of the params).
  """
  return 3 * 4 * num_params(cfg)


def init(key: jax.Array, cfg: VoxelConfig) -> Params:
  """Zero raw density (or init_radius − |x|) and N(0, feature_init_scale²) features."""
  r = cfg.resolution
  density = jnp.zeros((r, r, r), jnp.float32)
  if cfg.init_radius > 0:
    density = cfg.init_radius - jnp.linalg.norm(vertex_positions(cfg), axis=-1)
  return {"density": density,
          "features": cfg.feature_init_scale * jax.random.normal(
              key, (r, r, r, cfg.channels), jnp.float32)}


def vertex_positions(cfg: VoxelConfig) -> jax.Array:
  """World positions of the vertices, (R, R, R, 3), matching the params' [x, y, z] indexing."""
  ticks = jnp.linspace(-cfg.bound, cfg.bound, cfg.resolution, dtype=jnp.float32)
  return jnp.stack(jnp.meshgrid(ticks, ticks, ticks, indexing="ij"), axis=-1)


def interpolate(grid: jax.Array, x: jax.Array, bound: float) -> jax.Array:
  """Trilinear interpolation of a (R, R, R, ...) vertex grid at world points x (..., 3)."""
  r = grid.shape[0]
  pos = (jnp.clip(x, -bound, bound) + bound) * ((r - 1) / (2.0 * bound))  # in [0, R−1]
  cell = jnp.clip(jnp.floor(pos), 0, r - 2)
  frac = pos - cell
  cell = cell.astype(jnp.int32)
  out = 0.0
  for corner in np.ndindex(2, 2, 2):
    idx = cell + jnp.asarray(corner, jnp.int32)
    w = jnp.prod(jnp.where(jnp.asarray(corner, bool), frac, 1.0 - frac), axis=-1)
    value = grid[idx[..., 0], idx[..., 1], idx[..., 2]]
    out = out + w.reshape(w.shape + (1,) * (value.ndim - w.ndim)) * value
  return out


def laplace_density(s: jax.Array, beta: float) -> jax.Array:
  """VolSDF's σ = (1/β) Ψ_β(s) of a negated signed distance s (Eq. 2–3)."""
  half = 0.5 * jnp.exp(-jnp.abs(s) / beta)
  return jnp.where(s > 0, 1.0 - half, half) / beta


def eikonal_loss(grid: jax.Array, bound: float) -> jax.Array:
  """mean (‖∇s‖ − 1)² over the interior vertices of a (R, R, R) grid of (negated) signed
  distances, ∇ by central differences (the eikonal term of IGR, Gropp et al. 2020, Eq. 2):
  keeps a "laplace" grid a distance field, so its surface stays smooth and its density a
  thin shell of width ~β."""
  h = 2.0 * bound / (grid.shape[0] - 1)
  grads = []
  for axis in range(3):
    ahead = tuple(slice(2, None) if a == axis else slice(1, -1) for a in range(3))
    behind = tuple(slice(None, -2) if a == axis else slice(1, -1) for a in range(3))
    grads.append((grid[ahead] - grid[behind]) / (2.0 * h))
  norm = jnp.sqrt(sum(g**2 for g in grads) + 1e-12)
  return jnp.mean((norm - 1.0)**2)


def beta_schedule(cfg: VoxelConfig, step, num_steps: int) -> jax.Array:
  """β(step)/density_beta: (β_start/β)^(1 − u), u = min(step / (beta_anneal·num_steps), 1),
  a geometric interpolation from β_start to β; 1 without an anneal."""
  if cfg.density_beta_start <= 0:
    return jnp.ones((), jnp.float32)
  u = jnp.clip(jnp.asarray(step, jnp.float32) / (cfg.beta_anneal * num_steps), 0.0, 1.0)
  return jnp.float32(cfg.density_beta_start / cfg.density_beta) ** (1.0 - u)


def query(params: Params, x: jax.Array, cfg: VoxelConfig,
          beta_scale: jax.Array | float = 1.0) -> dict[str, jax.Array]:
  """Density (...,) and features (..., C) at world points x (..., 3); a "laplace" grid uses
  β = density_beta·beta_scale (`beta_schedule`)."""
  chex.assert_axis_dimension(x, -1, 3)
  raw_density = interpolate(params["density"], x, cfg.bound) + cfg.density_shift
  if cfg.density_activation == "softplus":
    sigma = jax.nn.softplus(raw_density)
  elif cfg.density_activation == "exp":
    sigma = jnp.exp(raw_density)
  elif cfg.density_activation == "laplace":
    sigma = laplace_density(raw_density, cfg.density_beta * beta_scale)
  else:
    sigma = jax.nn.relu(raw_density)
  features = interpolate(params["features"], x, cfg.bound)
  if cfg.feature_activation == "sigmoid":
    features = jax.nn.sigmoid(features)
  return {"density": sigma, "features": features}


__all__ = ["VoxelConfig", "init", "query", "beta_schedule", "laplace_density", "eikonal_loss",
           "interpolate", "memory_bytes", "num_params", "vertex_positions"]
