"""DreamFusion: a population of hash-grid NeRFs trained by Score Distillation Sampling.

One training step for one particle (Poole et al. 2022, Sec. 3):
  cameras ~ orbit distribution; prompt += view suffix (front/side/back/overhead)
  image = render(θ, camera) with shading ∈ {albedo, Lambertian, textureless}
  L = SDS(image) + λ_orient · orientation + λ_opacity · opacity
and Adam on θ. Population, sharding, previews and export come from `FieldSystem`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jax3d import cameras
from jax3d.errors import UserError
from jax3d.fields import nerf
from jax3d.fields import radiance
from jax3d.guidance import regularizers
from jax3d.guidance import sds
from jax3d.guidance import timesteps as timesteps_lib
from jax3d.priors.base import Prior
from jax3d.render import fields as render_fields
from jax3d.systems import base
from jax3d.systems import field_system

SHADING_NORMALS = ("sample", "surface")


@dataclasses.dataclass(frozen=True)
class Guidance(field_system.ViewWords):
  scale: float  # classifier-free guidance
  max_grad_norm: float  # per-view residual clipping; 0 = off
  timesteps: timesteps_lib.TimestepConfig
  remat_encoder: bool  # recompute the prior's encoder (SD's VAE) in the backward pass


@dataclasses.dataclass(frozen=True)
class Shading:
  """Probabilities of the modes per view (albedo, Lambertian, textureless); where training
  takes normals: "sample" (−∇σ at every ray sample, composited; second order through the
  field) or "surface" (deferred: one central-difference normal per ray at the expected
  termination point; first order)."""
  probs: tuple[float, float, float]
  ambient: float
  light_jitter: float
  albedo_warmup_steps: int
  normals: str

  def __post_init__(self):
    if min(self.probs) < 0 or abs(sum(self.probs) - 1.0) > 1e-6:
      raise UserError(f"shading.probs must be 3 non-negative numbers summing to 1 (albedo, "
                      f"lambertian, textureless), got {self.probs}")
    if self.normals not in SHADING_NORMALS:
      raise UserError(f"unknown shading.normals {self.normals!r}; choose one of "
                      f"{', '.join(SHADING_NORMALS)}")

  @property
  def lit(self) -> bool:
    """Whether any training view is shaded (Lambertian or textureless)."""
    return self.probs[1] > 0 or self.probs[2] > 0


@dataclasses.dataclass(frozen=True)
class Blob:
  """The density blob's strength, scaled from `start` to `end` over `steps` (0: constant)."""
  start: float
  end: float
  steps: int


@dataclasses.dataclass(frozen=True)
class Regularizers:
  orientation: float
  opacity: float
  opacity_kind: str  # regularizers.OPACITY_LOSS_KINDS


@dataclasses.dataclass(frozen=True)
class Config(field_system.FieldRunConfig):
  """A DreamFusion run (configs/dreamfusion.py)."""
  field: nerf.NeRFConfig
  blob: Blob
  guidance: Guidance
  shading: Shading
  regularizers: Regularizers


def blob_scale(cfg: Blob, step) -> jax.Array:
  if cfg.steps <= 0:
    return jnp.asarray(cfg.start, jnp.float32)
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / cfg.steps, 0.0, 1.0)
  return cfg.start + (cfg.end - cfg.start) * frac


def needs_normals(cfg: Config) -> bool:
  """Whether training needs per-sample normals (per-sample shading or the orientation loss).

  Normals are the density gradient, so training through them is second order; an
  albedo-only configuration skips them entirely (about 3x cheaper on CPU).
  """
  return (cfg.shading.lit and cfg.shading.normals == "sample") or (
      cfg.regularizers.orientation > 0)


class DreamFusion(field_system.FieldSystem):
  """The SDS system."""

  Config = Config
  shades_renders = True

  def __init__(self, prompt: str, config: Config, prior: Prior, mesh=None):
    super().__init__(prompt, config, prior, radiance.NeRFField(config.field), mesh)

  @property
  def ambient(self) -> float:
    return self.config.shading.ambient

  def density_schedule(self, step) -> jax.Array:
    return blob_scale(self.config.blob, step)

  def distillation_loss(self, inputs, shared_params, key, images, t, cond, uncond, plain,
                        cams: cameras.Camera):
    """The score-distillation term of renders `images` (V, H, W, 3) and its aux outputs."""
    del shared_params, cams
    g = self.config.guidance
    return sds.sds_loss(self.prior, inputs["prior"], key, images, t, cond, uncond, g.scale,
                        g.timesteps.weighting, g.max_grad_norm or None, plain, g.view_scale,
                        self.encode)

  @property
  def encode(self):
    """The prior's encoder, rematerialised when `guidance.remat_encoder` is set."""
    if self.config.guidance.remat_encoder:
      return jax.checkpoint(self.prior.encode)
    return self.prior.encode

  def particle_outputs(self, aux, cams: cameras.Camera):
    """What the shared part sees of this particle's step (None: SDS has no shared part)."""
    del aux, cams

  def particle_loss(self, params, shared_params, key, step, inputs):
    cfg = self.config
    k_cam, k_render, k_t, k_noise, k_shade, k_light = jax.random.split(key, 6)
    v = cfg.views_per_step
    cams, view = self.sample_views(k_cam)
    lighting = None
    if cfg.shading.lit:
      mode = jax.random.choice(k_shade, 3, (v,), p=jnp.asarray(cfg.shading.probs))
      mode = jnp.where(step < cfg.shading.albedo_warmup_steps, 0, mode)
      light = cams.position + cfg.shading.light_jitter * jax.random.normal(k_light, (v, 3))
      lighting = render_fields.Lighting(mode, light, cfg.shading.ambient,
                                        cfg.shading.normals == "surface")
    sample_normals = needs_normals(cfg)
    out = self.render_views(params, cams, k_render, step, lighting=lighting,
                            sample_normals=sample_normals)
    t = timesteps_lib.sample(k_t, cfg.guidance.timesteps, self.prior.num_train_timesteps,
                             (v,), step)
    cond, uncond, plain = self.guidance_embeddings(inputs["conds"], view)
    loss_sds, aux = self.distillation_loss(inputs, shared_params, k_noise, out["color"], t,
                                           cond, uncond, plain, cams)
    loss_orient = jnp.zeros(())
    if sample_normals:
      _, dirs = cameras.rays(cams)
      loss_orient = jnp.mean(jax.vmap(regularizers.orientation_loss)(
          out["weights"], out["sample_normals"], dirs.reshape(v, -1, 3)))
    loss_opacity = regularizers.opacity_loss(out["opacity"], cfg.regularizers.opacity_kind)
    loss = (loss_sds + cfg.regularizers.orientation * loss_orient +
            cfg.regularizers.opacity * loss_opacity)
    metrics = {"loss": loss, "loss_sds": loss_sds, "loss_orientation": loss_orient,
               "loss_opacity": loss_opacity, "mean_opacity": jnp.mean(out["opacity"]),
               "t": jnp.mean(t.astype(jnp.float32)) / self.prior.num_train_timesteps,
               "residual_norm": aux["residual_norm"]}
    return loss, (metrics, self.particle_outputs(aux, cams))

  def step_parts(self, state: base.State, key: jax.Array) -> base.StepParts:
    cfg = self.config
    cams, view = self.sample_views(key)
    lighting = None
    if cfg.shading.lit:
      lighting = render_fields.Lighting(jnp.ones(view.shape, jnp.int32), cams.position,
                                        cfg.shading.ambient, cfg.shading.normals == "surface")
    cond, uncond, plain = self.guidance_embeddings(self.inputs["conds"], view)
    t = jnp.full(view.shape, self.prior.num_train_timesteps // 2, jnp.int32)
    g = cfg.guidance
    return base.StepParts(
        render=lambda p, k: self.render_views(p, cams, k, lighting=lighting,
                                              sample_normals=needs_normals(cfg))["color"],
        guidance=lambda pp, x0, k: sds.sds_residual(
            self.prior, pp, k, x0, t, cond, uncond, g.scale, plain=plain,
            view_scale=g.view_scale)[0])


__all__ = ["DreamFusion", "Config", "needs_normals", "blob_scale"]
