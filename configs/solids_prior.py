"""Training the shipped solids prior (`jax3d train-prior`).

Presets:
  default  the shipped model: sized to reach the quality bar in <= 90 min on a 2-core CPU
           (docs/architecture.md: cross-attention at full resolution dominates CPU step time,
           so it sits only in the lowest block and the mid block).
  tiny     a few steps of a tiny network, for tests.
"""

import ml_collections


def get_config(preset=None):
  preset = preset or "default"
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(
      resolution=32,
      # >= 64 channels everywhere: diffusers' Flax UNet fixes GroupNorm at 32 groups, and with
      # 32 channels each group is one channel, an instance norm that erases every channel's
      # spatial mean: the v0 model (32, 64, 64) could not predict the mean (DC) of eps, so its
      # samples came out tinted (model card).
      block_out_channels=(64, 96, 96),
      down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
      layers_per_block=1,
      attention_head_dim=8,
      text_hidden=64,
      text_layers=2,
      text_heads=4,
      max_length=16,
      # DDPM's linear schedule: its alpha_bar_T ~ 4e-5 fully noises a pixel image. SD's
      # scaled-linear one (alpha_bar_T ~ 5e-3) left sqrt(alpha_bar_T) ~ 0.07 of the image in x_T,
      # so samples drawn from pure noise lost the white background (model card, version 0).
      beta_schedule="linear",
      beta_start=0.0001,
      beta_end=0.02,
      num_train_timesteps=1000,
  ))
  c.data = ml_collections.ConfigDict(dict(
      views_per_object=192,  # 30 objects x 192 = 5760 renders
      supersample=2,
      hflip=True,  # every solid and the camera-side light are mirror-symmetric
      drop=0.1, colourless=0.3, view_suffix=0.5, other_article=0.2,
      # Caption view words (jax3d/cameras.py): DreamFusion's front/side/back/overhead, or
      # "azimuth" (12 sectors of 30°), which pins a symmetric solid's orientation per view.
      view_labels="dreamfusion",
  ))
  c.train = ml_collections.ConfigDict(dict(
      num_steps=4000,
      batch_size=64,
      learning_rate=1e-3,
      end_learning_rate=1e-4,
      warmup_steps=200,
      grad_clip=1.0,
      ema_decay=0.999,
      # A trained prior to start from ('solids' or a folder): fine-tuning, e.g. the shipped
      # prior onto data.view_labels=azimuth captions. "" trains from scratch.
      init_from="",
  ))
  c.log_every = 25
  c.checkpoint_every = 250
  c.sample_every = 500
  c.sample_guidance_scale = 10.0  # the shipped default (model card: chosen among 3, 5, 8, 10)
  if preset == "default":
    pass
  elif preset == "tiny":
    c.model.block_out_channels = (32, 32)
    c.model.down_block_types = ("DownBlock2D", "CrossAttnDownBlock2D")
    c.model.up_block_types = ("CrossAttnUpBlock2D", "UpBlock2D")
    c.model.resolution = 16
    c.model.text_hidden = 32
    c.model.text_layers = 1
    c.data.views_per_object = 2
    c.data.supersample = 1
    c.train.num_steps = 6
    c.train.batch_size = 4
    c.train.warmup_steps = 1
    c.log_every = 1
    c.checkpoint_every = 3
    c.sample_every = 0
  else:
    raise ValueError(f"unknown preset {preset!r}; use default or tiny")
  return c
