"""Score Jacobian Chaining: a population of radiance fields trained by PAAS.

One training step for one particle (Wang et al. 2023, Sec. 4–5 and the official `run_sjc.py`):
  cameras ~ orbit distribution; prompt += view suffix
  x = render(θ, camera)          the prior's channels directly: 4 latent channels for Stable
                                 Diffusion (no VAE in the loop), or RGB for a pixel prior
  g = PAAS(x, σ)                 guidance/sjc.py, K perturbations in one vmapped call
  L = −Σ sg(g)·x + λ_e(step) · mean(log(1 + s_e·w)) [+ λ_d · center-depth]
and Adamax on θ. The default field is the dense voxel grid (official: 100³, density shift −1);
the hash-grid NeRF is one config switch away (`field.kind`). Population, sharding, step and
export renders come from `systems.particles.ParticleSystem`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from jax3d import cameras
from jax3d.errors import UserError
from jax3d.fields import radiance
from jax3d.fields import voxel
from jax3d.guidance import sjc as sjc_lib
from jax3d.priors.base import Prior
from jax3d.render import volume
from jax3d.systems import particles

RENDER_SPACES = ("image", "latent")

# A linear map from Stable Diffusion 1.x latents to RGB in [-1, 1] (rows: latent channels),
# the widely used approximation for latent previews; here only for mesh vertex colours.
SD_LATENT_TO_RGB = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264),
                    (-0.184, -0.271, -0.473))


@dataclasses.dataclass(frozen=True)
class SystemConfig:
  """Everything static about an SJC run (hashable, so it can key jit caches)."""
  prompt: str
  num_particles: int
  num_steps: int
  views_per_step: int
  camera: cameras.CameraConfig
  field: radiance.Field
  render: volume.RenderConfig
  paas: sjc_lib.PAASConfig
  view_dependent_prompt: bool
  view_scheme: str  # cameras.VIEW_SCHEMES: which view labels suffix the prompt
  render_space: str
  background: tuple[float, ...]
  emptiness_weight: float
  emptiness_scale: float
  emptiness_step: float
  emptiness_multiplier: float
  center_depth_weight: float
  center_depth_border: float
  optim: particles.OptimConfig

  @classmethod
  def from_config(cls, prompt: str, c: ml_collections.ConfigDict,
                  prior: Prior) -> "SystemConfig":
    space = str(c.render_space)
    if space not in RENDER_SPACES:
      raise UserError(f"unknown render_space {space!r}; choose one of {', '.join(RENDER_SPACES)}")
    if space == "latent" and not prior.latent:
      raise UserError(f"render_space 'latent' needs a latent prior (Stable Diffusion); "
                      f"{prior.name} works on pixels: use render_space 'image'")
    for name in ("num_steps", "views_per_step"):
      if c[name] < 1:
        raise UserError(f"{name} must be >= 1, got {c[name]}")
    channels = prior.channels if space == "latent" else 3
    field = radiance.from_config(c.field, channels=channels)
    if isinstance(field, radiance.VoxelField):
      _check_voxel_memory(field.cfg, int(c.num_particles), float(c.max_memory_gb))
      if space == "image" and field.cfg.feature_activation != "sigmoid":
        raise UserError("an RGB voxel field needs field.voxel.feature_activation='sigmoid' "
                        "(colours in [0, 1])")
    camera = cameras.CameraConfig.from_config(c.camera)
    if space == "latent" and (camera.height, camera.width) != tuple(prior.latent_shape[:2]):
      raise UserError(f"latent renders must match the prior's latent size "
                      f"{prior.latent_shape[0]}x{prior.latent_shape[1]}; set camera.height and "
                      f"camera.width to it (got {camera.height}x{camera.width})")
    paas = sjc_lib.PAASConfig(
        num_perturbations=int(c.guidance.num_perturbations),
        guidance_scale=float(c.guidance.scale), view_scale=float(c.guidance.view_scale),
        trim_low=int(c.guidance.trim_low),
        trim_high=int(c.guidance.trim_high),
        variance_reduction=bool(c.guidance.variance_reduction))
    paas.validate(prior.num_train_timesteps)
    background = tuple(float(v) for v in c.background)
    if len(background) != 3:
      raise UserError(f"background must be an RGB triple, got {background}")
    r = c.regularizers
    return cls(
        prompt=prompt, num_particles=int(c.num_particles), num_steps=int(c.num_steps),
        views_per_step=int(c.views_per_step), camera=camera, field=field,
        render=volume.RenderConfig(**dict(c.render)), paas=paas,
        view_dependent_prompt=bool(c.guidance.view_dependent_prompt),
        view_scheme=particles.view_scheme(c), render_space=space,
        background=background, emptiness_weight=float(r.emptiness_weight),
        emptiness_scale=float(r.emptiness_scale), emptiness_step=float(r.emptiness_step),
        emptiness_multiplier=float(r.emptiness_multiplier),
        center_depth_weight=float(r.center_depth_weight),
        center_depth_border=float(r.center_depth_border),
        optim=particles.OptimConfig.from_config(c.optim))


def _check_voxel_memory(cfg: voxel.VoxelConfig, num_particles: int, max_gb: float) -> None:
  """Refuses, before allocating, a grid whose params, gradients and Adam moments exceed
  `max_gb` (the estimate is 4 float32 copies of the params per particle)."""
  need = num_particles * voxel.memory_bytes(cfg) * 4 / 3
  if need > max_gb * 2**30:
    raise UserError(f"a {cfg.resolution}^3 voxel grid with {cfg.channels} channels needs about "
                    f"{need / 2**30:.1f} GiB for {num_particles} particle(s) (params, gradients, "
                    f"optimizer moments), over max_memory_gb={max_gb:g}; lower "
                    f"field.voxel.resolution or raise max_memory_gb")


def emptiness_loss(weights: jax.Array, scale: float) -> jax.Array:
  """mean(log(1 + scale·w)) over every ray sample's weight (SJC's sparsity prior)."""
  return jnp.mean(jnp.log1p(scale * weights))


def emptiness_weight(cfg: SystemConfig, step) -> jax.Array:
  """λ_e, multiplied by `emptiness_multiplier` from `emptiness_step`·num_steps on."""
  late = jnp.asarray(step) >= cfg.emptiness_step * cfg.num_steps
  return cfg.emptiness_weight * jnp.where(late, cfg.emptiness_multiplier, 1.0)


def center_depth_loss(depth: jax.Array, border: float) -> jax.Array:
  """−log(mean depth of the centre − mean depth of the border) of (V, H, W) accumulated
  depth maps; the border is the outer `border` fraction of each side (official: 7 of 64)."""
  _, h, w = depth.shape
  bh, bw = max(1, round(border * h)), max(1, round(border * w))
  inside = jnp.zeros((h, w), bool).at[bh:h - bh, bw:w - bw].set(True)
  centre = jnp.sum(depth * inside, (1, 2)) / jnp.sum(inside)
  edge = jnp.sum(depth * ~inside, (1, 2)) / jnp.sum(~inside)
  return jnp.mean(-jnp.log(jnp.maximum(centre - edge, 0.0) + 1e-12))


class SJC(particles.ParticleSystem):
  """The SJC system: pure `init` and `train_step` over a particle population."""

  def __init__(self, cfg: SystemConfig, prior: Prior, mesh=None):
    super().__init__(cfg, prior, cfg.field, mesh)
    if cfg.render_space == "latent":
      # The latent of a plain image of the background colour, per channel.
      plain = jnp.broadcast_to(jnp.asarray(cfg.background, jnp.float32),
                               (1, prior.resolution, prior.resolution, 3))
      self.background = jnp.mean(prior.encode(prior.params, plain), axis=(0, 1, 2))
    else:
      self.background = jnp.asarray(cfg.background, jnp.float32)

  def render_views(self, params, cams: cameras.Camera, key) -> dict[str, jax.Array]:
    """(V, H, W, ·) maps of V cameras: colour, opacity, accumulated depth; and the weights."""
    cfg = self.cfg
    h, w = cams.height, cams.width
    origins, dirs = cameras.rays(cams)

    def fn(points, _):
      q = self.field.query(params, points)
      return {"density": q["density"], "color": q["color"]}

    def one(o, d, k):
      out = volume.render_rays(fn, o.reshape(-1, 3), d.reshape(-1, 3), k, cfg.render,
                               background={"color": self.background})
      return {"color": out["color"].reshape(h, w, -1), "opacity": out["opacity"].reshape(h, w),
              "depth": (out["depth"] * out["opacity"]).reshape(h, w), "weights": out["weights"]}

    return jax.vmap(one)(origins, dirs, jax.random.split(key, origins.shape[0]))

  def particle_loss(self, params, key, step, prior_params, conds):
    cfg = self.cfg
    k_cam, k_render, k_t, k_noise = jax.random.split(key, 4)
    v = cfg.views_per_step
    cams = cameras.sample(k_cam, v, cfg.camera)
    az, el, _ = cameras.to_spherical(cams)
    out = self.render_views(params, cams, k_render)
    x = out["color"]
    if cfg.render_space == "image":
      x = self.prior.encode(prior_params, x)
    t = sjc_lib.sample_timesteps(k_t, cfg.paas, self.prior.num_train_timesteps, (v,))
    cond, uncond, plain = self.guidance_embeddings(
        conds, cameras.view_index(az, el, cfg.view_scheme))
    loss_sjc, aux = sjc_lib.sjc_loss(self.prior, prior_params, k_noise, x, t, cond, uncond,
                                     cfg.paas, plain)
    loss_empty = emptiness_loss(out["weights"], cfg.emptiness_scale)
    loss = loss_sjc + emptiness_weight(cfg, step) * loss_empty
    loss_depth = jnp.zeros(())
    if cfg.center_depth_weight > 0:
      loss_depth = center_depth_loss(out["depth"], cfg.center_depth_border)
      loss = loss + cfg.center_depth_weight * loss_depth
    metrics = {"loss": loss, "loss_sjc": loss_sjc, "loss_emptiness": loss_empty,
               "loss_center_depth": loss_depth, "mean_opacity": jnp.mean(out["opacity"]),
               "sigma": jnp.mean(aux["sigma"]), "residual_norm": aux["residual_norm"]}
    return loss, metrics

  # ---- renders for previews and export ----
  def render(self, params, camera: cameras.Camera, step: int, mode: str = "albedo"):
    """Deterministic render; latent fields render at the prior's latent size, are decoded by
    the prior (its VAE) and resized to the camera's size."""
    if self.cfg.render_space == "image":
      return super().render(params, camera, step, mode)
    h, w = camera.height, camera.width
    lh, lw = self.prior.latent_shape[:2]
    latent_cam = cameras.Camera(c2w=camera.c2w, fov_y=camera.fov_y, height=lh, width=lw)
    out = super().render(params, latent_cam, step, mode)
    return {"rgb": jax.image.resize(out["rgb"], (h, w, 3), "linear"),
            "normal": jax.image.resize(out["normal"], (h, w, 3), "linear"),
            "opacity": jax.image.resize(out["opacity"], (h, w), "linear")}

  def _image(self, prior_params, color):
    if self.cfg.render_space == "image":
      return super()._image(prior_params, color)
    return self.prior.decode(prior_params, color[None])[0]

  def vertex_rgb(self, color: jax.Array) -> jax.Array:
    if self.cfg.render_space == "image":
      return color
    m = jnp.asarray(SD_LATENT_TO_RGB, jnp.float32)[:color.shape[-1]]
    return jnp.clip((color @ m + 1.0) / 2.0, 0.0, 1.0)


__all__ = ["SJC", "SystemConfig", "emptiness_loss", "emptiness_weight", "center_depth_loss"]
