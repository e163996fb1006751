"""ProlificDreamer (VSD: P hash-grid NeRF particles and a LoRA network): `jax3d generate PROMPT
--method vsd`.

Presets:
  toy  the shipped solids-azimuth prior on a laptop CPU: DreamFusion's toy field, renders and
       regularizers, 4 particles, CFG 7.5, LoRA rank 4.
  sd   Stable Diffusion from a local diffusers folder (--prior PATH): DreamFusion's sd field
       with the paper's guidance (Wang et al. 2023 and the official thu-ml/prolificdreamer
       code, cited inline).
"""

import ml_collections

from jax3d.configs import dreamfusion


def get_config(preset=None):
  c = dreamfusion.derived(preset, "vsd")
  preset = preset or "toy"
  c.guidance.scale = 7.5  # ProlificDreamer: CFG 7.5 for the pretrained branch
  # t ~ U[0.02, 0.98], the upper end set to 0.5 at anneal_steps (official: 5000 of 25k).
  c.guidance.timesteps.update(t_min=0.02, t_max=0.98, t_max_end=0.5, anneal="step")
  c.lora = ml_collections.ConfigDict(dict(
      rank=4,  # diffusers' default LoRA rank (official lora_unet.py)
      scale=1.0,
      lr=1e-4, weight_decay=0.0, warmup_steps=500,  # official: AdamW 1e-4, 500 warm-up steps
      camera_drop=0.1,  # official: the camera condition zeroed 10 % of the time
      prediction="auto",  # the loss in the LoRA network's own output space
      merged=True,
      remat=False))
  # Plain CFG on the view-suffixed prompt: DreamFusion's view guidance (view_scale 500 in its
  # toy preset) amplifies the view words' own direction, which carries a colour bias, and
  # drives every particle to one colour (docs/results.md, "VSD and view guidance").
  c.guidance.view_scale = 0.0
  if preset == "toy":
    c.num_particles = 4
    # One view per step and 500 steps: P = 4 particles in <= 10 min on a 2-core CPU.
    c.views_per_step = 1
    c.num_steps = 500
    c.guidance.timesteps.anneal_steps = 100  # the official 1/5 of the run
    c.export.video_frames = 24  # four turntables: export is ~1 s per 128² frame on CPU
    # The mean-opacity weight scales with the guidance scale, as the gradient does (SDS: 1000
    # at CFG 100).
    c.regularizers.opacity = 75.0
    c.lora.lr = 1e-3  # 600 steps, not 25k
    c.lora.warmup_steps = 50
  else:
    c.num_particles = 4
    c.num_steps = 25000  # official stage-1 iterations
    c.lora.remat = True  # the LoRA UNet's activations
    c.guidance.remat_encoder = True  # the VAE encoder's activations at 512²
    c.guidance.timesteps.anneal_steps = 5000  # official t5_iters
  return c
