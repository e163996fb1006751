"""DreamFusion: a population of hash-grid NeRFs trained by Score Distillation Sampling.

One training step for one particle (Poole et al. 2022, Sec. 3):
  cameras ~ orbit distribution; prompt += view suffix (front/side/back/overhead)
  image = render(θ, camera) with shading ∈ {albedo, Lambertian, textureless}
  L = SDS(image) + λ_orient · orientation + λ_opacity · opacity
and Adam on θ. The step is written for one particle and `vmap`ped over the leading particle
axis of the state; with several devices that axis is sharded over the `particles` mesh axis.
Particle k's randomness is `fold_in(step_key, particle_id_k)` and its init key
`fold_in(init_key, particle_id_k)`, so particle k of a P-run is the same as a 1-particle run
with particle id k.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jax3d import cameras
from jax3d.errors import UserError
from jax3d.fields import nerf
from jax3d.guidance import sds
from jax3d.guidance import timesteps as timesteps_lib
from jax3d.priors.base import Prior
from jax3d.render import volume
from jax3d.train import sharding

State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ShadingConfig:
  probs: tuple[float, float, float] = (0.25, 0.75, 0.0)
  ambient: float = 0.35
  light_jitter: float = 0.3
  albedo_warmup_steps: int = 0


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
  view_dependent_prompt: bool
  shading: ShadingConfig
  background: tuple[float, float, float]
  orientation_weight: float
  opacity_weight: float
  opacity_kind: str
  blob_start: float
  blob_end: float
  blob_steps: int
  lr_grid: float
  lr_mlp: float
  b1: float
  b2: float
  eps: float
  grad_clip: float

  @classmethod
  def from_config(cls, prompt: str, c: ml_collections.ConfigDict) -> "SystemConfig":
    probs = tuple(float(p) for p in c.shading.probs)
    if len(probs) != 3 or min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
      raise UserError(f"shading.probs must be 3 non-negative numbers summing to 1 (albedo, "
                      f"lambertian, textureless), got {probs}")
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
        view_dependent_prompt=bool(c.guidance.view_dependent_prompt),
        shading=ShadingConfig(probs=probs, ambient=float(c.shading.ambient),
                              light_jitter=float(c.shading.light_jitter),
                              albedo_warmup_steps=int(c.shading.albedo_warmup_steps)),
        background=tuple(float(v) for v in c.background),
        orientation_weight=float(c.regularizers.orientation),
        opacity_weight=float(c.regularizers.opacity),
        opacity_kind=str(c.regularizers.opacity_kind),
        blob_start=float(c.blob.start), blob_end=float(c.blob.end), blob_steps=int(c.blob.steps),
        lr_grid=float(c.optim.lr_grid), lr_mlp=float(c.optim.lr_mlp), b1=float(c.optim.b1),
        b2=float(c.optim.b2), eps=float(c.optim.eps), grad_clip=float(c.optim.grad_clip))


def view_prompts(prompt: str, view_dependent: bool) -> list[str]:
  """The prompt per view label (VIEW_LABELS order), suffixed when view-dependent."""
  return [prompt + (cameras.view_suffix(v) if view_dependent else "")
          for v in cameras.VIEW_LABELS]


def blob_scale(cfg: SystemConfig, step) -> jax.Array:
  if cfg.blob_steps <= 0:
    return jnp.asarray(cfg.blob_start, jnp.float32)
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / cfg.blob_steps, 0.0, 1.0)
  return cfg.blob_start + (cfg.blob_end - cfg.blob_start) * frac


def make_optimizer(cfg: SystemConfig) -> optax.GradientTransformation:
  """Adam with the anchors' learning rates: hash grid ~1e-2, MLP lower (threestudio)."""
  def adam(lr):
    return optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  labels = lambda params: {"encoding": "grid", "mlp": jax.tree.map(lambda _: "mlp",
                                                                   params["mlp"])}
  tx = optax.multi_transform({"grid": adam(cfg.lr_grid), "mlp": adam(cfg.lr_mlp)}, labels)
  if cfg.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx


def needs_normals(cfg: SystemConfig) -> bool:
  """Whether training needs per-sample normals (shading or the orientation loss).

  Normals are the density gradient, so training through them is second order; an
  albedo-only configuration skips them entirely (about 3x cheaper on CPU).
  """
  return cfg.shading.probs[1] > 0 or cfg.shading.probs[2] > 0 or cfg.orientation_weight > 0


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

  def one(o, d, k, mode, light):
    out = volume.render_rays(field_fn_for(cfg, params, mode, light, blob, with_normals),
                             o.reshape(-1, 3), d.reshape(-1, 3), k, cfg.render,
                             background={"rgb": jnp.asarray(cfg.background)})
    orient = (nerf.orientation_loss(out["weights"], out["samples"]["normal"], d.reshape(-1, 3))
              if with_normals else jnp.zeros(()))
    return {"rgb": out["rgb"].reshape(h, w, 3), "opacity": out["opacity"].reshape(h, w),
            "normal": out["normal"].reshape(h, w, 3), "orientation": orient}

  keys = jax.random.split(key, v)
  return jax.vmap(one)(origins, dirs, keys, shading_mode, light_pos)


class DreamFusion:
  """The SDS system: pure `init` and `train_step` over a particle population."""

  def __init__(self, cfg: SystemConfig, prior: Prior, mesh=None):
    self.cfg = cfg
    self.prior = prior
    self.mesh = mesh if mesh is not None else sharding.particle_mesh(cfg.num_particles)
    self.tx = make_optimizer(cfg)
    prompts = view_prompts(cfg.prompt, cfg.view_dependent_prompt)
    # Embeddings per view label and the unconditional one, computed once (cached by the prior).
    self.cond_table = prior.embed(prompts)
    self.uncond = prior.uncond(1)
    self._step = self._build_step()
    self._density_base = functools.partial(_density, field_cfg=cfg.field)
    self._albedo_base = functools.partial(_albedo, field_cfg=cfg.field)

  # ---- init ----
  def init_particle(self, key: jax.Array, particle_id) -> State:
    params = nerf.init(jax.random.fold_in(key, particle_id), self.cfg.field)
    return {"params": params, "opt_state": self.tx.init(params)}

  def init(self, key: jax.Array, particle_ids=None) -> State:
    """State with leading particle axis P: params, opt_state, particle_id; plus a step count."""
    ids = jnp.arange(self.cfg.num_particles) if particle_ids is None else jnp.asarray(
        particle_ids)
    if ids.shape != (self.cfg.num_particles,):
      raise ValueError(f"particle_ids must have shape ({self.cfg.num_particles},)")
    per_particle = jax.jit(jax.vmap(self.init_particle, in_axes=(None, 0)))(key, ids)
    state = dict(per_particle, particle_id=ids.astype(jnp.int32))
    state = sharding.shard_particles(state, self.mesh)
    state["step"] = jax.device_put(jnp.zeros((), jnp.int32), sharding.replicated(self.mesh))
    return state

  # ---- one particle's loss ----
  def particle_loss(self, params, key, step, prior_params, cond_table, uncond):
    cfg = self.cfg
    k_cam, k_render, k_t, k_noise, k_shade, k_light = jax.random.split(key, 6)
    v = cfg.views_per_step
    cams = cameras.sample(k_cam, v, cfg.camera)
    az, el, _ = cameras.to_spherical(cams)
    view = cameras.view_index(az, el)
    probs = jnp.asarray(cfg.shading.probs)
    mode = jax.random.choice(k_shade, 3, (v,), p=probs)
    mode = jnp.where(step < cfg.shading.albedo_warmup_steps, 0, mode)
    light = cams.position + cfg.shading.light_jitter * jax.random.normal(k_light, (v, 3))
    blob = blob_scale(cfg, step)
    out = render_views(cfg, params, cams, k_render, mode, light, blob)
    t = timesteps_lib.sample(k_t, cfg.timesteps, self.prior.num_train_timesteps, (v,), step)
    cond = cond_table[view]
    loss_sds, aux = sds.sds_loss(self.prior, prior_params, k_noise, out["rgb"], t, cond,
                                 jnp.broadcast_to(uncond, (v,) + uncond.shape[1:]),
                                 cfg.guidance_scale, cfg.timesteps.weighting,
                                 cfg.max_grad_norm or None)
    loss_orient = jnp.mean(out["orientation"])
    loss_opacity = nerf.opacity_loss(out["opacity"], cfg.opacity_kind)
    loss = (loss_sds + cfg.orientation_weight * loss_orient +
            cfg.opacity_weight * loss_opacity)
    metrics = {"loss": loss, "loss_sds": loss_sds, "loss_orientation": loss_orient,
               "loss_opacity": loss_opacity, "mean_opacity": jnp.mean(out["opacity"]),
               "t": jnp.mean(t.astype(jnp.float32)) / self.prior.num_train_timesteps,
               "residual_norm": aux["residual_norm"]}
    return loss, metrics

  def particle_step(self, particle: State, key, step, prior_params, cond_table, uncond):
    key = jax.random.fold_in(key, particle["particle_id"])
    grads, metrics = jax.grad(self.particle_loss, has_aux=True)(
        particle["params"], key, step, prior_params, cond_table, uncond)
    updates, opt_state = self.tx.update(grads, particle["opt_state"], particle["params"])
    params = optax.apply_updates(particle["params"], updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return dict(particle, params=params, opt_state=opt_state), metrics

  def _build_step(self):
    def step_fn(state, key, prior_params, cond_table, uncond):
      particles = {k: v for k, v in state.items() if k != "step"}
      new, metrics = jax.vmap(self.particle_step, in_axes=(0, None, None, None, None, None))(
          particles, key, state["step"], prior_params, cond_table, uncond)
      new["step"] = state["step"] + 1
      # Metrics: the population mean (per-particle values stay in `metrics_per_particle`).
      return new, {k: jnp.mean(v) for k, v in metrics.items()}
    return jax.jit(step_fn, donate_argnums=(0,))

  def train_step(self, state: State, key: jax.Array) -> tuple[State, dict[str, jax.Array]]:
    """One SDS step for every particle; pure in (state, key) given the frozen prior."""
    return self._step(state, key, self.prior.params, self.cond_table, self.uncond)

  # ---- views of one trained particle (previews, export) ----
  def particle_params(self, state: State, k: int):
    return jax.tree.map(lambda x: x[k], state["params"])

  @functools.cached_property
  def _render_eval(self) -> Callable:
    cfg = self.cfg

    @functools.partial(jax.jit, static_argnames=("height", "width", "mode"))
    def render(params, c2w, fov, height, width, mode, blob):
      cam = cameras.Camera(c2w=c2w, fov_y=fov, height=height, width=width)
      fn = field_fn_for(cfg, params, mode, cam.position, blob)
      out = volume.render_image(fn, cam, None, cfg.render,
                                background={"rgb": jnp.asarray(cfg.background)}, chunk=4096)
      return {"rgb": jnp.clip(out["rgb"], 0.0, 1.0), "normal": out["normal"],
              "opacity": out["opacity"]}
    return render

  def render(self, params, camera: cameras.Camera, step: int, mode: str = "lambertian"):
    """Deterministic render of one particle from one camera: rgb, normal, opacity maps."""
    return self._render_eval(params, camera.c2w, camera.fov_y, camera.height, camera.width,
                             nerf.shading_index(mode), blob_scale(self.cfg, step))

  def density_fn(self, params, step: int):
    blob = blob_scale(self.cfg, step)
    return jax.tree_util.Partial(self._density_base, params, blob)

  def color_fn(self, params, step: int):
    blob = blob_scale(self.cfg, step)
    return jax.tree_util.Partial(self._albedo_base, params, blob)

  @property
  def render_step_size(self) -> float:
    """The renderer's sample spacing across the scene box (for the mesh iso-level)."""
    return 2.0 * self.cfg.render.bound * 3**0.5 / self.cfg.render.num_samples


def _density(params, blob, x, field_cfg):
  return nerf.density(params, x, field_cfg, blob)


def _albedo(params, blob, x, field_cfg):
  return nerf.query(params, x, field_cfg, blob)["albedo"]
