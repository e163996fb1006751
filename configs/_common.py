"""Config groups every distillation method shares (cameras, the hash-grid NeRF, runner
cadence, export), so presets differ only where the methods do."""

import dataclasses

import ml_collections

from jax3d.solids import scenes

# The toy presets' field radius: no density beyond the ball the toy cameras frame (2·sin 20° ≈
# 0.68) plus a margin for the solids (≤ 0.69); docs/results.md, "Unseen geometry".
SOLIDS_RADIUS = 0.75


def camera(size: int = 32) -> ml_collections.ConfigDict:
  """The solids world's orbit camera distribution (distance 2 ± 0.1, fov 40°), size² pixels."""
  return ml_collections.ConfigDict(dataclasses.asdict(scenes.camera_config(size)))


def nerf_field() -> ml_collections.ConfigDict:
  """A CPU-sized hash-grid NeRF for 32x32 renders: 8 levels up to 128^3, 2^14 entries per level,
  with Magic3D's linear density blob (threestudio's blob_magic3d: scale 10, radius 0.5)."""
  return ml_collections.ConfigDict(dict(
      hashgrid=ml_collections.ConfigDict(dict(
          num_levels=8, features_per_level=2, log2_table_size=14, base_resolution=16,
          max_resolution=128)),
      bound=1.0, radius=0.0, hidden_dim=32, num_hidden_layers=1,
      density_activation="softplus", blob_kind="linear", blob_density=10.0, blob_radius=0.5,
      # Render normals: central differences at the expected surface point, ~3 finest cells.
      normal_method="analytic", normal_eps=0.04))


def voxel_field() -> ml_collections.ConfigDict:
  """SJC's dense voxel grid (fields/voxel.py) at a CPU size: 64^3 RGB through a sigmoid, the
  official softplus density with shift -1 (pals-ttic/sjc), no radius bound."""
  return ml_collections.ConfigDict(dict(
      resolution=64, channels=3, bound=1.0, radius=0.0, density_shift=-1.0,
      density_activation="softplus", feature_activation="sigmoid", feature_init_scale=1.0,
      # The "laplace" (VolSDF) activation: its β, a start ball, β annealed from a start.
      density_beta=0.03, init_radius=0.0, density_beta_start=0.0, beta_anneal=0.5))


def optim(name: str, *, lr_grid: float, lr_mlp: float, b1: float, b2: float,
          eps: float) -> ml_collections.ConfigDict:
  """The optimizer group (systems/settings.py, OptimConfig): `name` ('adam' or 'adamax') with
  rates for the field's grid and MLP; a voxel density's own rates and gradient clipping off."""
  return ml_collections.ConfigDict(dict(
      name=name, lr_grid=lr_grid, lr_mlp=lr_mlp, b1=b1, b2=b2, eps=eps, grad_clip=0.0,
      # The voxel density's rate (0: lr_grid), and from density_switch_step on
      # lr_density_late (0: no switch).
      lr_density=0.0, lr_density_late=0.0, density_switch_step=0))


def view_words(c: ml_collections.ConfigDict) -> None:
  """The guidance keys for view-dependent prompts (systems/field_system.py, ViewWords)."""
  c.guidance.view_dependent_prompt = True
  # DreamFusion's front/side/back/overhead, "azimuth" (12 sectors of 30°) or "auto": the
  # prior's own scheme.
  c.guidance.view_labels = "auto"
  # View guidance (Prior.eps): the view words' own direction gets this scale; 0 = off.
  c.guidance.view_scale = 0.0


def add_runner(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Logging, preview and checkpoint cadence, and the final export (mesh + turntable)."""
  c.log_every = 20
  c.preview_every = 200
  c.checkpoint_every = 200
  c.export = ml_collections.ConfigDict(dict(
      mesh_resolution=96, mesh_level=-1.0,  # -1: the renderer-consistent automatic level
      video_frames=36, video_size=128, video_elevation=15.0, video_fps=12.0))
  return c
