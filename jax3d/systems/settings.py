"""Typed settings that every system shares: the run itself, its export and the optimizer.

Values live in the presets (configs/); `configuration.typed` builds these from them strictly.
A system's own config class extends `RunConfig` with its method's sections.
"""

from __future__ import annotations

import dataclasses

import optax

from jax3d.errors import UserError

OPTIMIZERS = ("adam", "adamax")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """The final mesh (marching cubes) and turntable of each particle."""
  mesh_resolution: int
  mesh_level: float  # <= 0: the level whose silhouettes match the renders (export.mesh)
  video_frames: int
  video_size: int
  video_elevation: float
  video_fps: float


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What the runner reads of every system's config."""
  method: str  # the systems.registry name of the system this config is for
  seed: int
  prior: str  # --prior's default: a priors.registry name or a folder; "" = none
  num_particles: int
  num_steps: int
  log_every: int
  preview_every: int  # 0 = never
  checkpoint_every: int
  export: ExportConfig

  def __post_init__(self):
    for name in ("num_particles", "num_steps", "log_every", "checkpoint_every"):
      if getattr(self, name) < 1:
        raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Adam or Adamax with one learning rate for grid-like leaves and one for MLP leaves."""
  name: str  # one of OPTIMIZERS
  lr_grid: float
  lr_mlp: float
  b1: float
  b2: float
  eps: float
  grad_clip: float  # global-norm clipping; 0 = off

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise UserError(f"unknown optimizer {self.name!r}; choose one of {', '.join(OPTIMIZERS)}")


def make_optimizer(cfg: OptimConfig, labels) -> optax.GradientTransformation:
  """The configured optimizer; `labels` (params -> tree of "grid" | "mlp") picks each leaf's
  learning rate."""
  def one(lr):
    if cfg.name == "adamax":
      return optax.adamax(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    return optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  tx = optax.multi_transform({"grid": one(cfg.lr_grid), "mlp": one(cfg.lr_mlp)}, labels)
  if cfg.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx


__all__ = ["RunConfig", "ExportConfig", "OptimConfig", "make_optimizer", "OPTIMIZERS"]
