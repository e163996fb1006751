"""Magic3D (coarse hash-grid NeRF, then a fine textured DMTet mesh): `--method magic3d`.

The coarse stage is DreamFusion's SDS on the hash-grid NeRF with the same preset's settings
(configs/dreamfusion.py); `fine` holds the mesh stage's own.

Presets:
  toy  the shipped solids-azimuth prior on a laptop CPU: the SDS toy coarse stage at 32x32,
       then a 32^3-cell tet grid rasterized at 64x64 (averaged down to the prior's 32x32).
  toy-analytic  the toy on the exact analytic prior (dreamfusion:toy-analytic, CFG 10).
  sd   Stable Diffusion (--prior PATH) with threestudio's magic3d-coarse-sd / magic3d-refine-sd
       settings, cited inline: 10k coarse steps at 64x64, a 128^3 tet grid rasterized at 512.
"""

import ml_collections

from jax3d.configs import _common
from jax3d.configs import dreamfusion


def get_config(preset=None):
  c = dreamfusion.derived(preset, "magic3d", ("toy", "toy-analytic", "sd"))
  preset = preset or "toy"
  c.fine = ml_collections.ConfigDict(dict(
      num_steps=300,
      render_size=64,  # rasterized at this size, resized to the prior's input
      views_per_step=2,
      # The tet grid: N^3 cells over the coarse field's box; offsets up to deform_scale cells.
      grid=ml_collections.ConfigDict(dict(resolution=32, bound=1.0, deform_scale=0.15)),
      # SDF init from the coarse density: clip(-(sigma - level) * sdf_scale, -1, 1); level <= 0
      # takes the coarse mesh's own level (the one whose silhouettes match its renders).
      sdf_level=-1.0, sdf_scale=1.0,
      # Floaters: inside regions under this fraction of the largest one are dropped at the start
      # (threestudio: isosurface_remove_outliers, 1% of the faces).
      min_component_fraction=0.01,
      max_faces=16384,  # faces kept per step (static); more are dropped and counted
      raster_capacity=256,  # triangles per 8x8 tile (static); more are dropped and counted
      guidance=ml_collections.ConfigDict(dict(
          scale=100.0,  # threestudio magic3d-refine-sd: guidance_scale 100
          timesteps=ml_collections.ConfigDict(dict(
              t_min=0.02, t_max=0.5,  # refine: min_step_percent 0.02, max_step_percent 0.5
              t_max_end=None, anneal_steps=0, anneal="linear", weighting="uniform")))),
      regularizers=ml_collections.ConfigDict(dict(
          normal_consistency=1e4,  # threestudio lambda_normal_consistency 1e4
          laplacian=0.0)),
      # SDF and deformation are the "grid" leaves, the texture NeRF's hash table too; its MLP
      # the "mlp" ones (threestudio refine: lr 0.01 for geometry and texture).
      optim=_common.optim("adam", lr_grid=1e-2, lr_mlp=1e-3, b1=0.9, b2=0.99, eps=1e-15)))
  if preset in ("toy", "toy-analytic"):
    c.num_steps = 400  # the coarse stage; the fine stage refines its shape
    # Against this SDS gradient 1e4 barely smooths (a red cube: silhouette IoU 0.850 -> 0.890
    # at 1e6, no better at 1e7; docs/results.md, "Magic3D").
    c.fine.regularizers.normal_consistency = 1e6
  if preset == "toy-analytic":
    # The exact prior at CFG 10 (dreamfusion:toy-analytic); the fine stage's guidance and
    # smoothing scaled with it, as the opacity penalty is there.
    c.fine.guidance.scale = 10.0
    c.fine.regularizers.normal_consistency = 1e5
  if preset == "sd":
    c.fine.num_steps = 5000  # refine: max_steps 5000
    c.fine.render_size = 512  # refine: 512x512
    c.fine.views_per_step = 1
    c.fine.grid.resolution = 128  # isosurface_resolution 128
    c.fine.max_faces = 262144
    c.fine.raster_capacity = 512
  return c
