"""Score Jacobian Chaining (PAAS on a voxel grid): `jax3d generate PROMPT --method sjc`.

Presets:
  toy  the shipped solids-azimuth prior on a laptop CPU: an RGB voxel grid rendered at 32x32,
       K = 4 perturbations per view, view guidance 500 on the azimuth words.
  toy-surface  the toy on an opaque surface: a VolSDF (laplace) grid started from a ball, its β
       annealed 0.1 -> 0.02 over the first half (holes and tips form while β is wide), the
       surface's rate doubled from step 300.
  sd   the official Stable Diffusion setting (pals-ttic/sjc `run_sjc.py`, cited inline): a 100^3
       voxel grid of 4 latent channels rendered at 64x64, Adamax 0.05, 10k steps, CFG 100,
       K = 1, emptiness loss 1e4 x log(1 + 10 w) (x20 from halfway), --prior PATH.
"""

import ml_collections

from jax3d.configs import _common


def get_config(preset=None):
  preset = preset or "toy"
  c = ml_collections.ConfigDict()
  c.method = "sjc"
  c.seed = 0
  # The prior when --prior is not given: a name of jax3d/priors/registry.py or a folder.
  c.prior = "solids"
  c.num_particles = 1
  c.num_steps = 600
  c.views_per_step = 1  # official: one view per step
  c.render_space = "image"  # 'latent' renders the prior's latent channels (SD)
  c.max_memory_gb = 8.0  # refuse voxel grids whose estimated training memory exceeds this

  c.camera = _common.camera(32)
  c.field = ml_collections.ConfigDict(dict(
      kind="voxel",  # or "nerf": the hash-grid NeRF of configs/dreamfusion.py
      voxel=_common.voxel_field(),
      nerf=_common.nerf_field()))
  c.render = ml_collections.ConfigDict(dict(num_samples=64, bound=1.0, stratified=True,
                                            min_near=0.0))
  c.guidance = ml_collections.ConfigDict(dict(
      scale=100.0,  # official CFG scale
      num_perturbations=4,  # K (official SD setting: 1)
      trim_low=30, trim_high=10,  # official `us[30:-10]`
      variance_reduction=True))  # official `var_red`
  _common.view_words(c)
  c.background = (1.0, 1.0, 1.0)  # RGB; for latent renders, the latent of a plain image of it
  c.regularizers = ml_collections.ConfigDict(dict(
      emptiness_weight=1e4, emptiness_scale=10.0,  # official
      emptiness_step=0.5, emptiness_multiplier=20.0,  # official: x20 from halfway
      center_depth_weight=0.0,  # official depth_weight 0 (off)
      center_depth_border=7 / 64,  # official: the outer 7 of 64 pixels
      opacity=0.0, opacity_kind="entropy",  # not in the official code
      eikonal=0.0))  # for a "laplace" (signed-distance) voxel grid; not in the official code
  # Official: Adamax, lr 0.05; the voxel density at lr_grid.
  c.optim = _common.optim("adamax", lr_grid=0.05, lr_mlp=0.05, b1=0.9, b2=0.999, eps=1e-8)
  _common.add_runner(c)

  if preset in ("toy", "toy-surface"):
    # No radius bound: bounding the grid to the framed ball (as SDS does) turned orange red and
    # tori thin (docs/results.md, "Unseen geometry, and the fix").
    # Azimuth words and view guidance pin a cube's turn (docs/results.md, "Cubes").
    c.prior = "solids-azimuth"
    c.guidance.view_scale = 500.0
    # The official 1e4 suits 64x64x4 SD latents and empties 32x32 RGB grids (docs/results.md).
    c.regularizers.emptiness_weight = 1e3
    if preset == "toy-surface":
      # The fog's surface is where ~1 unit of path reaches opacity 0.5, which rounds cubes and
      # fills holes; a surface ends at a level (docs/results.md, "An opaque surface, annealed").
      c.field.voxel.update(density_activation="laplace", density_shift=0.0, init_radius=0.5,
                           feature_init_scale=0.1, density_beta_start=0.1, density_beta=0.02)
      c.regularizers.eikonal = 1e3  # keeps the grid a distance field, its surface smooth
      # Colours at the fog's rate (at 0.01 orange came out red); the surface slowly while β
      # anneals (holes open), then twice as fast (cubes keep their edges).
      c.optim.update(lr_grid=0.05, lr_density=0.01, lr_density_late=0.02,
                     density_switch_step=300)
  elif preset == "sd":
    c.prior = ""  # a Stable Diffusion folder: --prior PATH
    c.num_steps = 10000  # official n_steps
    c.render_space = "latent"
    c.camera.height = c.camera.width = 64  # official rend_hw 64 (SD's latent size)
    c.camera.fov_deg = 60.0  # official FoV 60, radius 1.5
    c.camera.distance, c.camera.distance_jitter = 1.5, 0.0
    c.field.voxel.update(resolution=100, channels=4, feature_activation="identity")
    c.render.num_samples = 200
    c.guidance.num_perturbations = 1  # official bs = 1
    c.preview_every = 500
    c.checkpoint_every = 1000
    c.export.mesh_resolution = 200
    c.export.video_size = 256
  else:
    raise ValueError(f"unknown preset {preset!r}; use toy, toy-surface or sd")
  return c
