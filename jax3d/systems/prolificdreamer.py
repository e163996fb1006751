"""ProlificDreamer: a population of hash-grid NeRFs trained by Variational Score Distillation.

One step (Wang et al. 2023, Algorithm 1), for every particle at once rather than one drawn
particle per step as in the official code:
  per particle (vmapped, split over the mesh's `particles` axis): render V views, noise them,
    g = w(t)(ε̂_pretrained,CFG(x_t; y_view) − ε̂_lora(x_t; y, c)), push g into the particle
    (guidance.vsd), plus DreamFusion's regularizers;
  once for the population: one AdamW step of the LoRA adapters and the camera MLP on the
    diffusion loss of every particle's detached renders (its gradient a mean over particles,
    reduced across devices by XLA).
The LoRA network is the prior's UNet with rank-r adapters and a camera embedding added to its
time embedding (priors.lora); it is the population's shared state.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import jax
import jax.numpy as jnp
import optax

from jax3d import cameras
from jax3d.configuration import Range
from jax3d.errors import UserError
from jax3d.guidance import vsd
from jax3d.priors import lora
from jax3d.priors.base import Prior
from jax3d.systems import dreamfusion

PREDICTIONS = ("auto",) + vsd.PREDICTIONS


@dataclasses.dataclass(frozen=True)
class Lora:
  """The LoRA network and its optimizer."""
  rank: Annotated[int, Range(1, 1024)]
  scale: float  # s in W + s·A·B (α/r)
  lr: Annotated[float, Range(0, lo_open=True)]  # AdamW
  weight_decay: Annotated[float, Range(0)]
  warmup_steps: Annotated[int, Range(0)]  # linear learning-rate warm-up
  camera_drop: Annotated[float, Range(0, 1)]  # probability a camera is zeroed in its loss
  prediction: str  # "auto" (the prior's own), "epsilon" or "v_prediction": the loss's space
  merged: bool  # W + s·A·B inside the call (True) or the adapters applied beside W
  # Recompute the LoRA network's activations in its update's backward pass (jax.checkpoint):
  # less memory for one more forward (the encoder's: `guidance.remat_encoder`).
  remat: bool

  def __post_init__(self):
    if self.prediction not in PREDICTIONS:
      raise UserError(f"lora.prediction must be one of {', '.join(PREDICTIONS)}, got "
                      f"{self.prediction!r}")


@dataclasses.dataclass(frozen=True)
class Config(dreamfusion.Config):
  """DreamFusion's settings plus the LoRA network's."""
  lora: Lora


class ProlificDreamer(dreamfusion.DreamFusion):
  """The VSD system: particles as in DreamFusion; shared state {'lora', 'camera'}."""

  Config = Config
  step_sweep = ("P", "num_particles", (1, 2, 4, 8))

  def __init__(self, prompt: str, config: Config, prior: Prior, mesh=None):
    super().__init__(prompt, config, prior, mesh)
    lora.init_trained(jax.random.key(0), prior, config.lora.rank)  # Refuses a prior without.
    c = config.lora
    self.prediction = prior.prediction if c.prediction == "auto" else c.prediction
    schedule = optax.linear_schedule(0.0, c.lr, c.warmup_steps) if c.warmup_steps else c.lr
    self.shared_tx = optax.adamw(schedule, weight_decay=c.weight_decay)

  def init_shared(self, key: jax.Array):
    return lora.init_trained(key, self.prior, self.config.lora.rank)

  def _lora_eps(self, inputs, shared_params, cond):
    c = self.config.lora
    return lambda x_t, t, c2w: lora.lora_eps(
        self.prior, inputs["prior"], shared_params, x_t, t,
        jnp.broadcast_to(cond, (x_t.shape[0],) + cond.shape[1:]), c2w, c.scale, c.merged)

  def distillation_loss(self, inputs, shared_params, key, images, t, cond, uncond, plain,
                        cams: cameras.Camera):
    g = self.config.guidance
    lora_eps = self._lora_eps(inputs, shared_params, inputs["conds"]["plain"])
    return vsd.vsd_loss(self.prior, inputs["prior"], lambda x_t, tt: lora_eps(x_t, tt, cams.c2w),
                        key, images, t, cond, uncond, g.scale, g.timesteps.weighting,
                        g.max_grad_norm or None, plain, g.view_scale, self.encode)

  def particle_outputs(self, aux, cams: cameras.Camera):
    return {"x0": jax.lax.stop_gradient(aux["x0"]), "c2w": cams.c2w}

  def step_parts(self, state, key: jax.Array):
    """SDS's render and pretrained call, plus the LoRA network's call on the step's views
    (`lora_s`) and one LoRA update on P particles' renders (`lora_update_s`)."""
    parts = super().step_parts(state, key)
    cams, _ = self.sample_views(key)
    v = cams.c2w.shape[0]
    x = jnp.zeros((v,) + tuple(self.prior.latent_shape), jnp.float32)
    t = jnp.full((v,), self.prior.num_train_timesteps // 2, jnp.int32)
    shared = state.shared
    eps_fn = self._lora_eps(self.inputs, shared["params"], self.conds["plain"])
    p = self.config.num_particles
    outputs = {"x0": jnp.zeros((p,) + x.shape), "c2w": jnp.broadcast_to(cams.c2w, (p, v, 4, 4))}
    update = lambda sh, out, k: self._shared_step(sh, out, k, state.step, self.inputs)[0]
    return parts._replace(extras=(
        ("lora_s", lambda xx, tt: eps_fn(xx, tt, cams.c2w), (x, t)),
        ("lora_update_s", update, (shared, outputs, jax.random.fold_in(key, 1)))))

  def shared_loss(self, shared_params, outputs, key, step, inputs):
    del step
    x0 = outputs["x0"].reshape((-1,) + outputs["x0"].shape[2:])  # (P·V, h, w, c)
    c2w = outputs["c2w"].reshape(-1, 4, 4)
    eps_fn = self._lora_eps(inputs, shared_params, inputs["conds"]["plain"])
    if self.config.lora.remat:
      eps_fn = jax.checkpoint(eps_fn)
    loss, metrics = vsd.lora_loss(eps_fn, self.prior.alphas_cumprod, key, x0, c2w,
                                  self.prediction, self.config.lora.camera_drop)
    return loss, dict(metrics, lora_loss=loss)


__all__ = ["ProlificDreamer", "Config", "Lora"]
