"""DreamFusion (SDS on a hash-grid NeRF): `jax3d generate PROMPT --method sds`.

Presets:
  toy  the shipped solids-azimuth prior on a laptop CPU with view guidance: 32x32 renders,
       small hash grid, ~minutes.
  toy-analytic  the toy on the exact analytic prior (analytic:256, CFG 10, azimuth view words).
  sd   Stable Diffusion from a local diffusers folder (--prior PATH): 64x64 renders upsampled
       to 512 for the VAE, guidance 100, 10k steps, hash grid at full Instant-NGP size.
       Values follow the public implementations (threestudio's dreamfusion-sd.yaml and
       stable-dreamfusion), cited inline.
"""

import ml_collections

from jax3d.configs import _common


def get_config(preset=None):
  preset = preset or "toy"
  c = ml_collections.ConfigDict()
  c.method = "sds"
  c.seed = 0
  # The prior when --prior is not given: a name of jax3d/priors/registry.py or a folder.
  c.prior = "solids"
  c.num_particles = 1
  c.num_steps = 600
  c.views_per_step = 2  # cameras rendered per particle per step (batch size)

  c.camera = _common.camera(32)
  c.field = _common.nerf_field()
  c.render = ml_collections.ConfigDict(dict(num_samples=48, bound=1.0, stratified=True,
                                            min_near=0.0))
  # The density blob's strength is scaled from blob_start to blob_end over blob_steps.
  c.blob = ml_collections.ConfigDict(dict(start=1.0, end=1.0, steps=0))
  c.guidance = ml_collections.ConfigDict(dict(
      scale=100.0,  # DreamFusion uses a CFG scale of 100
      max_grad_norm=0.0,  # per-view residual clipping; 0 = off
      # Recompute the VAE encoder in the backward pass: it did not lower SD's peak memory
      # (docs/results.md, "bfloat16 and rematerialisation").
      remat_encoder=False,
      timesteps=ml_collections.ConfigDict(dict(t_min=0.02, t_max=0.98, t_max_end=None,
                                               anneal_steps=0, anneal="linear",
                                               weighting="dreamfusion"))))
  _common.view_words(c)
  # Probabilities of shading modes per view: albedo, lambertian, textureless. The toy renders
  # albedo only: shading needs normals, ~1.4-8x the CPU step (docs/results.md, "Shading").
  c.shading = ml_collections.ConfigDict(dict(
      probs=(1.0, 0.0, 0.0), ambient=0.35, light_jitter=0.3, albedo_warmup_steps=0,
      # "sample": every ray sample's own normal (second order through the field); "surface":
      # one central-difference normal per ray at the expected surface point (first order).
      normals="sample"))
  c.background = (1.0, 1.0, 1.0)  # plain white, as the solids world
  c.regularizers = ml_collections.ConfigDict(dict(orientation=0.0, opacity=0.0,
                                                  opacity_kind="mean"))
  c.optim = _common.optim("adam", lr_grid=1e-2, lr_mlp=1e-3, b1=0.9, b2=0.99, eps=1e-15)
  _common.add_runner(c)

  if preset in ("toy", "toy-analytic"):
    c.field.radius = _common.SOLIDS_RADIUS
    # Mean opacity against what few views see (docs/results.md, "Unseen geometry"); scaled
    # with the guidance scale, as the SDS gradient is.
    c.regularizers.opacity = 1000.0
  if preset == "toy":
    # Azimuth words and view guidance pin a cube's turn (docs/results.md, "Cubes").
    c.prior = "solids-azimuth"
    c.guidance.view_scale = 500.0
  elif preset == "toy-analytic":
    # The exact prior needs CFG 10 and 256 renders per object (docs/results.md, "The
    # analytic prior's halo"); its view words pin the turn without view guidance.
    c.prior = "analytic:256"
    c.guidance.scale = 10.0
    c.regularizers.opacity = 100.0
    c.guidance.view_labels = "azimuth"
    c.guidance.view_scale = 0.0
  elif preset == "sd":
    c.prior = ""  # a Stable Diffusion folder: --prior PATH
    c.num_steps = 10000  # DreamFusion: 15k; threestudio dreamfusion-sd: 10k
    c.views_per_step = 1
    c.camera.height = c.camera.width = 64
    c.camera.distance, c.camera.distance_jitter = 2.0, 0.5  # threestudio camera_distance 1.5-2.0
    c.camera.fov_deg, c.camera.fov_jitter_deg = 55.0, 15.0  # fovy 40-70
    # Instant-NGP's full size: L=16, F=2, T=2^19, resolutions 16..2048.
    c.field.hashgrid.update(num_levels=16, log2_table_size=19, max_resolution=2048)
    c.field.hidden_dim = 64
    c.field.num_hidden_layers = 1
    # threestudio's dreamfusion-sd: density_bias blob_magic3d, scale 10, std 0.5 (the toy too).
    c.field.normal_method = "finite_difference"
    c.field.normal_eps = 1e-2
    c.render.num_samples = 64
    c.guidance.timesteps.t_min = 0.02
    c.guidance.timesteps.t_max = 0.98
    c.shading.probs = (0.2, 0.4, 0.4)  # threestudio: textureless 0.5 after warm-up
    c.shading.ambient = 0.1
    c.shading.albedo_warmup_steps = 1000
    c.regularizers.orientation = 1e-2  # threestudio lambda_orient (ramped there; fixed here)
    c.regularizers.opacity = 1e-3  # lambda_sparsity
    c.optim.lr_grid = 1e-2  # threestudio: encoding lr 0.01, network lr 0.001
    c.optim.lr_mlp = 1e-3
    c.preview_every = 500
    c.checkpoint_every = 1000
    c.export.mesh_resolution = 256
    c.export.video_size = 256
  else:
    raise ValueError(f"unknown preset {preset!r}; use toy, toy-analytic or sd")
  return c


def derived(preset, method: str, presets=("toy", "sd")):
  """DreamFusion's preset of that name (None: toy), one of `presets`, as the base of
  `method`'s config (VSD and Magic3D build on it)."""
  preset = preset or "toy"
  if preset not in presets:
    raise ValueError(f"unknown preset {preset!r}; use {' or '.join(presets)}")
  c = get_config(preset)
  c.method = method
  return c
