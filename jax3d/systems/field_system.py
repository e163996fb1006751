"""A population of radiance fields distilled from a 2D prior: what SDS and SJC share.

`FieldSystem` completes `base.PopulationSystem` for methods whose particles are radiance
fields (fields/radiance.py): the prompt's embeddings per view label, an optimizer with grid and
MLP learning rates, training renders whose rays are split over the mesh's `views` axis,
deterministic renders for previews and turntables, and marching-cubes meshes for export. A
subclass adds `particle_loss`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Annotated, Any, Callable

import jax
import jax.numpy as jnp

from jax3d import cameras
from jax3d.configuration import Range
from jax3d.errors import UserError
from jax3d.export import mesh as mesh_lib
from jax3d.fields import radiance
from jax3d.priors.base import Prior
from jax3d.render import fields as render_fields
from jax3d.render import shading
from jax3d.render import volume
from jax3d.systems import base
from jax3d.systems import settings
from jax3d.train import sharding

AUTO_VIEW_LABELS = "auto"  # guidance.view_labels: the prior's first view scheme


@dataclasses.dataclass(frozen=True)
class ViewWords:
  """Which view words suffix the prompt per camera (cameras.VIEW_SCHEMES, or 'auto': the
  prior's own), and the scale of their own direction (view guidance, `Prior.eps`; 0 = off)."""
  view_dependent_prompt: bool
  view_labels: str
  view_scale: float

  def __post_init__(self):
    if self.view_labels != AUTO_VIEW_LABELS:
      cameras.check_view_scheme(self.view_labels)
    if self.view_scale < 0:
      raise UserError(f"guidance.view_scale must be >= 0 (0 = off), got {self.view_scale}")


@dataclasses.dataclass(frozen=True)
class FieldRunConfig(settings.RunConfig):
  """The settings every `FieldSystem` reads besides `guidance` (a `ViewWords`) and its field."""
  views_per_step: Annotated[int, Range(1, 4096)]  # cameras rendered per particle per step
  camera: cameras.CameraConfig
  render: volume.RenderConfig
  background: tuple[float, float, float]  # what empty rays composite to (RGB)
  optim: settings.OptimConfig



def view_prompts(prompt: str, view_dependent: bool, scheme: str) -> list[str]:
  """The prompt per view label of `scheme` (`cameras.view_labels` order), suffixed when
  view-dependent."""
  return [prompt + (cameras.view_suffix(v) if view_dependent else "")
          for v in cameras.view_labels(scheme)]


class FieldSystem(base.PopulationSystem):
  """Radiance-field particles; the config is a `FieldRunConfig` with a `guidance` that is a
  `ViewWords`."""

  # Whether renders for export light the colour (an albedo field) or show it as it is.
  shades_renders = False
  ambient = shading.DEFAULT_AMBIENT

  def __init__(self, prompt: str, config: FieldRunConfig, prior: Prior,
               field: radiance.Field, mesh=None):
    super().__init__(config, prior, mesh)
    words = config.guidance
    scheme = prior.view_schemes[0] if words.view_labels == AUTO_VIEW_LABELS else (
        words.view_labels)
    if words.view_dependent_prompt and scheme not in prior.view_schemes:
      raise UserError(
          f"the {prior.name} prior was trained with view labels "
          f"{', '.join(prior.view_schemes)}, not {scheme}; set "
          f"--config.guidance.view_labels={prior.view_schemes[0]} or use a prior that knows "
          f"{scheme} (the analytic prior knows every scheme)")
    self.prompt = prompt
    self.view_scheme = scheme
    self.field = field
    self.particle_tx = settings.make_optimizer(config.optim, field.labels)
    self.background = jnp.asarray(config.background, jnp.float32)  # what empty rays composite
    # Embeddings per view label, of the bare prompt (view guidance) and the unconditional one.
    self.conds = {"views": prior.embed(view_prompts(prompt, words.view_dependent_prompt,
                                                    scheme)),
                  "plain": prior.embed([prompt]), "uncond": prior.uncond(1)}

  def step_inputs(self) -> Any:
    return {"prior": self.prior.params, "conds": self.conds}

  def init_particle(self, key: jax.Array) -> Any:
    return self.field.init(key)

  # ---- pieces of a particle's loss ----
  def sample_views(self, key: jax.Array) -> tuple[cameras.Camera, jax.Array]:
    """The step's cameras (V,) and their view-label indices."""
    cams = cameras.sample(key, self.config.views_per_step, self.config.camera)
    az, el, _ = cameras.to_spherical(cams)
    return cams, cameras.view_index(az, el, self.view_scheme)

  def guidance_embeddings(self, conds, view: jax.Array):
    """(cond, uncond, plain) for views with label indices `view` (V,); plain, the bare prompt
    for `Prior.eps`'s view guidance (which ignores it at view scale 0), is None when the
    prompts carry no view words."""
    v = view.shape[0]
    uncond = jnp.broadcast_to(conds["uncond"], (v,) + conds["uncond"].shape[1:])
    plain = (jnp.broadcast_to(conds["plain"], uncond.shape)
             if self.config.guidance.view_dependent_prompt else None)
    return conds["views"][view], uncond, plain

  def render_views(self, params, cams: cameras.Camera, key: jax.Array, step=0,
                   **kwargs) -> dict[str, jax.Array]:
    """Training renders of cameras (V,) (render.fields.render_views), rays split over the
    mesh's `views` axis."""
    return render_fields.render_views(
        self.field, params, cams, key, self.config.render, self.background,
        self.density_schedule(step),
        split_rays=functools.partial(sharding.split_rays, mesh=self.mesh), **kwargs)

  def density_schedule(self, step) -> jax.Array:
    """The field's step-dependent density control at `step`, passed to every query: the
    NeRF's blob strength (DreamFusion), the laplace voxel grid's β multiplier (SJC); 1 where
    the field has none."""
    del step
    return jnp.ones((), jnp.float32)

  # ---- one trained particle (previews, export) ----
  @functools.cached_property
  def _render_view(self) -> Callable:
    @functools.partial(jax.jit, static_argnames=("height", "width", "mode"))
    def render(params, prior_params, c2w, fov, height, width, mode, schedule):
      cam = cameras.Camera(c2w=c2w, fov_y=fov, height=height, width=width)
      out = render_fields.render_view(self.field, params, cam, self.config.render,
                                      self.background, schedule,
                                      mode if self.shades_renders else None, self.ambient)
      return {"rgb": self.image(prior_params, out["color"]), "normal": out["normal"],
              "opacity": out["opacity"]}
    return render

  @functools.cached_property
  def _render_prior_params(self):
    return jax.device_put(self.prior.params, self.render_device)

  def image(self, prior_params, color: jax.Array) -> jax.Array:
    """A rendered colour map (H, W, C) as an RGB image in [0, 1]."""
    del prior_params
    return jnp.clip(color, 0.0, 1.0)

  def render_params(self, params, camera: cameras.Camera, step: int,
                    mode: str = "lambertian") -> dict[str, jax.Array]:
    """Deterministic render of one particle's params from one camera (`System.render`)."""
    return self._render_view(params, self._render_prior_params, camera.c2w, camera.fov_y,
                             camera.height, camera.width, shading.shading_index(mode),
                             self.density_schedule(step))

  def render(self, state: base.State, particle: int, camera: cameras.Camera,
             step: int) -> dict[str, jax.Array]:
    return self.render_params(self.particle_params(state, particle), camera, step)

  # Partial's function is part of a jit cache key: build each one once per system.
  @functools.cached_property
  def _density_base(self):
    return functools.partial(_density, self.field)

  @functools.cached_property
  def _color_base(self):
    return functools.partial(_color, self.field, self.vertex_rgb)

  def density_fn(self, params, step: int):
    """σ(x) of one particle as a jit-friendly `Partial` over its params."""
    return jax.tree_util.Partial(self._density_base, params, self.density_schedule(step))

  def vertex_rgb(self, color: jax.Array) -> jax.Array:
    """A field colour (..., C) as mesh vertex RGB in [0, 1]."""
    return color

  def export_mesh(self, state: base.State, particle: int, step: int,
                  level: float | None = None) -> mesh_lib.MeshData:
    """Marching cubes of the particle's density at `level`, else at the config's
    `export.mesh_level` when positive, else at the level whose silhouettes match the renders'
    opacity (`export.mesh.level_matching_renders`)."""
    params = self.particle_params(state, particle)
    e = self.config.export
    if level is None and e.mesh_level > 0:
      level = float(e.mesh_level)
    density = self.density_fn(params, step)
    rule = None
    if level is None:
      level, iou = mesh_lib.level_matching_renders(
          lambda cam: self.render_params(params, cam, step)["opacity"], density,
          self.config.render.bound)
      rule = f"matches the rendered opacity > 0.5 silhouettes of 8 views (IoU {iou:.3f})"
    step_size = 2.0 * self.config.render.bound * 3**0.5 / self.config.render.num_samples
    mesh = mesh_lib.extract_mesh(
        density, jax.tree_util.Partial(self._color_base, params, self.density_schedule(step)),
        self.config.render.bound, resolution=e.mesh_resolution, level=level,
        step_size=step_size)
    return mesh if rule is None else dataclasses.replace(mesh, level_rule=rule)


def _density(field, params, schedule, x):
  return field.density(params, x, schedule)


def _color(field, to_rgb, params, schedule, x):
  return to_rgb(field.query(params, x, schedule)["color"])


__all__ = ["FieldSystem", "FieldRunConfig", "ViewWords", "view_prompts", "AUTO_VIEW_LABELS"]
