"""DreamFusion: a population of hash-grid NeRFs trained by Score Distillation Sampling.

One training step for one particle (Poole et al. 2022, Sec. 3):
  cameras ~ orbit distribution; prompt += view suffix (front/side/back/overhead)
  image = render(θ, camera) with shading ∈ {albedo, Lambertian, textureless}
  L = SDS(image) + λ_orient · orientation + λ_opacity · opacity
and Adam on θ. The particle population, its sharding, the vmapped step and the renders for
export come from `systems.particles.ParticleSystem`; this module adds the SDS loss.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from jax3d import cameras
from jax3d.errors import UserError
from jax3d.fields import nerf
from jax3d.fields import radiance
from jax3d.guidance import sds
from jax3d.guidance import timesteps as timesteps_lib
from jax3d.priors.base import Prior
from jax3d.render import volume
from jax3d.systems import particles
from jax3d.systems.particles import State, view_prompts  # noqa: F401  (re-exported)


SHADING_NORMALS = ("sample", "surface")


@dataclasses.dataclass(frozen=True)
class ShadingConfig:
  probs: tuple[float, float, float] = (0.25, 0.75, 0.0)
  ambient: float = 0.35
  light_jitter: float = 0.3
  albedo_warmup_steps: int = 0
  # Where training takes normals for shading: "sample" — every ray sample (−∇σ per sample,
  # composited; second order through the field), or "surface" — once per ray at the expected
  # termination point o + d·depth by central differences of σ (6 density queries per ray,
  # first order). See `render_views`.
  normals: str = "sample"


@dataclasses.dataclass(frozen=True)
class SystemConfig:
  """Everything static about a DreamFusion run (hashable, so it can key jit caches)."""
  prompt: str
  num_particles: int
  views_per_step: int
  camera: cameras.CameraConfig
  field: nerf.NeRFConfig
  render: volume.RenderConfig
  timesteps: timesteps_lib.TimestepConfig
  guidance_scale: float
  max_grad_norm: float
  view_guidance_scale: float  # 0 = off; see Prior.eps
  view_dependent_prompt: bool
  view_scheme: str  # cameras.VIEW_SCHEMES: which view labels suffix the prompt
  shading: ShadingConfig
  background: tuple[float, float, float]
  orientation_weight: float
  opacity_weight: float
  opacity_kind: str
  blob_start: float
  blob_end: float
  blob_steps: int
  optim: particles.OptimConfig

  @classmethod
  def from_config(cls, prompt: str, c: ml_collections.ConfigDict) -> "SystemConfig":
    probs = tuple(float(p) for p in c.shading.probs)
    if len(probs) != 3 or min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
      raise UserError(f"shading.probs must be 3 non-negative numbers summing to 1 (albedo, "
                      f"lambertian, textureless), got {probs}")
    normals = str(c.shading.get("normals", "sample"))
    if normals not in SHADING_NORMALS:
      raise UserError(f"unknown shading.normals {normals!r}; choose one of "
                      f"{', '.join(SHADING_NORMALS)}")
    if float(c.guidance.view_scale) < 0:
      raise UserError(f"guidance.view_scale must be >= 0 (0 = off), got {c.guidance.view_scale}")
    if c.views_per_step < 1:
      raise UserError(f"views_per_step must be >= 1, got {c.views_per_step}")
    if c.num_steps < 1:
      raise UserError(f"num_steps must be >= 1, got {c.num_steps}")
    return cls(
        prompt=prompt, num_particles=int(c.num_particles), views_per_step=int(c.views_per_step),
        camera=cameras.CameraConfig.from_config(c.camera),
        field=nerf.NeRFConfig.from_config(c.field),
        render=volume.RenderConfig(**dict(c.render)),
        timesteps=timesteps_lib.TimestepConfig.from_config(c.guidance.timesteps),
        guidance_scale=float(c.guidance.scale), max_grad_norm=float(c.guidance.max_grad_norm),
        view_guidance_scale=float(c.guidance.view_scale),
        view_dependent_prompt=bool(c.guidance.view_dependent_prompt),
        view_scheme=particles.view_scheme(c),
        shading=ShadingConfig(probs=probs, ambient=float(c.shading.ambient),
                              light_jitter=float(c.shading.light_jitter),
                              albedo_warmup_steps=int(c.shading.albedo_warmup_steps),
                              normals=normals),
        background=tuple(float(v) for v in c.background),
        orientation_weight=float(c.regularizers.orientation),
        opacity_weight=float(c.regularizers.opacity),
        opacity_kind=str(c.regularizers.opacity_kind),
        blob_start=float(c.blob.start), blob_end=float(c.blob.end), blob_steps=int(c.blob.steps),
        optim=particles.OptimConfig.from_config(c.optim))


def blob_scale(cfg: SystemConfig, step) -> jax.Array:
  if cfg.blob_steps <= 0:
    return jnp.asarray(cfg.blob_start, jnp.float32)
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / cfg.blob_steps, 0.0, 1.0)
  return cfg.blob_start + (cfg.blob_end - cfg.blob_start) * frac


def shades(cfg: SystemConfig) -> bool:
  """Whether any training view is shaded (Lambertian or textureless)."""
  return cfg.shading.probs[1] > 0 or cfg.shading.probs[2] > 0


def needs_normals(cfg: SystemConfig) -> bool:
  """Whether training needs per-sample normals (per-sample shading or the orientation loss).

  Normals are the density gradient, so training through them is second order; an
  albedo-only configuration skips them entirely (about 3x cheaper on CPU).
  """
  per_sample_shading = shades(cfg) and cfg.shading.normals == "sample"
  return per_sample_shading or cfg.orientation_weight > 0


def field_fn_for(cfg: SystemConfig, params, shading_mode, light_pos, blob,
                 with_normals: bool = True):
  """A `volume.render_rays` field: density, shaded 'rgb' and 'normal' per sample."""
  def fn(points, dirs):
    del dirs
    if not with_normals:
      q = nerf.query(params, points, cfg.field, blob)
      return {"density": q["density"], "rgb": q["albedo"],
              "normal": jnp.zeros_like(q["albedo"])}
    q = nerf.query(params, points, cfg.field, blob, with_normals=True)
    light_dir = light_pos - points
    rgb = nerf.shade(q["albedo"], q["normal"], light_dir, shading_mode, cfg.shading.ambient)
    return {"density": q["density"], "rgb": rgb, "normal": q["normal"]}
  return fn


def render_views(cfg: SystemConfig, params, cams: cameras.Camera, key, shading_mode, light_pos,
                 blob) -> dict[str, jax.Array]:
  """Renders a batch of cameras (V,) to (V, H, W, ·) maps (training: stratified samples)."""
  v, h, w = cams.fov_y.shape[0], cams.height, cams.width
  origins, dirs = cameras.rays(cams)

  with_normals = needs_normals(cfg)
  deferred = shades(cfg) and cfg.shading.normals == "surface"

  def one(o, d, k, mode, light):
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    # Deferred shading composites the raw albedo and lights it afterwards (mode 0 per sample).
    field_fn = field_fn_for(cfg, params, 0 if deferred else mode, light, blob, with_normals)
    out = volume.render_rays(field_fn, o, d, k, cfg.render,
                             background=None if deferred else {"rgb": jnp.asarray(cfg.background)})
    rgb, normal = out["rgb"], out["normal"]
    if deferred:
      rgb, normal = particles.deferred_shading(
          out, o, d, lambda x: nerf.density(params, x, cfg.field, blob), cfg.field.normal_eps,
          jnp.asarray(cfg.background, jnp.float32), light, mode, cfg.shading.ambient)
    orient = (nerf.orientation_loss(out["weights"], out["samples"]["normal"], d)
              if with_normals else jnp.zeros(()))
    return {"rgb": rgb.reshape(h, w, 3), "opacity": out["opacity"].reshape(h, w),
            "normal": normal.reshape(h, w, 3), "orientation": orient}

  keys = jax.random.split(key, v)
  return jax.vmap(one)(origins, dirs, keys, shading_mode, light_pos)


class DreamFusion(particles.ParticleSystem):
  """The SDS system: pure `init` and `train_step` over a particle population."""

  def __init__(self, cfg: SystemConfig, prior: Prior, mesh=None):
    super().__init__(cfg, prior, radiance.NeRFField(cfg.field), mesh)

  def blob(self, step) -> jax.Array:
    return blob_scale(self.cfg, step)

  shades_renders = True

  @property
  def ambient(self) -> float:
    return self.cfg.shading.ambient

  def particle_loss(self, params, key, step, prior_params, conds):
    cfg = self.cfg
    k_cam, k_render, k_t, k_noise, k_shade, k_light = jax.random.split(key, 6)
    v = cfg.views_per_step
    cams = cameras.sample(k_cam, v, cfg.camera)
    az, el, _ = cameras.to_spherical(cams)
    view = cameras.view_index(az, el, cfg.view_scheme)
    probs = jnp.asarray(cfg.shading.probs)
    mode = jax.random.choice(k_shade, 3, (v,), p=probs)
    mode = jnp.where(step < cfg.shading.albedo_warmup_steps, 0, mode)
    light = cams.position + cfg.shading.light_jitter * jax.random.normal(k_light, (v, 3))
    blob = blob_scale(cfg, step)
    out = render_views(cfg, params, cams, k_render, mode, light, blob)
    t = timesteps_lib.sample(k_t, cfg.timesteps, self.prior.num_train_timesteps, (v,), step)
    cond, uncond, plain = self.guidance_embeddings(conds, view)
    loss_sds, aux = sds.sds_loss(self.prior, prior_params, k_noise, out["rgb"], t, cond,
                                 uncond, cfg.guidance_scale, cfg.timesteps.weighting,
                                 cfg.max_grad_norm or None, plain, cfg.view_guidance_scale)
    loss_orient = jnp.mean(out["orientation"])
    loss_opacity = nerf.opacity_loss(out["opacity"], cfg.opacity_kind)
    loss = (loss_sds + cfg.orientation_weight * loss_orient +
            cfg.opacity_weight * loss_opacity)
    metrics = {"loss": loss, "loss_sds": loss_sds, "loss_orientation": loss_orient,
               "loss_opacity": loss_opacity, "mean_opacity": jnp.mean(out["opacity"]),
               "t": jnp.mean(t.astype(jnp.float32)) / self.prior.num_train_timesteps,
               "residual_norm": aux["residual_norm"]}
    return loss, metrics
