"""`jax3d generate`: one runner for every method (validate, train, preview, export).

Layout of a run folder (its rules, lock and overwrite: `train.run_folder`):
  .jax3d-run, .jax3d-lock the marker that makes it a run folder; the lock (holder's pid)
  config.json             the run's identity (prompt, method, prior and its weights' sha256,
                          dtype, resolved config) and the jax3d version, written at start
  tensorboard/            scalars (loss terms, gradient norm, opacity, t) and preview images
  previews/step_N.png     rendered views (top) beside their normals (bottom), per particle
  checkpoints/            orbax checkpoints; rerunning the same command resumes
  final/                  mesh.glb, mesh.obj, turntable.mp4, turntable.gif, metrics.json
                          (final/particle_K/ for each particle when there are several)
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from jax3d import cameras
from jax3d.errors import UserError, shown
from jax3d.systems import registry
from jax3d.train import distributed
from jax3d.train import memory
from jax3d.train import run_folder

PREVIEW_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
PREVIEW_SIZE = 64


def run_identity(prompt: str, method: str, prior: str, cfg: ml_collections.ConfigDict,
                 dtype: str = "float32") -> dict:
  """What makes a run 'the same run' (for resuming): prompt, method, prior and the sha256
  of its weights, dtype and config."""
  from jax3d.priors import registry as priors  # pylint: disable=g-import-not-at-top
  return {"prompt": prompt, "method": method, "prior": prior,
          "prior_weights_sha256": priors.describe(prior)["weights_sha256"], "dtype": dtype,
          "config": cfg.to_dict()}


def resolve_prior(spec: str | None, cfg: ml_collections.ConfigDict) -> str:
  """The prior to use: `spec` (--prior) if given, else the config's `prior`."""
  spec = spec or cfg.get("prior") or ""
  if not spec:
    raise UserError("this config names no prior; pass --prior PATH (a Stable Diffusion "
                    "folder for the sd presets) or --prior solids")
  return spec


def check_prompt_for_prior(prompt: str, prior_spec: str) -> None:
  if not isinstance(prompt, str) or not prompt.strip():
    raise UserError("the prompt is empty; give a text prompt such as 'a red cube'")
  from jax3d.priors import registry as priors  # pylint: disable=g-import-not-at-top
  if priors.is_solids_prior(prior_spec):
    from jax3d.solids import scenes  # pylint: disable=g-import-not-at-top
    scenes.parse_prompt(prompt)  # Raises a UserError naming the prompts it knows.


def preview_image(system, state, step: int, size: int) -> np.ndarray:
  """Rows: per particle (up to 4), the preview views' renders then their normal maps."""
  from jax3d.export import video  # pylint: disable=g-import-not-at-top
  cams = cameras.from_spherical(np.asarray(PREVIEW_AZIMUTHS), np.full(4, 15.0), 2.0, 40.0,
                                size, size)
  rows = []
  for k in range(min(system.config.num_particles, 4)):
    rgbs, normals = [], []
    for i in range(len(PREVIEW_AZIMUTHS)):
      cam = jax.tree.map(lambda x, i=i: x[i], cams)
      out = system.render(state, k, cam, step)
      rgbs.append(np.asarray(out["rgb"]))
      n = np.asarray(out["normal"]) * 0.5 + 0.5
      o = np.asarray(out["opacity"])[..., None]
      normals.append(n * o + (1.0 - o))
    rows += [np.concatenate(rgbs, 1), np.concatenate(normals, 1)]
  return video.to_uint8(np.concatenate(rows, 0))


def export_particle(system, state, k: int, step: int, folder: str,
                    level: float | None = None) -> tuple[dict, np.ndarray]:
  """Mesh (.glb/.obj) and turntable (.mp4/.gif) of particle k into `folder`; returns what
  was written and the turntable's frames."""
  from jax3d.export import mesh as mesh_lib, video  # pylint: disable=g-import-not-at-top
  os.makedirs(folder, exist_ok=True)
  mesh = system.export_mesh(state, k, step, level)
  paths = mesh_lib.write_mesh(mesh, folder)
  e = system.config.export
  frames = video.turntable_frames(
      lambda cam: system.render(state, k, cam, step)["rgb"], e.video_frames,
      elevation_deg=e.video_elevation, height=e.video_size, width=e.video_size, jit=False)
  paths.update(video.write_video(frames, folder, fps=e.video_fps))
  return {"paths": paths, "mesh_level": mesh.level, "mesh_level_rule": mesh.level_rule,
          "num_vertices": mesh.num_vertices, "num_faces": mesh.num_faces}, frames


def final_folder(workdir: str, k: int, num_particles: int) -> str:
  return particle_folder(os.path.join(workdir, "final"), k, num_particles)


def particle_folder(base: str, k: int, num_particles: int) -> str:
  """Where particle k's mesh and turntable go in an export folder: `base` itself, or its
  particle_K/ when there are several particles."""
  return base if num_particles == 1 else os.path.join(base, f"particle_{k}")


def generate(prompt: str, workdir: str, cfg: ml_collections.ConfigDict,
             prior_spec: str | None = None, overwrite: bool = False, dtype: str = "float32",
             allow_pickle: bool = False, stop_after: int | None = None,
             enable_bar: bool | None = None) -> dict[str, Any]:
  """Validates everything, then trains the config's method on `prompt` in `workdir` and
  exports. `cfg` is a ConfigDict from `systems.registry.resolve`; `prior_spec` None: the
  config's `prior`."""
  from jax3d.priors import registry as priors  # pylint: disable=g-import-not-at-top

  method = cfg.method
  registry.check_config(method, cfg)  # Every config problem at once, before anything heavy.
  prior_spec = resolve_prior(prior_spec, cfg)
  check_prompt_for_prior(prompt, prior_spec)
  identity = run_identity(prompt, method, prior_spec, cfg, dtype)
  distributed.check_same(json.dumps({"run": identity, "jax3d": _version()}, sort_keys=True),
                         "the run (prompt, method, prior, config, dtype or jax3d version)")
  run_folder.check(workdir, identity, overwrite)
  if priors.is_random(prior_spec) and distributed.is_main():
    print(f"jax3d: warning: {prior_spec} has random weights; this run measures time and "
          f"memory, its 3D result means nothing", file=sys.stderr)
  prior = priors.load_prior(prior_spec, dtype=dtype, allow_pickle=allow_pickle)
  system = registry.make_system(method, prompt, cfg, prior)  # Checks against the prior.
  memory.check_step_fits(system.compile_step(), list(system.mesh.local_devices),
                         memory.step_hint(system.config))
  # Everything is valid: only now touch the disk (the main process alone writes the folder).
  start = (run_folder.start(workdir, identity, _version(), overwrite) if distributed.is_main()
           else contextlib.nullcontext({"aside": None}))
  with start as started:
    distributed.barrier("jax3d-run-folder")
    return _train_and_export(system, prompt, prior_spec, workdir, stop_after, enable_bar,
                             discard=lambda _: run_folder.discard(started["aside"]))


def _train_and_export(system, prompt, prior_spec, workdir, stop_after, enable_bar,
                      discard) -> dict[str, Any]:
  """Trains and exports; a staged method (one with `next_stage`, e.g. Magic3D) trains its
  first stage in workdir/<stage>/ (checkpoints, previews, TensorBoard, its meshes), then the
  next from the first's result in workdir/ itself. Rerunning resumes either stage."""
  if not hasattr(system, "next_stage"):
    return _train_stage(system, prompt, prior_spec, workdir, os.path.join(workdir, "final"),
                        stop_after, enable_bar, discard)[0]
  first = os.path.join(workdir, system.stage)
  summary, state = _train_stage(system, prompt, prior_spec, first, first, stop_after,
                                enable_bar, discard)
  if state is None:
    return summary
  if stop_after is not None:
    stop_after -= summary["steps"] - (summary["resumed_from"] or 0)
    if stop_after <= 0:
      return summary
  system = system.next_stage(_particles_here(state),
                             _levels(summary, system.config.num_particles))
  stages = {summary["stage"]: {k: summary[k] for k in (
      "steps", "wall_time_s", "compile_time_s", "total_time_s", "resumed_from")}}
  return _train_stage(system, prompt, prior_spec, workdir, os.path.join(workdir, "final"),
                      stop_after, enable_bar, discard, {"stages": stages})[0]


def _levels(summary: dict, num_particles: int) -> np.ndarray:
  """The first stage's mesh level per particle (its summary's, on the main process) on every
  process."""
  levels = np.zeros((num_particles,), np.float32)
  if "particles" in summary:
    levels[:] = [p["mesh_level"] for p in summary["particles"]]
  return distributed.from_main(levels)


def _train_stage(system, prompt, prior_spec, workdir, export_dir, stop_after, enable_bar,
                 discard, record: dict | None = None) -> tuple[dict[str, Any], Any]:
  """Trains `system` with its checkpoints, previews and TensorBoard in `workdir` and, once
  finished, exports every particle into `export_dir`; (summary, with `record`'s entries, the
  trained state or None if the run stopped early)."""
  from jax3d.export import video  # pylint: disable=g-import-not-at-top
  from jax3d.train import loop  # pylint: disable=g-import-not-at-top
  from jax3d.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  from jax3d.train.logging import Logger  # pylint: disable=g-import-not-at-top
  run, method = system.config, system.config.method
  stage = getattr(system, "stage", None)
  key = jax.random.key(run.seed)
  k_init, k_train = jax.random.split(key)
  t0 = time.perf_counter()
  state = system.init(k_init)
  main = distributed.is_main()
  logger = Logger(workdir, run.num_steps, desc=method if stage is None else f"{method} {stage}",
                  enable_bar=enable_bar, write=main)

  def preview(step, st):
    st = _particles_here(st)  # A collective: every process gathers.
    if not main:
      return
    image = preview_image(system, st, step, PREVIEW_SIZE)
    os.makedirs(os.path.join(workdir, "previews"), exist_ok=True)
    video.write_png(os.path.join(workdir, "previews", f"step_{step:06d}.png"), image)
    logger.image(step, "previews", image)

  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    result = loop.run(system.train_step, state, k_train,
                      loop.Schedule(run.num_steps, run.log_every, run.checkpoint_every,
                                    run.preview_every),
                      checkpointer, logger, preview_fn=preview,
                      meta={"prompt": prompt}, bar_keys=("loss", "mean_opacity"),
                      stop_after=stop_after, on_checkpoint=discard)
  finally:
    logger.close()
    checkpointer.close()
  summary = {"prompt": prompt, "method": method, "prior": prior_spec, "steps": result.step,
             "wall_time_s": result.wall_time, "compile_time_s": result.compile_time,
             "total_time_s": time.perf_counter() - t0, "resumed_from": result.resumed_from,
             "final_metrics": result.metrics, "device": jax.devices()[0].device_kind,
             "num_devices": len(jax.devices()), "num_processes": jax.process_count(),
             "num_particles": run.num_particles}
  if stage is not None:
    summary["stage"] = stage
  summary.update(record or {})
  if result.step < run.num_steps:
    return summary, None
  state = _particles_here(result.state)
  if main:
    summary["particles"] = export_all(system, state, result.step, export_dir)
    run_folder.write_json(os.path.join(export_dir, "metrics.json"), summary)
  distributed.barrier("jax3d-exported")
  return summary, result.state


def _particles_here(state):
  """`state` with its particle leaves gathered onto this host (multi-process runs), so the
  main process can render particles that live on other processes' devices."""
  if not distributed.multi():
    return state
  return state.replace(particles=distributed.to_host(state.particles))


def export_all(system, state, step: int, base: str, level: float | None = None) -> list[dict]:
  """Every particle's mesh and turntable into `base` (workdir/final for a run's result); with
  several particles into base/particle_K/, and base/particles.mp4 and .gif, all turntables in
  one grid."""
  from jax3d.export import video  # pylint: disable=g-import-not-at-top
  n = system.config.num_particles
  results, frames = zip(*[export_particle(system, state, k, step, particle_folder(base, k, n),
                                          level) for k in range(n)])
  if n > 1:
    ncols = int(np.ceil(np.sqrt(n)))
    grid = np.stack([video.image_grid(np.stack([f[i] for f in frames]), ncols, pad=2)
                     for i in range(len(frames[0]))])
    video.write_video(grid, base, stem="particles",
                      fps=system.config.export.video_fps)
  return list(results)


def _version() -> str:
  import jax3d  # pylint: disable=g-import-not-at-top
  return jax3d.__version__


def _read_run(workdir: str) -> dict:
  record = run_folder.read_record(workdir)
  if record is not None:
    return record["run"]
  path = os.path.join(workdir, run_folder.CONFIG)
  if not os.path.isfile(path):
    raise UserError(f"{workdir} holds no jax3d run (no config.json); give the --workdir of a "
                    f"`jax3d generate` run")
  raise UserError(f"{path} is not a jax3d run config; was it edited?")


def _restore(checkpoints: str, system):
  from jax3d.train import checkpoint  # pylint: disable=g-import-not-at-top
  checkpointer = checkpoint.Checkpointer(checkpoints)
  try:
    state, _, step = checkpointer.restore(system.init(jax.random.key(system.config.seed)))
  finally:
    checkpointer.close()
  return state, step


def next_stage_from(system, first: str):
  """The next stage of a staged `system`, built on its first stage's finished result in the
  folder `first` (its final checkpoint and its metrics.json's mesh levels)."""
  with open(os.path.join(first, "metrics.json")) as f:
    summary = json.load(f)
  state, _ = _restore(os.path.join(first, "checkpoints"), system)
  return system.next_stage(state, _levels(summary, system.config.num_particles))


def export_command(workdir: str, level: float | None = None) -> list[dict]:
  """Re-exports meshes and turntables from a run's latest checkpoint into final/ (for a
  staged method, from its last stage's, built on its first stage's final checkpoint)."""
  from jax3d.priors import registry as priors  # pylint: disable=g-import-not-at-top
  from jax3d.train import checkpoint  # pylint: disable=g-import-not-at-top
  run = _read_run(workdir)
  cls = registry.system_class(run["method"])
  first = os.path.join(workdir, getattr(cls, "stage", ""))
  if hasattr(cls, "next_stage") and not os.path.isfile(os.path.join(first, "metrics.json")):
    raise UserError(f"{workdir}'s {cls.stage} stage has not finished; run `jax3d generate` "
                    f"first")
  if not checkpoint.has_checkpoint(os.path.join(workdir, "checkpoints")):
    raise UserError(f"{workdir} has no checkpoint yet; run `jax3d generate` first")
  cfg = ml_collections.ConfigDict(run["config"])
  with run_folder.Lock(workdir, "export"):
    prior = priors.load_prior(run["prior"], dtype=run.get("dtype", "float32"))
    system = registry.make_system(run["method"], run["prompt"], cfg, prior)
    if hasattr(system, "next_stage"):
      system = next_stage_from(system, first)
    state, step = _restore(os.path.join(workdir, "checkpoints"), system)
    return export_all(system, state, step, os.path.join(workdir, "final"), level)


def eval_command(workdir: str, resolution: int = 96) -> dict:
  """Scores final/ meshes against the prompt's solid; writes eval.json; returns the table."""
  from jax3d.solids import metrics, scenes, shapes  # pylint: disable=g-import-not-at-top
  run = _read_run(workdir)
  try:
    scenes.parse_prompt(run["prompt"])
  except UserError:
    raise UserError(f"the prompt {shown(run['prompt'])} is not a solids prompt, so there is no "
                    f"ground truth to score it against; eval works on solids prompts such "
                    f"as 'a red cube'") from None
  num_particles = int(run["config"]["num_particles"])
  rows = []
  for k in range(num_particles):
    path = os.path.join(final_folder(workdir, k, num_particles), "mesh.glb")
    if not os.path.isfile(path):
      raise UserError(f"{path} is missing; finish the run (or `jax3d export {workdir}`) first")
    shape = shapes.shape_from_mesh(path, resolution=resolution)
    row = metrics.evaluate(shape, run["prompt"], metrics.MetricsConfig(resolution=resolution))
    rows.append({"particle": k, **{key: row[key] for key in (
        "silhouette_iou", "occupancy_iou", "predicted_solid", "shape_correct",
        "predicted_colour", "colour_correct", "hue_deg")}})
    if row["cylinder_iou"] is not None:
      rows[-1]["cylinder_iou"] = row["cylinder_iou"]
  summary = {"prompt": run["prompt"], "method": run["method"], "prior": run["prior"],
             "particles": rows}
  if num_particles > 1:
    summary["diversity"] = metrics.diversity(
        [shapes.shape_from_mesh(os.path.join(final_folder(workdir, k, num_particles),
                                              "mesh.glb"), resolution=resolution)
         for k in range(num_particles)], metrics.MetricsConfig(resolution=resolution))
  run_folder.write_json(os.path.join(workdir, "eval.json"), summary)
  return summary
