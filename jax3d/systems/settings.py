"""Typed settings that every system shares: the run itself, its export and the optimizer.

Values live in the presets (configs/); `configuration.typed` builds these from them strictly.
A system's own config class extends `RunConfig` with its method's sections.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import optax

from jax3d.configuration import Range
from jax3d.errors import UserError

OPTIMIZERS = ("adam", "adamax")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """The final mesh (marching cubes) and turntable of each particle."""
  mesh_resolution: Annotated[int, Range(2, 1024)]
  mesh_level: float  # <= 0: the level whose silhouettes match the renders (export.mesh)
  video_frames: Annotated[int, Range(1, 3600)]
  video_size: Annotated[int, Range(8, 2048)]
  video_elevation: Annotated[float, Range(-90, 90)]
  video_fps: Annotated[float, Range(0, 240, lo_open=True)]


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What the runner reads of every system's config."""
  method: str  # the systems.registry name of the system this config is for
  seed: int
  prior: str  # --prior's default: a priors.registry name or a folder; "" = none
  num_particles: Annotated[int, Range(1, 65536)]
  num_steps: Annotated[int, Range(1)]
  log_every: Annotated[int, Range(1)]
  preview_every: Annotated[int, Range(0)]  # 0 = never
  checkpoint_every: Annotated[int, Range(1)]
  export: ExportConfig


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Adam or Adamax with one learning rate for grid-like leaves, one for MLP leaves and,
  optionally, one for a voxel grid's density (changed to `lr_density_late` from optimizer
  step `density_switch_step` when both are positive)."""
  name: str  # one of OPTIMIZERS
  lr_grid: float
  lr_mlp: float
  b1: float
  b2: float
  eps: float
  grad_clip: float  # global-norm clipping; 0 = off
  lr_density: float = 0.0  # leaves labelled "density" (a voxel grid's); 0 = lr_grid
  lr_density_late: float = 0.0  # the density's rate from step `density_switch_step`; 0 = same
  density_switch_step: int = 0

  def __post_init__(self):
    if self.lr_density_late < 0 or self.density_switch_step < 0:
      raise UserError("optim.lr_density_late and optim.density_switch_step must be >= 0 "
                      f"(got {self.lr_density_late} and {self.density_switch_step})")
    if self.name not in OPTIMIZERS:
      raise UserError(f"unknown optimizer {self.name!r}; choose one of {', '.join(OPTIMIZERS)}")


def make_optimizer(cfg: OptimConfig, labels) -> optax.GradientTransformation:
  """The configured optimizer; `labels` (params -> tree of "grid" | "mlp" | "density") picks
  each leaf's learning rate."""
  def one(lr):
    if cfg.name == "adamax":
      return optax.adamax(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    return optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  lr_density = cfg.lr_density or cfg.lr_grid
  if cfg.lr_density_late > 0 and cfg.density_switch_step > 0:
    lr_density = optax.piecewise_constant_schedule(
        lr_density, {cfg.density_switch_step: cfg.lr_density_late / lr_density})
  tx = optax.multi_transform({"grid": one(cfg.lr_grid), "mlp": one(cfg.lr_mlp),
                              "density": one(lr_density)}, labels)
  if cfg.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx


__all__ = ["RunConfig", "ExportConfig", "OptimConfig", "make_optimizer", "OPTIMIZERS"]
