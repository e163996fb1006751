"""What every distillation system shares: a population of P fields, vmapped and sharded.

A system subclasses `ParticleSystem` and supplies `particle_loss` (one particle's loss and
metrics for one step); this class supplies the rest, identically for every method:
  - the state: params and optimizer state with a leading particle axis P (P = 1 is the plain
    method), sharded over the `particles` mesh axis when there are several devices;
  - the step: written for one particle and `vmap`ped, `jit`ted with the state donated.
    Particle k's randomness is `fold_in(step_key, particle_id_k)` and its init key
    `fold_in(init_key, particle_id_k)`, so particle k of a P-run equals a 1-particle run with
    particle id k;
  - deterministic renders of one particle (previews, turntables) and its density and colour
    functions (mesh export).
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
from jax3d.fields import radiance
from jax3d.priors.base import Prior
from jax3d.render import volume
from jax3d.train import sharding

State = dict[str, Any]
OPTIMIZERS = ("adam", "adamax")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Adam or Adamax with one learning rate for grid-like leaves and one for MLP leaves."""
  name: str = "adam"
  lr_grid: float = 1e-2
  lr_mlp: float = 1e-3
  b1: float = 0.9
  b2: float = 0.99
  eps: float = 1e-15
  grad_clip: float = 0.0

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict) -> "OptimConfig":
    name = str(c.get("name", "adam"))
    if name not in OPTIMIZERS:
      raise UserError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return cls(name=name, lr_grid=float(c.lr_grid), lr_mlp=float(c.lr_mlp), b1=float(c.b1),
               b2=float(c.b2), eps=float(c.eps), grad_clip=float(c.grad_clip))


def make_optimizer(cfg: OptimConfig, field: radiance.Field) -> optax.GradientTransformation:
  """The configured optimizer, with the field's grid and MLP leaves at their own rates."""
  def one(lr):
    if cfg.name == "adamax":
      return optax.adamax(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    return optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  tx = optax.multi_transform({"grid": one(cfg.lr_grid), "mlp": one(cfg.lr_mlp)}, field.labels)
  if cfg.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx


def view_prompts(prompt: str, view_dependent: bool, scheme: str = "dreamfusion") -> list[str]:
  """The prompt per view label of `scheme` (`cameras.view_labels` order), suffixed when
  view-dependent."""
  return [prompt + (cameras.view_suffix(v) if view_dependent else "")
          for v in cameras.view_labels(scheme)]


def deferred_shading(out: dict[str, jax.Array], origins: jax.Array, dirs: jax.Array,
                     density_fn: Callable[[jax.Array], jax.Array], eps: float,
                     background: jax.Array, light_pos=None, mode=None,
                     ambient: float = nerf.DEFAULT_AMBIENT) -> tuple[jax.Array, jax.Array]:
  """(colour (..., C), normal (..., 3)) of rendered rays `out` (colour 'rgb' composited
  without a background): one normal per ray, −∇σ/|∇σ| by central differences of step `eps`
  at the expected termination point x_s = o + d·depth; with a `mode`, the colour is lit there
  by `nerf.shade_composite` (light at `light_pos`); then the background fills 1 − opacity.
  Gradients reach the surface's orientation through the six density queries per ray and its
  position through the depth."""
  x_s = origins + dirs * out["depth"][..., None]
  normal = volume.surface_normals(density_fn, x_s, eps)
  color = out["rgb"]
  if mode is not None:
    color = nerf.shade_composite(color, out["opacity"], normal, light_pos - x_s, mode, ambient)
  return color + (1.0 - out["opacity"])[..., None] * background, normal


AUTO_VIEW_LABELS = "auto"  # guidance.view_labels: the prior's first view scheme


def view_scheme(c: ml_collections.ConfigDict) -> str:
  """The config's view-label scheme (`guidance.view_labels`), checked; 'auto' is resolved to
  the prior's own scheme by `ParticleSystem`."""
  scheme = str(c.guidance.get("view_labels", "dreamfusion"))
  if scheme != AUTO_VIEW_LABELS:
    cameras.check_view_scheme(scheme)
  return scheme


class ParticleSystem:
  """Pure `init` and `train_step` over a particle population; subclasses add the loss.

  The subclass's config must have: prompt, num_particles, view_dependent_prompt, view_scheme,
  render
  (a volume.RenderConfig), background and optim (an OptimConfig).
  """

  def __init__(self, cfg, prior: Prior, field: radiance.Field, mesh=None):
    if cfg.view_scheme == AUTO_VIEW_LABELS:
      cfg = dataclasses.replace(cfg, view_scheme=prior.view_schemes[0])
    self.cfg = cfg
    self.prior = prior
    self.field = field
    self.mesh = mesh if mesh is not None else sharding.particle_mesh(cfg.num_particles)
    self.tx = make_optimizer(cfg.optim, field)
    self.background = jnp.asarray(cfg.background, jnp.float32)  # what empty rays composite
    if cfg.view_dependent_prompt and cfg.view_scheme not in prior.view_schemes:
      raise UserError(
          f"the {prior.name} prior was trained with view labels "
          f"{', '.join(prior.view_schemes)}, not {cfg.view_scheme}; set "
          f"--config.guidance.view_labels={prior.view_schemes[0]} or use a prior that knows "
          f"{cfg.view_scheme} (the analytic prior knows every scheme)")
    # Embeddings per view label, of the bare prompt (view guidance) and the unconditional one,
    # computed once (cached by the prior).
    self.conds = {"views": prior.embed(view_prompts(cfg.prompt, cfg.view_dependent_prompt,
                                                    cfg.view_scheme)),
                  "plain": prior.embed([cfg.prompt]), "uncond": prior.uncond(1)}
    self._step = self._build_step()

  # ---- what a subclass provides ----
  def particle_loss(self, params, key, step, prior_params, conds):
    """(loss, metrics) of one particle at one step."""
    raise NotImplementedError

  def guidance_embeddings(self, conds, view: jax.Array):
    """(cond, uncond, plain) for views with label indices `view` (V,); plain, the bare prompt
    for `Prior.eps`'s view guidance (which ignores it at view scale 0), is None when the
    prompts carry no view words."""
    v = view.shape[0]
    uncond = jnp.broadcast_to(conds["uncond"], (v,) + conds["uncond"].shape[1:])
    plain = (jnp.broadcast_to(conds["plain"], uncond.shape) if self.cfg.view_dependent_prompt
             else None)
    return conds["views"][view], uncond, plain

  def blob(self, step) -> jax.Array:
    """The density-blob scale at `step` (NeRF fields); 1 where there is none."""
    del step
    return jnp.ones((), jnp.float32)

  # Whether export renders light the colour (Lambertian turntables of an albedo field) or show
  # the field's channels as they are (a field of a prior's latents).
  shades_renders = False
  ambient = nerf.DEFAULT_AMBIENT

  @property
  def normal_eps(self) -> float:
    """The central-difference step of render normals: the field's own, or one voxel."""
    cfg = self.field.cfg
    if hasattr(cfg, "normal_eps"):
      return float(cfg.normal_eps)
    return 2.0 * cfg.bound / (cfg.resolution - 1)

  # ---- init ----
  def init_particle(self, key: jax.Array, particle_id) -> State:
    params = self.field.init(jax.random.fold_in(key, particle_id))
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

  # ---- the step ----
  def particle_step(self, particle: State, key, step, prior_params, conds):
    key = jax.random.fold_in(key, particle["particle_id"])
    grads, metrics = jax.grad(self.particle_loss, has_aux=True)(
        particle["params"], key, step, prior_params, conds)
    updates, opt_state = self.tx.update(grads, particle["opt_state"], particle["params"])
    params = optax.apply_updates(particle["params"], updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return dict(particle, params=params, opt_state=opt_state), metrics

  def _build_step(self):
    def step_fn(state, key, prior_params, conds):
      particles = {k: v for k, v in state.items() if k != "step"}
      if self.cfg.num_particles == 1:
        # One particle needs no batching: vmap over a size-1 axis turns the hash grid's
        # gathers and scatter-adds into batched ones, ~1.6x the step time on CPU.
        new, metrics = self.particle_step(jax.tree.map(lambda x: x[0], particles), key,
                                          state["step"], prior_params, conds)
        new = jax.tree.map(lambda x: x[None], new)
      else:
        new, metrics = jax.vmap(self.particle_step, in_axes=(0, None, None, None, None))(
            particles, key, state["step"], prior_params, conds)
      new["step"] = state["step"] + 1
      return new, {k: jnp.mean(v) for k, v in metrics.items()}  # the population mean
    return jax.jit(step_fn, donate_argnums=(0,))

  def train_step(self, state: State, key: jax.Array) -> tuple[State, dict[str, jax.Array]]:
    """One step for every particle; pure in (state, key) given the frozen prior."""
    return self._step(state, key, self.prior.params, self.conds)

  # ---- one trained particle (previews, export) ----
  def particle_params(self, state: State, k: int):
    return jax.tree.map(lambda x: x[k], state["params"])

  @functools.cached_property
  def _render_eval(self) -> Callable:
    @functools.partial(jax.jit, static_argnames=("height", "width", "mode"))
    def render(params, prior_params, c2w, fov, height, width, mode, blob):
      cam = cameras.Camera(c2w=c2w, fov_y=fov, height=height, width=width)

      def fn(points, dirs):
        del dirs
        q = self.field.query(params, points, blob)
        return {"density": q["density"], "rgb": q["color"]}
      out = volume.render_image(fn, cam, None, self.cfg.render, chunk=4096)
      origins, dirs = cameras.rays(cam)
      color, normal = deferred_shading(
          out, origins, dirs, lambda x: self.field.density(params, x, blob), self.normal_eps,
          self.background, cam.position, mode if self.shades_renders else None, self.ambient)
      return {"rgb": self._image(prior_params, color), "normal": normal,
              "opacity": out["opacity"]}
    return render

  def _image(self, prior_params, color):
    """A rendered colour map (H, W, C) as an RGB image in [0, 1]."""
    del prior_params
    return jnp.clip(color, 0.0, 1.0)

  def render(self, params, camera: cameras.Camera, step: int, mode: str = "lambertian"):
    """Deterministic render of one particle from one camera: rgb, normal, opacity maps."""
    return self._render_eval(params, self.prior.params, camera.c2w, camera.fov_y,
                             camera.height, camera.width, nerf.shading_index(mode),
                             self.blob(step))

  # Partial's function is part of a jit cache key: build each one once per system.
  @functools.cached_property
  def _density_base(self):
    return functools.partial(_density, self.field)

  @functools.cached_property
  def _color_base(self):
    return functools.partial(_color, self.field, self.vertex_rgb)

  def density_fn(self, params, step: int):
    """σ(x) of one particle as a jit-friendly `Partial` over its params."""
    return jax.tree_util.Partial(self._density_base, params, self.blob(step))

  def color_fn(self, params, step: int):
    """Vertex RGB(x) of one particle as a jit-friendly `Partial` over its params."""
    return jax.tree_util.Partial(self._color_base, params, self.blob(step))

  @staticmethod
  def vertex_rgb(color: jax.Array) -> jax.Array:
    """A field colour (..., C) as mesh vertex RGB in [0, 1]."""
    return color

  @property
  def render_step_size(self) -> float:
    """The renderer's sample spacing across the scene box (for the mesh iso-level)."""
    return 2.0 * self.cfg.render.bound * 3**0.5 / self.cfg.render.num_samples


def _density(field, params, blob, x):
  return field.density(params, x, blob)


def _color(field, to_rgb, params, blob, x):
  return to_rgb(field.query(params, x, blob)["color"])


__all__ = ["ParticleSystem", "OptimConfig", "make_optimizer", "view_prompts", "view_scheme",
           "deferred_shading", "State"]
