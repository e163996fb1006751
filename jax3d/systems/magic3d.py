"""Magic3D (Lin et al. 2023): a coarse hash-grid NeRF, then a fine textured mesh.

Stage 1, coarse: DreamFusion's SDS on the hash-grid NeRF (`Magic3D` is `DreamFusion` on this
config, so everything of systems/dreamfusion.py holds).
Stage 2, fine (`MeshStage`), per particle: a deformable tetrahedral grid (fields/dmtet.py)
whose SDF starts from the coarse density at the coarse mesh's level,
  sdf = clip(−(σ_coarse(x) − level)·sdf_scale, −1, 1),
without the coarse field's floaters (inside regions smaller than `min_component_fraction` of
the largest; threestudio removes them from the coarse mesh the same way),
textured by the coarse NeRF's albedo (its params keep training). One step:
  mesh  = marching_tetrahedra(sdf, x_grid + h·s·tanh(deform))   (static shapes, a face mask)
  image = rasterize(mesh) at fine.render_size, albedo(x) at each pixel's surface point,
          silhouettes antialiased (render/raster.py)
  L = SDS(image; CFG, t ∈ [t_min, t_max]) + λ_nc · normal consistency + λ_lap · Laplacian
and Adam on (sdf, deform, texture). `fine.max_faces` faces are kept per step (static); the
step reports how many were dropped ('faces_dropped') and how many tile slots overflowed
('raster_dropped'): both should stay 0.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Annotated, Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jax3d import cameras
from jax3d.configuration import Range
from jax3d.errors import UserError
from jax3d.export import mesh as mesh_lib
from jax3d.fields import dmtet
from jax3d.fields import radiance
from jax3d.guidance import sds
from jax3d.guidance import timesteps as timesteps_lib
from jax3d.priors.base import Prior
from jax3d.render import raster
from jax3d.systems import base
from jax3d.systems import dreamfusion
from jax3d.systems import field_system
from jax3d.systems import settings
from jax3d.train import memory
from jax3d.train import sharding


@dataclasses.dataclass(frozen=True)
class FineGuidance:
  scale: float  # classifier-free guidance
  timesteps: timesteps_lib.TimestepConfig


@dataclasses.dataclass(frozen=True)
class FineRegularizers:
  normal_consistency: Annotated[float, Range(0)]
  laplacian: Annotated[float, Range(0)]


@dataclasses.dataclass(frozen=True)
class Fine:
  """The mesh stage (configs/magic3d.py)."""
  num_steps: Annotated[int, Range(1)]
  render_size: Annotated[int, Range(8, 4096)]
  views_per_step: Annotated[int, Range(1, 4096)]
  grid: dmtet.DMTetConfig
  sdf_level: float  # <= 0: the coarse mesh's own level
  sdf_scale: Annotated[float, Range(0, lo_open=True)]
  # Inside regions of the initial SDF smaller than this fraction of the largest are dropped.
  min_component_fraction: Annotated[float, Range(0, 1)]
  max_faces: Annotated[int, Range(1)]
  raster_capacity: Annotated[int, Range(1)]
  guidance: FineGuidance
  regularizers: FineRegularizers
  optim: settings.OptimConfig


@dataclasses.dataclass(frozen=True)
class Config(dreamfusion.Config):
  """A Magic3D run: the coarse stage's DreamFusion settings and the fine stage's."""
  fine: Fine


def fine_run_config(config: Config) -> Config:
  """`config` with the run-level settings the fine stage overrides (steps, views, image size,
  guidance, optimizer) replaced by `config.fine`'s."""
  f = config.fine
  return dataclasses.replace(
      config, num_steps=f.num_steps, views_per_step=f.views_per_step,
      camera=dataclasses.replace(config.camera, height=f.render_size, width=f.render_size),
      guidance=dataclasses.replace(config.guidance, scale=f.guidance.scale,
                                   timesteps=f.guidance.timesteps),
      optim=f.optim)


class Magic3D(dreamfusion.DreamFusion):
  """The coarse stage (DreamFusion on this config); `next_stage` builds the fine one."""

  Config = Config
  stage = "coarse"

  def __init__(self, prompt: str, config: Config, prior: Prior, mesh=None):
    super().__init__(prompt, config, prior, mesh)
    # Refuse a fine grid that cannot fit before the coarse stage trains.
    budget = memory.device_bytes(list(self.mesh.local_devices))
    if budget is not None:
      texture = jax.eval_shape(self.field.init, jax.random.key(0))
      dmtet.check_memory(config.fine.grid, budget,
                         sum(x.size for x in jax.tree.leaves(texture)))

  def next_stage(self, state: base.State, levels) -> MeshStage:
    """The fine stage of this run, its particles initialised from `state`'s (the trained
    coarse population, every particle on this host) at the coarse meshes' density `levels`
    (one per particle)."""
    return MeshStage(self, state.particles["params"], levels)


class MeshStage(field_system.FieldSystem):
  """The fine stage: DMTet meshes textured by the coarse NeRFs, rasterized."""

  Config = Config
  stage = "fine"

  def __init__(self, coarse: Magic3D, coarse_params, levels):
    config = fine_run_config(coarse.config)
    texture = radiance.NeRFField(config.field)
    super().__init__(coarse.prompt, config, coarse.prior, texture, coarse.mesh)
    f = config.fine
    self.coarse_schedule = coarse.density_schedule(coarse.config.num_steps)
    self.coarse_params = coarse_params
    levels = np.asarray(levels, np.float32)
    if levels.shape != (config.num_particles,):
      raise ValueError(f"need one coarse level per particle, got {levels.shape}")
    self.levels = levels if f.sdf_level <= 0 else np.full_like(levels, f.sdf_level)
    self.grid = dmtet.tet_grid(f.grid.resolution, f.grid.bound)
    self.particle_tx = settings.make_optimizer(f.optim, self.labels)
    sdf = np.array(jax.jit(jax.vmap(self._sdf, in_axes=(0, 0, None)))(
        coarse_params, jnp.asarray(self.levels), jnp.asarray(self.grid.vertices)))
    for k in range(sdf.shape[0]):
      sdf[k], _ = dmtet.drop_small_interiors(sdf[k], f.grid.resolution,
                                             f.min_component_fraction)
      inside = int(np.sum(sdf[k] < 0))
      if not 0 < inside < sdf.shape[1]:
        raise UserError(f"particle {k}'s coarse density gives no surface at level "
                        f"{self.levels[k]:.4g} ({'every' if inside else 'no'} tet-grid vertex "
                        f"inside): the coarse stage learned no object; rerun it longer or set "
                        f"fine.sdf_level")
    self.initial_sdf = sdf

  def labels(self, params) -> Any:
    return {"sdf": "grid", "deform": "grid", "texture": self.field.labels(params["texture"])}

  def step_inputs(self) -> Any:
    return dict(super().step_inputs(), grid=self.grid)

  # ---- the population, from the coarse one ----
  def _sdf(self, texture, level, vertices):
    density = functools.partial(self.field.density, texture, schedule=self.coarse_schedule)
    return dmtet.init_sdf_from_density(density, vertices, level, self.config.fine.sdf_scale)

  def _from_coarse(self, texture, sdf):
    params = {"sdf": sdf, "deform": jnp.zeros(self.grid.vertices.shape, jnp.float32),
              "texture": texture}
    return {"params": params, "opt_state": self.particle_tx.init(params)}

  def init(self, key: jax.Array, particle_ids=None) -> base.State:
    """Particle k: the coarse particle k's density as SDF (without its floaters), its NeRF as
    texture."""
    del key
    n = self.config.num_particles
    ids = jnp.arange(n) if particle_ids is None else jnp.asarray(particle_ids)
    particles = jax.jit(jax.vmap(self._from_coarse))(self.coarse_params,
                                                     jnp.asarray(self.initial_sdf))
    particles["particle_id"] = ids.astype(jnp.int32)
    return sharding.place(base.State(particles=particles, shared={},
                                     step=jnp.zeros((), jnp.int32)), self.mesh)

  # ---- the mesh and its renders ----
  def surface(self, params, grid: dmtet.TetGrid):
    """(vertices (Ne, 3), faces (max_faces, 3), which faces are real (max_faces,), faces
    dropped ()): the valid faces first, padded with (0, 0, 0), which draws nothing."""
    f = self.config.fine
    vertices, faces, mask = dmtet.extract(params, grid, f.grid)
    count = jnp.sum(mask)
    index = jnp.nonzero(mask, size=f.max_faces, fill_value=0)[0]
    keep = jnp.arange(f.max_faces) < count
    return (vertices, jnp.where(keep[:, None], faces[index], 0), keep,
            jnp.maximum(count - f.max_faces, 0))

  def texture_fn(self, params) -> Callable[[jax.Array], jax.Array]:
    """Colour at surface points: the particle's texture NeRF (a pytree, so it can cross jit)."""
    return jax.tree_util.Partial(self._texture_base, self.coarse_schedule, params["texture"])

  def rasterize(self, params, vertices, faces, neighbors, cam: cameras.Camera):
    return raster.render_mesh(vertices, faces, None, cam, self.background,
                              texture=self.texture_fn(params),
                              capacity=self.config.fine.raster_capacity,
                              cull_backfaces=True, neighbors=neighbors)

  def rasterize_views(self, params, cams: cameras.Camera, grid: dmtet.TetGrid):
    """Training renders of cameras (V,): (raster outputs with leading V, the surface as
    `surface` gives it)."""
    vertices, faces, mask, dropped = self.surface(params, grid)
    neighbors = raster.edge_neighbors(faces)
    out = jax.vmap(lambda cam: self.rasterize(params, vertices, faces, neighbors, cam))(cams)
    return out, (vertices, faces, mask, dropped)

  def particle_loss(self, params, shared_params, key, step, inputs):
    del shared_params
    cfg, f = self.config, self.config.fine
    k_cam, k_t, k_noise = jax.random.split(key, 3)
    cams, view = self.sample_views(k_cam)
    out, (vertices, faces, mask, dropped) = self.rasterize_views(params, cams, inputs["grid"])
    t = timesteps_lib.sample(k_t, cfg.guidance.timesteps, self.prior.num_train_timesteps,
                             view.shape, step)
    cond, uncond, plain = self.guidance_embeddings(inputs["conds"], view)
    g = cfg.guidance
    loss_sds, aux = sds.sds_loss(self.prior, inputs["prior"], k_noise, out["rgb"], t, cond,
                                 uncond, g.scale, g.timesteps.weighting, None, plain,
                                 g.view_scale)
    loss_nc = dmtet.normal_consistency(vertices, faces, mask)
    loss_lap = dmtet.laplacian_loss(vertices, faces, mask)
    r = f.regularizers
    loss = loss_sds + r.normal_consistency * loss_nc + r.laplacian * loss_lap
    metrics = {"loss": loss, "loss_sds": loss_sds, "loss_normal_consistency": loss_nc,
               "loss_laplacian": loss_lap, "mean_opacity": jnp.mean(out["opacity"]),
               "num_faces": jnp.sum(mask).astype(jnp.float32),
               "faces_dropped": dropped.astype(jnp.float32),
               "raster_dropped": jnp.sum(out["overflow"]).astype(jnp.float32),
               "t": jnp.mean(t.astype(jnp.float32)) / self.prior.num_train_timesteps,
               "residual_norm": aux["residual_norm"]}
    return loss, (metrics, None)

  def step_parts(self, state: base.State, key: jax.Array) -> base.StepParts:
    cams, view = self.sample_views(key)
    cond, uncond, plain = self.guidance_embeddings(self.inputs["conds"], view)
    t = jnp.full(view.shape, self.prior.num_train_timesteps // 2, jnp.int32)
    g = self.config.guidance
    grid = self.inputs["grid"]

    return base.StepParts(
        render=lambda params, k: self.rasterize_views(params, cams, grid)[0]["rgb"],
        guidance=lambda pp, x0, k: sds.sds_residual(
            self.prior, pp, k, x0, t, cond, uncond, g.scale, plain=plain,
            view_scale=g.view_scale)[0])

  # ---- one trained particle (previews, export) ----
  @functools.cached_property
  def _render_one(self) -> Callable:
    @functools.partial(jax.jit, static_argnames=("height", "width"))
    def render(params, grid, c2w, fov, height, width):
      cam = cameras.Camera(c2w=c2w, fov_y=fov, height=height, width=width)
      vertices, faces, _, _ = self.surface(params, grid)
      out = self.rasterize(params, vertices, faces, raster.edge_neighbors(faces), cam)
      return {"rgb": jnp.clip(out["rgb"], 0.0, 1.0), "normal": out["normal"],
              "opacity": out["opacity"]}
    return render

  @functools.cached_property
  def _render_grid(self) -> dmtet.TetGrid:
    return jax.device_put(self.grid, self.render_device)

  def render_params(self, params, camera: cameras.Camera, step: int,
                    mode: str = "albedo") -> dict[str, jax.Array]:
    del step, mode
    return self._render_one(params, self._render_grid, camera.c2w, camera.fov_y,
                            camera.height, camera.width)

  @functools.cached_property
  def _texture_base(self):  # A Partial's function is part of a jit cache key: build it once.
    return functools.partial(_texture, self.field)

  @functools.cached_property
  def _extract(self) -> Callable:
    return jax.jit(lambda params, grid: dmtet.extract(params, grid, self.config.fine.grid))

  def export_mesh(self, state: base.State, particle: int, step: int,
                  level: float | None = None) -> mesh_lib.MeshData:
    """The particle's marching-tetrahedra mesh (all its faces), coloured by its texture."""
    if level is not None:
      raise UserError("a Magic3D fine mesh is the SDF's zero set; --level applies to density "
                      "fields (drop it)")
    params = self.particle_params(state, particle)
    vertices, faces = dmtet.compact_mesh(*self._extract(params, self._render_grid))
    if faces.shape[0] == 0:
      raise UserError("the fine stage's SDF has no zero crossing (an empty mesh); rerun the "
                      "coarse stage or lower fine.sdf_level")
    colors = mesh_lib.evaluate_points(self.texture_fn(params), vertices)
    return mesh_lib.MeshData(vertices=vertices, faces=faces,
                             colors=np.clip(colors, 0.0, 1.0).astype(np.float32), level=0.0,
                             level_rule="the fine stage's SDF zero set (marching tetrahedra)")


def _texture(field, schedule, params, x):
  return field.query(params, x, schedule)["color"]


__all__ = ["Magic3D", "MeshStage", "Config", "Fine", "fine_run_config"]
