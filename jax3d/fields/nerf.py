"""Hash-grid NeRF field: density (with DreamFusion's centre blob), albedo and normals.

The field maps a world point x in the scene cube [-bound, bound]^3 to
  encoding = hashgrid.encode(table, (x + bound) / (2·bound))      (Instant-NGP)
  (raw_σ, raw_albedo) = MLP(encoding)                             (ReLU hidden layers)
  σ = activation(raw_σ + blob_scale · blob_density · exp(−|x|² / (2·blob_radius²)))
  albedo = sigmoid(raw_albedo)
as in DreamFusion (Poole et al. 2022, Sec. 3.1 and Appendix A.2): the Gaussian "density blob"
at the origin starts optimisation from a centred object instead of empty space or fog. The
albedo does not depend on the view direction (DreamFusion shades with explicit lighting).

Density activation: `softplus` by default. Its slope is at most 1, so density gradients stay
bounded when the blob or the network push raw densities up; `exp` (as in Instant-NGP and
stable-dreamfusion's trunc-exp) is also available but lets one large raw value explode σ and
its gradient. threestudio's DreamFusion defaults to softplus for the same reason.

Normals are n = −∇σ / |∇σ|, by central finite differences by default (`normal_method`):
the analytic gradient of a hash grid is the derivative of a piecewise-trilinear function, which
jumps at every cell face of every level and gives speckled normals; central differences with a
step of about one fine cell (`normal_eps`, world units) average over those jumps at the cost of
6 extra density queries per point (threestudio does the same for hash grids). `analytic`
(one `jax.vjp` through the whole field, shared with the forward pass in `query`) is exact and
cheaper for smooth fields.

Params are a plain pytree: {"encoding": (L, T, F) table, "mlp": [{"w", "b"}, ...]}.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp

from jax3d.errors import UserError
from jax3d.fields import hashgrid
from jax3d.fields import normals as normals_lib

DENSITY_ACTIVATIONS = ("softplus", "exp")
NORMAL_METHODS = ("finite_difference", "analytic")

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class NeRFConfig:
  """Hash-grid NeRF hyperparameters."""
  hashgrid: hashgrid.HashGridConfig
  bound: float  # The scene is the cube [-bound, bound]^3.
  radius: float  # > 0: no density outside the ball |x| <= radius (fields/radiance.py)
  hidden_dim: int
  num_hidden_layers: int
  density_activation: str  # see the module docstring
  # Density bias added before the activation (see `blob`): "gaussian" τ = λ·exp(−|x|²/(2ρ²))
  # (DreamFusion, Appendix A.2) or "linear" τ = λ·(1 − |x|/ρ) (Magic3D; threestudio's
  # DreamFusion config uses it with λ = 10, ρ = 0.5). With softplus, the Gaussian form leaves
  # a fog of softplus(0) ≈ 0.69 everywhere away from the blob; the linear one is negative there.
  blob_kind: str
  blob_density: float
  blob_radius: float
  normal_method: str  # "finite_difference" or "analytic"; see the module docstring
  normal_eps: float  # finite-difference step in world units

  def __post_init__(self):
    if self.density_activation not in DENSITY_ACTIVATIONS:
      raise UserError(f"unknown density_activation {self.density_activation!r}; choose one of "
                      f"{', '.join(DENSITY_ACTIVATIONS)}")
    if self.blob_kind not in ("gaussian", "linear"):
      raise UserError(f"unknown blob_kind {self.blob_kind!r}; choose gaussian or linear")
    if self.normal_method not in NORMAL_METHODS:
      raise UserError(f"unknown normal_method {self.normal_method!r}; choose one of "
                      f"{', '.join(NORMAL_METHODS)}")
    if self.bound <= 0 or self.blob_radius <= 0 or self.normal_eps <= 0 or self.radius < 0:
      raise UserError("nerf bound, blob_radius and normal_eps must be positive and radius >= 0")
    if self.hidden_dim < 1 or self.num_hidden_layers < 0:
      raise UserError("nerf hidden_dim must be >= 1 and num_hidden_layers >= 0")


def init(key: jax.Array, cfg: NeRFConfig) -> Params:
  """Hash table (±1e-4) and MLP (He-uniform hidden layers, Glorot-uniform head, zero biases)."""
  k_enc, *k_layers = jax.random.split(key, cfg.num_hidden_layers + 2)
  dims = ([hashgrid.output_dim(cfg.hashgrid)] + [cfg.hidden_dim] * cfg.num_hidden_layers
          + [4])
  layers = []
  for i, k in enumerate(k_layers):
    last = i == len(k_layers) - 1
    init_fn = (jax.nn.initializers.glorot_uniform() if last
               else jax.nn.initializers.he_uniform())
    layers.append({"w": init_fn(k, (dims[i], dims[i + 1]), jnp.float32),
                   "b": jnp.zeros((dims[i + 1],), jnp.float32)})
  return {"encoding": hashgrid.init(k_enc, cfg.hashgrid), "mlp": layers}


def blob(x: jax.Array, cfg: NeRFConfig) -> jax.Array:
  """The pre-activation density bias (...,): λ·exp(−|x|²/(2ρ²)) or λ·(1 − |x|/ρ)."""
  r2 = jnp.sum(x * x, axis=-1)
  if cfg.blob_kind == "linear":
    return cfg.blob_density * (1.0 - jnp.sqrt(r2 + 1e-12) / cfg.blob_radius)
  return cfg.blob_density * jnp.exp(-r2 / (2.0 * cfg.blob_radius**2))


def _activate_density(raw: jax.Array, cfg: NeRFConfig) -> jax.Array:
  if cfg.density_activation == "exp":
    return jnp.exp(raw)
  return jax.nn.softplus(raw)


def _raw(params: Params, x: jax.Array, cfg: NeRFConfig) -> jax.Array:
  """MLP(encoding(x)) -> (..., 4): raw density and raw albedo."""
  unit = (x + cfg.bound) / (2.0 * cfg.bound)
  h = hashgrid.encode(params["encoding"], unit, cfg.hashgrid)
  layers = params["mlp"]
  for layer in layers[:-1]:
    h = jax.nn.relu(h @ layer["w"] + layer["b"])
  return h @ layers[-1]["w"] + layers[-1]["b"]


def _density_albedo(params: Params, x: jax.Array, cfg: NeRFConfig,
                    blob_scale) -> tuple[jax.Array, jax.Array]:
  raw = _raw(params, x, cfg)
  sigma = _activate_density(raw[..., 0] + blob_scale * blob(x, cfg), cfg)
  return sigma, jax.nn.sigmoid(raw[..., 1:])


def density(params: Params, x: jax.Array, cfg: NeRFConfig, blob_scale=1.0) -> jax.Array:
  """Volume density σ(x) >= 0 at world points x (..., 3) -> (...,)."""
  chex.assert_axis_dimension(x, -1, 3)
  return _density_albedo(params, x, cfg, blob_scale)[0]


def normals(params: Params, x: jax.Array, cfg: NeRFConfig, blob_scale=1.0) -> jax.Array:
  """Unit normals −∇σ/|∇σ| at world points x (..., 3), by `cfg.normal_method`."""
  return query(params, x, cfg, blob_scale, with_normals=True)["normal"]


def query(params: Params, x: jax.Array, cfg: NeRFConfig, blob_scale=1.0,
          with_normals: bool = False) -> dict[str, jax.Array]:
  """Density (...,) and albedo (..., 3) at world points x (..., 3); normals (..., 3) if asked.

  With analytic normals the gradient reuses the forward pass (one vjp, valid because every
  point's output depends on that point alone).
  """
  chex.assert_axis_dimension(x, -1, 3)
  if not with_normals:
    sigma, albedo = _density_albedo(params, x, cfg, blob_scale)
    return {"density": sigma, "albedo": albedo}
  if cfg.normal_method == "analytic":
    (sigma, albedo), vjp = jax.vjp(lambda p: _density_albedo(params, p, cfg, blob_scale), x)
    (grad,) = vjp((jnp.ones_like(sigma), jnp.zeros_like(albedo)))
    normal = normals_lib.normalize(-grad)
  else:
    sigma, albedo = _density_albedo(params, x, cfg, blob_scale)
    normal = normals_lib.central_difference(lambda p: density(params, p, cfg, blob_scale), x,
                                            cfg.normal_eps)
  return {"density": sigma, "albedo": albedo, "normal": normal}


__all__ = ["NeRFConfig", "DENSITY_ACTIVATIONS", "NORMAL_METHODS", "init", "blob", "density",
           "query", "normals"]
