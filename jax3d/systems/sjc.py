"""Score Jacobian Chaining: a population of radiance fields trained by PAAS.

One training step for one particle (Wang et al. 2023, Sec. 4–5 and the official `run_sjc.py`):
  cameras ~ orbit distribution; prompt += view suffix
  x = render(θ, camera)          the prior's channels directly: 4 latent channels for Stable
                                 Diffusion (no VAE in the loop), or RGB for a pixel prior
  g = PAAS(x, σ)                 guidance/sjc.py, K perturbations in one vmapped call
  L = −Σ sg(g)·x + λ_e(step) · mean(log(1 + s_e·w)) [+ λ_d · center-depth]
and Adamax on θ. The default field is the dense voxel grid (official: 100³, density shift −1);
the hash-grid NeRF is one config switch away (`field.kind`). Population, sharding, previews
and export come from `FieldSystem`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jax3d import cameras
from jax3d.errors import UserError
from jax3d.fields import radiance
from jax3d.fields import voxel
from jax3d.guidance import regularizers
from jax3d.guidance import sjc as sjc_lib
from jax3d.priors.base import Prior
from jax3d.systems import base
from jax3d.systems import field_system

RENDER_SPACES = ("image", "latent")

# A linear map from Stable Diffusion 1.x latents to RGB in [-1, 1] (rows: latent channels),
# the widely used approximation for latent previews; here only for mesh vertex colours.
SD_LATENT_TO_RGB = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264),
                    (-0.184, -0.271, -0.473))


@dataclasses.dataclass(frozen=True)
class Guidance(sjc_lib.PAASConfig, field_system.ViewWords):
  """PAAS and the view words."""


@dataclasses.dataclass(frozen=True)
class Regularizers:
  """λ_e·mean(log(1 + s_e·w)), λ_e × multiplier from `emptiness_step`·num_steps on (official:
  1e4, 10, ×20 from halfway); the centre-depth loss (official: off, border 7/64); a penalty on
  the rays' opacity (`regularizers.opacity_loss`; not in the official code)."""
  emptiness_weight: float
  emptiness_scale: float
  emptiness_step: float
  emptiness_multiplier: float
  center_depth_weight: float
  center_depth_border: float
  opacity: float
  opacity_kind: str  # regularizers.OPACITY_LOSS_KINDS
  eikonal: float = 0.0  # weight of voxel.eikonal_loss on a "laplace" voxel grid

  def __post_init__(self):
    if self.opacity_kind not in regularizers.OPACITY_LOSS_KINDS:
      raise UserError(f"unknown regularizers.opacity_kind {self.opacity_kind!r}; choose one of "
                      f"{', '.join(regularizers.OPACITY_LOSS_KINDS)}")


@dataclasses.dataclass(frozen=True)
class Config(field_system.FieldRunConfig):
  """An SJC run (configs/sjc.py); for latent renders the background is a plain RGB image's
  latent."""
  render_space: str  # "image" (RGB) or "latent" (the prior's latent channels)
  max_memory_gb: float  # refuse voxel grids whose training memory estimate exceeds this
  field: radiance.FieldConfig
  guidance: Guidance
  regularizers: Regularizers

  def __post_init__(self):
    if self.render_space not in RENDER_SPACES:
      raise UserError(f"unknown render_space {self.render_space!r}; choose one of "
                      f"{', '.join(RENDER_SPACES)}")
    if self.field.kind == "voxel":  # Before the prior loads; `_field` checks its channels.
      _check_voxel_memory(self.field.voxel, self.num_particles, self.max_memory_gb)


def _check_voxel_memory(cfg: voxel.VoxelConfig, num_particles: int, max_gb: float) -> None:
  """Refuses, before allocating, a grid whose params, gradients and Adam moments exceed
  `max_gb` (the estimate is 4 float32 copies of the params per particle)."""
  need = num_particles * voxel.memory_bytes(cfg) * 4 / 3
  if need > max_gb * 2**30:
    raise UserError(f"a {cfg.resolution}^3 voxel grid with {cfg.channels} channels needs about "
                    f"{need / 2**30:.1f} GiB for {num_particles} particle(s) (params, gradients, "
                    f"optimizer moments), over max_memory_gb={max_gb:g}; lower "
                    f"field.voxel.resolution or raise max_memory_gb")


def emptiness_weight(cfg: Config, step) -> jax.Array:
  """λ_e, multiplied by `emptiness_multiplier` from `emptiness_step`·num_steps on."""
  r = cfg.regularizers
  late = jnp.asarray(step) >= r.emptiness_step * cfg.num_steps
  return r.emptiness_weight * jnp.where(late, r.emptiness_multiplier, 1.0)


def _field(config: Config, prior: Prior) -> radiance.Field:
  """The configured field, checked against the prior and the memory budget."""
  latent = config.render_space == "latent"
  if latent and not prior.latent:
    raise UserError(f"render_space 'latent' needs a latent prior (Stable Diffusion); "
                    f"{prior.name} works on pixels: use render_space 'image'")
  field = radiance.make(config.field, channels=prior.channels if latent else 3)
  if isinstance(field, radiance.VoxelField):
    _check_voxel_memory(field.cfg, config.num_particles, config.max_memory_gb)
    if not latent and field.cfg.feature_activation != "sigmoid":
      raise UserError("an RGB voxel field needs field.voxel.feature_activation='sigmoid' "
                      "(colours in [0, 1])")
  if config.regularizers.eikonal > 0 and not isinstance(field, radiance.VoxelField):
    raise UserError("regularizers.eikonal works on a voxel grid (field.kind='voxel'); set it to 0 "
                    "for the NeRF field")
  camera = config.camera
  if latent and (camera.height, camera.width) != tuple(prior.latent_shape[:2]):
    raise UserError(f"latent renders must match the prior's latent size "
                    f"{prior.latent_shape[0]}x{prior.latent_shape[1]}; set camera.height and "
                    f"camera.width to it (got {camera.height}x{camera.width})")
  config.guidance.validate(prior.num_train_timesteps)
  return field


class SJC(field_system.FieldSystem):
  """The SJC system."""

  Config = Config
  step_sweep = ("K", "guidance.num_perturbations", (1, 2, 4, 8))

  def __init__(self, prompt: str, config: Config, prior: Prior, mesh=None):
    super().__init__(prompt, config, prior, _field(config, prior), mesh)
    if config.render_space == "latent":
      # The latent of a plain image of the background colour, per channel.
      plain = jnp.broadcast_to(self.background, (1, prior.resolution, prior.resolution, 3))
      self.background = jnp.mean(prior.encode(prior.params, plain), axis=(0, 1, 2))

  def particle_loss(self, params, shared_params, key, step, inputs):
    del shared_params
    cfg = self.config
    k_cam, k_render, k_t, k_noise = jax.random.split(key, 4)
    cams, view = self.sample_views(k_cam)
    out = self.render_views(params, cams, k_render, step)
    x = out["color"]
    if cfg.render_space == "image":
      x = self.prior.encode(inputs["prior"], x)
    t = sjc_lib.sample_timesteps(k_t, cfg.guidance, self.prior.num_train_timesteps,
                                 (cfg.views_per_step,))
    cond, uncond, plain = self.guidance_embeddings(inputs["conds"], view)
    loss_sjc, aux = sjc_lib.sjc_loss(self.prior, inputs["prior"], k_noise, x, t, cond, uncond,
                                     cfg.guidance, plain)
    r = cfg.regularizers
    loss_empty = regularizers.emptiness_loss(out["weights"], r.emptiness_scale)
    loss = loss_sjc + emptiness_weight(cfg, step) * loss_empty
    loss_depth = jnp.zeros(())
    if r.center_depth_weight > 0:
      loss_depth = regularizers.center_depth_loss(out["depth"] * out["opacity"],
                                                  r.center_depth_border)
      loss = loss + r.center_depth_weight * loss_depth
    loss_opacity = regularizers.opacity_loss(out["opacity"], r.opacity_kind)
    loss = loss + r.opacity * loss_opacity
    loss_eikonal = jnp.zeros(())
    if r.eikonal > 0:
      loss_eikonal = voxel.eikonal_loss(params["density"], self.field.bound)
      loss = loss + r.eikonal * loss_eikonal
    metrics = {"loss": loss, "loss_sjc": loss_sjc, "loss_emptiness": loss_empty,
               "loss_center_depth": loss_depth, "loss_opacity": loss_opacity,
               "loss_eikonal": loss_eikonal,
               "mean_opacity": jnp.mean(out["opacity"]),
               "sigma": jnp.mean(aux["sigma"]), "residual_norm": aux["residual_norm"]}
    return loss, (metrics, None)

  def step_parts(self, state: base.State, key: jax.Array) -> base.StepParts:
    cams, view = self.sample_views(key)
    cond, uncond, plain = self.guidance_embeddings(self.inputs["conds"], view)
    t = jnp.full(view.shape, self.prior.num_train_timesteps // 2, jnp.int32)
    return base.StepParts(
        render=lambda p, k: self.render_views(p, cams, k, state.step)["color"],
        guidance=lambda pp, x0, k: sjc_lib.paas(self.prior, pp, k, x0, t, cond, uncond,
                                                self.config.guidance, plain)[0])

  def density_schedule(self, step) -> jax.Array:
    """The laplace voxel grid's β multiplier at `step` (`voxel.beta_schedule`); 1 otherwise."""
    if isinstance(self.field, radiance.VoxelField):
      return voxel.beta_schedule(self.field.cfg, step, self.config.num_steps)
    return super().density_schedule(step)

  # ---- renders for previews and export ----
  def render_params(self, params, camera: cameras.Camera, step: int, mode: str = "albedo"):
    """Latent fields render at the prior's latent size, are decoded by the prior (its VAE)
    and resized to the camera's size."""
    if self.config.render_space == "image":
      return super().render_params(params, camera, step, mode)
    h, w = camera.height, camera.width
    lh, lw = self.prior.latent_shape[:2]
    latent_cam = cameras.Camera(c2w=camera.c2w, fov_y=camera.fov_y, height=lh, width=lw)
    out = super().render_params(params, latent_cam, step, mode)
    return {"rgb": jax.image.resize(out["rgb"], (h, w, 3), "linear"),
            "normal": jax.image.resize(out["normal"], (h, w, 3), "linear"),
            "opacity": jax.image.resize(out["opacity"], (h, w), "linear")}

  def image(self, prior_params, color):
    if self.config.render_space == "image":
      return super().image(prior_params, color)
    return self.prior.decode(prior_params, color[None])[0]

  def vertex_rgb(self, color: jax.Array) -> jax.Array:
    if self.config.render_space == "image":
      return color
    m = jnp.asarray(SD_LATENT_TO_RGB, jnp.float32)[:color.shape[-1]]
    return jnp.clip((color @ m + 1.0) / 2.0, 0.0, 1.0)


__all__ = ["SJC", "Config", "emptiness_weight"]
