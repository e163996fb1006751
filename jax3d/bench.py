"""`jax3d bench WHAT`: speed and quality benchmarks, printed as a table and written as JSON.

`BENCHMARKS` maps a benchmark name to a function `(args) -> rows` (a list of flat dicts, one
per measured case); `main` adds the device and version header, prints the rows with
`print_table` and writes everything with `write_json`. Later benchmarks (`prior`, `solids`)
register beside `render`.

`render` measures the hash-grid NeRF volume renderer: forward and forward+backward (gradient
of the mean rendered albedo with respect to all field params, stratified samples) throughput
for 64² and 128² images at 64 and 128 samples per ray, the same with per-sample normals
(finite-difference and analytic) at 64² × 64, and the hash encoding alone. Times exclude
compilation (ahead-of-time `lower().compile()`, reported separately as compile_s); each
repetition ends with `block_until_ready`, and the median is reported.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, Sequence

from jax3d.errors import UserError

Row = dict[str, Any]


def _format(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  if isinstance(value, int):
    return f"{value:,}"
  if value == 0 or 1e-3 <= abs(value) < 1e3:
    return f"{value:.4g}"
  if abs(value) >= 1e3 and abs(value) < 1e12:
    return f"{value:,.0f}"
  return f"{value:.3e}"


def print_table(rows: Sequence[Row], title: str | None = None, file=None) -> None:
  """Prints rows (dicts with the same keys, in order) as an aligned text table."""
  file = file or sys.stdout
  if title:
    print(title, file=file)
  if not rows:
    print("(no rows)", file=file)
    return
  columns = list(rows[0])
  for row in rows[1:]:
    columns += [k for k in row if k not in columns]
  cells = [[_format(row.get(c)) for c in columns] for row in rows]
  widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
  line = "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                   for i, (c, w) in enumerate(zip(columns, widths)))
  print(line, file=file)
  print("-" * len(line), file=file)
  for r in cells:
    print("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                    for i, (v, w) in enumerate(zip(r, widths))), file=file)
  file.flush()


def write_json(path: str, payload: Any) -> None:
  """Writes `payload` as indented JSON, creating parent folders."""
  parent = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
      json.dump(payload, f, indent=2, sort_keys=False, default=str)
      f.write("\n")
  except OSError as e:
    raise UserError(f"cannot write benchmark results to {path}: {e}") from e


def time_compiled(fn: Callable, args: Sequence[Any], repeats: int) -> tuple[float, float]:
  """(compile seconds, median run seconds) of `jax.jit(fn)(*args)`, compile excluded."""
  import jax
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))  # warm-up: first-run allocations
  times = []
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return compile_s, statistics.median(times)


def _repeats(args) -> int:
  if args.repeats < 1:
    raise UserError(f"--repeats must be at least 1, got {args.repeats}")
  return min(args.repeats, 2) if args.quick else args.repeats


def _render_grid(args):
  from jax3d.fields import hashgrid
  name = getattr(args, "grid", None) or "toy"
  return name, hashgrid.HashGridConfig.preset(name)


def render_settings(args) -> dict[str, Any]:
  """What `bench_render` measures with these args (for the header and the JSON)."""
  from jax3d.fields import nerf
  name, grid = _render_grid(args)
  cfg = nerf.NeRFConfig(hashgrid=grid)
  return {"grid": name, "nerf": dataclasses.asdict(cfg),
          "grid_label": (f"{name} hash grid: L={grid.num_levels} F={grid.features_per_level} "
                         f"T=2^{grid.log2_table_size} N={grid.base_resolution}.."
                         f"{grid.max_resolution} (f32); MLP {cfg.num_hidden_layers}x"
                         f"{cfg.hidden_dim}; {cfg.density_activation} density; albedo "
                         f"render unless +normals (Lambertian)")}


def bench_render(args) -> list[Row]:
  """Hash-grid NeRF render and hash-encoding throughput rows."""
  import jax
  import jax.numpy as jnp
  from jax3d import cameras
  from jax3d.fields import hashgrid
  from jax3d.fields import nerf
  from jax3d.render import volume

  _, grid = _render_grid(args)
  if args.quick:
    sizes, samples, normal_cases, num_points = (16,), (8,), (("finite_difference", 16, 8),), 4096
  else:
    sizes, samples, num_points = (64, 128), (64, 128), 2**18
    normal_cases = (("finite_difference", 64, 64), ("analytic", 64, 64))
  repeats = _repeats(args)

  cfg = nerf.NeRFConfig(hashgrid=grid)
  key = jax.random.PRNGKey(0)
  params = nerf.init(key, cfg)
  rows: list[Row] = []

  def add(case, image, spp, rays, points, pass_, compile_s, seconds):
    rows.append({"case": case, "pass": pass_, "image": image, "samples_per_ray": spp,
                 "points": points, "compile_s": compile_s, "time_ms": seconds * 1e3,
                 "rays_per_s": None if rays is None else rays / seconds,
                 "samples_per_s": points / seconds})
    print(f"  {case} {image or ''} {pass_}: {seconds * 1e3:.1f} ms", file=sys.stderr, flush=True)

  # The encoding alone, on points in the unit cube.
  x = jax.random.uniform(jax.random.PRNGKey(1), (num_points, 3))
  table = params["encoding"]
  enc = lambda t, x: hashgrid.encode(t, x, grid)
  c, s = time_compiled(enc, (table, x), repeats)
  add("encode", None, None, None, num_points, "forward", c, s)
  enc_grad = jax.grad(lambda t, x: jnp.sum(hashgrid.encode(t, x, grid)))
  c, s = time_compiled(enc_grad, (table, x), repeats)
  add("encode", None, None, None, num_points, "forward+backward", c, s)

  def render_fns(res, spp, normal_method):
    cam = cameras.from_spherical(30.0, 15.0, 2.0, 40.0, res, res)
    origins, dirs = cameras.rays(cam)
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    rcfg = volume.RenderConfig(num_samples=spp, bound=cfg.bound)
    fcfg = cfg if normal_method is None else nerf.NeRFConfig(hashgrid=grid,
                                                            normal_method=normal_method)
    light = jnp.array([0.6, 0.3, 0.74])

    def forward(p, k):
      def field(points, _):
        q = nerf.query(p, points, fcfg, with_normals=normal_method is not None)
        if normal_method is not None:
          q["albedo"] = nerf.shade(q["albedo"], q["normal"], light, 1)
        return q
      return volume.render_rays(field, origins, dirs, k, rcfg,
                                background={"albedo": jnp.ones(3)})["albedo"]

    loss = lambda p, k: jnp.mean(forward(p, k))
    return forward, jax.grad(loss)

  cases = [("nerf", r, s, None) for r in sizes for s in samples]
  short = {"finite_difference": "fd", "analytic": "analytic"}
  cases += [(f"nerf+normals({short[m]})", r, s, m) for m, r, s in normal_cases]
  for name, res, spp, method in cases:
    fwd, fwd_bwd = render_fns(res, spp, method)
    rays = res * res
    for pass_, fn in (("forward", fwd), ("forward+backward", fwd_bwd)):
      c, s = time_compiled(fn, (params, jax.random.PRNGKey(2)), repeats)
      add(name, f"{res}x{res}", spp, rays, rays * spp, pass_, c, s)
  return rows


def bench_prior(args) -> list[Row]:
  """Quality of a solids prior's samples: per prompt, DDIM samples scored by non-learned
  image checks (`solids.metrics.image_colour`, `image_shape`); the last row is the total."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax3d.priors import registry, sampling  # pylint: disable=g-import-not-at-top
  from jax3d.solids import metrics, scenes  # pylint: disable=g-import-not-at-top

  args.prior = args.prior or registry.SOLIDS
  prior = registry.load_prior(args.prior)
  n = 2 if args.quick else args.samples_per_prompt
  steps = 5 if args.quick else args.steps
  scale = prior.default_guidance_scale if args.guidance_scale is None else args.guidance_scale
  prompts = scenes.colour_prompts() + scenes.colourless_prompts()
  if args.quick:
    prompts = prompts[:2] + prompts[-1:]
  rows, images_by_prompt = [], {}
  for i, prompt in enumerate(prompts):
    images = sampling.ddim_sample(prior, prior.params, jax.random.key(args.seed * 1000 + i),
                                  prior.embed([prompt] * n), prior.uncond(1), steps, scale)
    images_by_prompt[prompt] = np.asarray(images)
  for prompt, images in images_by_prompt.items():
    scene = scenes.parse_prompt(prompt)
    colours = [metrics.image_colour(im)[0] for im in images]
    shapes = [metrics.image_shape(im) for im in images]
    row = {"prompt": prompt, "samples": len(images),
           "shape_correct": float(np.mean([s == scene.solid for s, _ in shapes])),
           "shape_iou": float(np.mean([iou for _, iou in shapes])),
           "colour_correct": (float(np.mean([c == scene.colour for c in colours]))
                              if scene.colour else None),
           "distinct_colours": len({c for c in colours if c})}
    rows.append(row)
  coloured = [r for r in rows if r["colour_correct"] is not None]
  colourless = [r for r in rows if r["colour_correct"] is None]
  rows.append({"prompt": "ALL", "samples": sum(r["samples"] for r in rows),
               "shape_correct": float(np.mean([r["shape_correct"] for r in rows])),
               "shape_iou": float(np.mean([r["shape_iou"] for r in rows])),
               "colour_correct": (float(np.mean([r["colour_correct"] for r in coloured]))
                                  if coloured else None),
               "distinct_colours": min((r["distinct_colours"] for r in colourless),
                                       default=None)})
  if args.grid_out:
    from jax3d.export import video  # pylint: disable=g-import-not-at-top
    grid = np.concatenate([video.image_grid(im, ncols=n, pad=1)
                           for im in images_by_prompt.values()], axis=0)
    video.write_png(args.grid_out, grid)
  return rows


def prior_settings(args) -> dict[str, Any]:
  return {"prior": args.prior, "samples_per_prompt": args.samples_per_prompt,
          "ddim_steps": args.steps, "guidance_scale": args.guidance_scale, "seed": args.seed,
          "grid_label": "bars: colour_correct >= 0.9 (colour prompts), shape_correct >= 0.8, "
                        "distinct_colours >= 4 per colourless prompt (ALL row: the minimum)"}


def bench_solids(args) -> list[Row]:
  """Text-to-3D quality on the solids benchmark: `generate` then `eval` per prompt.

  Each prompt runs in its own folder under `--workdir-root` (resumed if already there), so an
  interrupted benchmark continues where it stopped. The last row is the mean.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax3d import configuration  # pylint: disable=g-import-not-at-top
  from jax3d.solids import scenes  # pylint: disable=g-import-not-at-top
  from jax3d.train import runner  # pylint: disable=g-import-not-at-top

  if args.prompts == "all":
    prompts = scenes.colour_prompts()
  else:
    prompts = [p.strip() for p in args.prompts.split(";") if p.strip()]
  for p in prompts:
    scenes.parse_prompt(p)
  runner.check_method(args.method)
  cfg = configuration.load(args.config or runner.DEFAULT_CONFIGS[args.method])
  cfg = configuration.apply_overrides(cfg, getattr(args, "overrides", []))
  cfg.seed = args.seed
  if args.quick:
    cfg.num_steps = 4
  args.prior = runner.resolve_prior(args.prior, cfg)  # recorded in the settings
  workdirs = [os.path.join(args.workdir_root, args.method, p.replace(" ", "-")) for p in prompts]
  for prompt, workdir in zip(prompts, workdirs):  # Refuse a clash before the first hour runs.
    runner.check_workdir(workdir, runner.run_identity(prompt, args.method, args.prior, cfg),
                         overwrite=False)
  rows = []
  for prompt, workdir in zip(prompts, workdirs):
    t0 = time.perf_counter()
    summary = runner.generate(prompt, workdir, args.method, args.prior, cfg,
                              enable_bar=False)
    wall = time.perf_counter() - t0  # compile, training and export: what a user waits for
    ev = runner.eval_command(workdir)["particles"][0]
    rows.append({"prompt": prompt, "silhouette_iou": ev["silhouette_iou"],
                 "occupancy_iou": ev["occupancy_iou"], "shape": ev["predicted_solid"],
                 "shape_correct": bool(ev["shape_correct"]), "colour": ev["predicted_colour"],
                 "colour_correct": bool(ev["colour_correct"]), "steps": summary["steps"],
                 "train_s": summary["wall_time_s"], "wall_s": wall})
    print(f"{prompt}: IoU {ev['silhouette_iou']:.3f}, shape {ev['predicted_solid']}, "
          f"colour {ev['predicted_colour']}", file=sys.stderr)
  rows.append({"prompt": "MEAN", "silhouette_iou": float(np.mean([r["silhouette_iou"]
                                                                  for r in rows])),
               "occupancy_iou": float(np.mean([r["occupancy_iou"] for r in rows])),
               "shape": "", "shape_correct": float(np.mean([r["shape_correct"] for r in rows])),
               "colour": "", "colour_correct": float(np.mean([r["colour_correct"]
                                                              for r in rows])),
               "steps": rows[0]["steps"],
               "train_s": float(np.mean([r["train_s"] for r in rows])),
               "wall_s": float(np.mean([r["wall_s"] for r in rows]))})
  return rows


def solids_settings(args) -> dict[str, Any]:
  return {"method": args.method, "prior": args.prior, "config": args.config,
          "overrides": list(getattr(args, "overrides", [])),
          "seed": args.seed, "prompts": args.prompts,
          "grid_label": "bars: shape_correct >= 0.9, colour_correct >= 0.9, mean silhouette "
                        "IoU >= 0.85 (shipped prior); IoU >= 0.92 (analytic prior)"}


def _time_steps(step, state, key, repeats: int) -> tuple[float, float, Any]:
  """(first-call seconds incl. compile, median seconds per later call, final state) of a
  state-threading step (the state may be donated, so each call takes the last output)."""
  import jax
  t0 = time.perf_counter()
  state, metrics = step(state, key)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - t0
  times = []
  for i in range(max(2, repeats)):
    t0 = time.perf_counter()
    state, metrics = step(state, jax.random.fold_in(key, i))
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times), state


def bench_step(args) -> list[Row]:
  """Per-step cost of a distillation method and its split into render, prior and the rest.

  Rows: the whole jitted train step (one particle); the render forward and forward+backward
  of the step's views; the prior's guidance call alone (SDS residual, or PAAS with its K
  perturbations); and `rest` = step − render fwd+bwd − prior (the loss, the chain through
  the encoder, the optimizer; near zero or slightly negative where XLA fuses across parts).
  For SJC the step and the prior call are repeated for K = 1, 2, 4, 8 perturbations, each
  with its ratio to K = 1.
  """
  import jax
  import jax.numpy as jnp
  from jax3d import cameras, configuration
  from jax3d.priors import registry
  from jax3d.train import runner

  runner.check_method(args.method)
  prompt = "a red cube"
  cfg = configuration.load(args.config or runner.DEFAULT_CONFIGS[args.method])
  cfg = configuration.apply_overrides(cfg, getattr(args, "overrides", []))
  args.prior = runner.resolve_prior(args.prior, cfg)
  prior = registry.load_prior(args.prior)
  cfg.num_particles = 1
  repeats = _repeats(args)
  ks = (1, 2) if args.quick else (1, 2, 4, 8)
  ks = ks if args.method == "sjc" else (None,)
  rows, base = [], {}
  for k in ks:
    if k is not None:
      cfg.guidance.num_perturbations = k
    system = runner.make_system(args.method, prompt, cfg, prior)
    state = system.init(jax.random.key(0))
    first, step_s, state = _time_steps(system.train_step, state, jax.random.key(1), repeats)
    params = system.particle_params(state, 0)
    v = system.cfg.views_per_step
    cams = cameras.sample(jax.random.key(2), v, system.cfg.camera)
    render = _step_render_fn(system, cams)
    _, render_s = time_compiled(render, (params, jax.random.key(3)), repeats)
    _, render_bwd_s = time_compiled(
        jax.grad(lambda p, key: jnp.sum(render(p, key))), (params, jax.random.key(3)), repeats)
    prior_fn = _step_prior_fn(system, v)
    x = jnp.zeros((v,) + tuple(prior.latent_shape), jnp.float32)
    _, prior_s = time_compiled(prior_fn, (prior.params, x, jax.random.key(4)), repeats)
    row = {"method": args.method, "K": k or "-", "views": v,
           "step_s": step_s, "steps_per_s": 1.0 / step_s, "first_step_s": first,
           "render_fwd_s": render_s, "render_fwd_bwd_s": render_bwd_s, "prior_s": prior_s,
           "rest_s": step_s - render_bwd_s - prior_s}
    if k is not None:
      base = base or {"step": step_s, "prior": prior_s}
      row["step_vs_K1"] = step_s / base["step"]
      row["prior_vs_K1"] = prior_s / base["prior"]
    rows.append(row)
  return rows


def _step_render_fn(system, cams):
  """The render a training step makes for `cams` (before the prior), as (params, key) -> x."""
  import jax.numpy as jnp
  from jax3d.systems import dreamfusion
  if isinstance(system, dreamfusion.DreamFusion):
    cfg = system.cfg
    v = cams.fov_y.shape[0]
    return lambda p, key: dreamfusion.render_views(
        cfg, p, cams, key, jnp.zeros((v,), jnp.int32), cams.position, system.blob(0))["rgb"]
  return lambda p, key: system.render_views(p, cams, key)["color"]


def _step_prior_fn(system, v: int):
  """The step's guidance call on a fixed x0: (prior_params, x0, key) -> residual."""
  import jax.numpy as jnp
  from jax3d.guidance import sds, sjc
  from jax3d.systems import dreamfusion
  prior = system.prior
  cond, uncond, plain = system.guidance_embeddings(system.conds, jnp.zeros((v,), jnp.int32))
  t = jnp.full((v,), prior.num_train_timesteps // 2, jnp.int32)
  if isinstance(system, dreamfusion.DreamFusion):
    return lambda pp, x, key: sds.sds_residual(
        prior, pp, key, x, t, cond, uncond, system.cfg.guidance_scale, plain=plain,
        view_scale=system.cfg.view_guidance_scale)[0]
  return lambda pp, x, key: sjc.paas(prior, pp, key, x, t, cond, uncond, system.cfg.paas,
                                     plain)[0]


def step_settings(args) -> dict[str, Any]:
  return {"method": args.method, "prior": args.prior, "config": args.config,
          "overrides": list(getattr(args, "overrides", [])),
          "grid_label": "one particle, 'a red cube'; seconds are medians, compile excluded "
                        "(first_step_s includes it); rest = step - render fwd+bwd - prior"}


BENCHMARKS: dict[str, Callable[[Any], list[Row]]] = {
    "render": bench_render,
    "prior": bench_prior,
    "solids": bench_solids,
    "step": bench_step,
}
# Optional: name -> (args -> dict) describing a benchmark's settings for the header and JSON.
SETTINGS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "render": render_settings,
    "prior": prior_settings,
    "solids": solids_settings,
    "step": step_settings,
}


def main(args) -> int:
  """Runs the benchmark `args.what`; prints its table and writes JSON to `args.out` if set."""
  if args.what not in BENCHMARKS:
    raise UserError(f"unknown benchmark {args.what!r}; choose one of {', '.join(BENCHMARKS)}")
  import jax
  device = jax.devices()[0]
  header = {
      "benchmark": args.what,
      "device": device.device_kind,
      "platform": device.platform,
      "device_count": jax.device_count(),
      "jax_version": jax.__version__,
      "quick": bool(args.quick),
      "repeats": _repeats(args),
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  settings = SETTINGS[args.what](args) if args.what in SETTINGS else {}
  header["settings"] = settings
  rows = BENCHMARKS[args.what](args)
  title = (f"jax3d bench {args.what}: {header['device']} x{header['device_count']} "
           f"({header['platform']}), jax {header['jax_version']}"
           f"{' (quick)' if args.quick else ''}")
  if args.what in ("render", "step"):
    title += f"; median of {header['repeats']} runs, compile excluded"
  if "grid_label" in settings:
    title += f"\n{settings['grid_label']}"
  print_table(rows, title=title)
  if args.out:
    write_json(args.out, {**header, "rows": rows})
    print(f"wrote {args.out}")
  return 0


__all__ = ["BENCHMARKS", "main", "print_table", "write_json", "time_compiled", "bench_render"]
