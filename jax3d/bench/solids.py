"""`jax3d bench solids`: text-to-3D quality on the solids world, `generate` then `eval` per prompt.

Each prompt runs in its own folder under `--workdir-root` (resumed if already there), so an
interrupted benchmark continues where it stopped. The last row is the mean.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from jax3d.bench.table import Row
from jax3d.errors import UserError

BARS = ("bars: shape_correct >= 0.9, colour_correct >= 0.9, mean silhouette IoU >= 0.85 "
        "(shipped prior); IoU >= 0.92 (analytic prior)")


def run(args) -> tuple[list[Row], dict[str, Any]]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax3d.priors import registry as priors  # pylint: disable=g-import-not-at-top
  from jax3d.solids import scenes  # pylint: disable=g-import-not-at-top
  from jax3d.systems import registry  # pylint: disable=g-import-not-at-top
  from jax3d.train import run_folder, runner  # pylint: disable=g-import-not-at-top

  if args.prompts == "all":
    prompts = scenes.colour_prompts()
  else:
    prompts = [p.strip() for p in args.prompts.split(";") if p.strip()]
    if not prompts:
      raise UserError(f"--prompts {args.prompts!r} names no prompt; give 'all' or prompts "
                      f"separated by ';', e.g. 'a red cube;a blue cone'")
  for p in prompts:
    scenes.parse_prompt(p)
  method, cfg = registry.resolve(args.method, args.config, args.overrides)
  cfg.seed = args.seed
  if args.quick:
    cfg.num_steps = 4
  prior = runner.resolve_prior(args.prior, cfg)
  settings = {"method": method, "config": args.config or registry.entry(method).config,
              "overrides": list(args.overrides), **priors.describe(prior), "seed": args.seed,
              "prompts": prompts, "grid_label": BARS}
  workdirs = [os.path.join(args.workdir_root, method, p.replace(" ", "-")) for p in prompts]
  for prompt, workdir in zip(prompts, workdirs):  # Refuse a clash before the first hour runs.
    run_folder.check(workdir, runner.run_identity(prompt, method, prior, cfg), overwrite=False)
  rows = []
  for prompt, workdir in zip(prompts, workdirs):
    t0 = time.perf_counter()
    summary = runner.generate(prompt, workdir, cfg, prior, enable_bar=False)
    wall = time.perf_counter() - t0  # compile, training and export: what a user waits for
    ev = runner.eval_command(workdir)["particles"][0]
    rows.append({"prompt": prompt, "silhouette_iou": ev["silhouette_iou"],
                 "occupancy_iou": ev["occupancy_iou"], "shape": ev["predicted_solid"],
                 "shape_correct": bool(ev["shape_correct"]), "colour": ev["predicted_colour"],
                 "colour_correct": bool(ev["colour_correct"]), "steps": summary["steps"],
                 "train_s": summary["wall_time_s"], "wall_s": wall})
    print(f"{prompt}: IoU {ev['silhouette_iou']:.3f}, shape {ev['predicted_solid']}, "
          f"colour {ev['predicted_colour']}", file=sys.stderr)
  mean = lambda key: float(np.mean([r[key] for r in rows]))
  rows.append({"prompt": "MEAN", "silhouette_iou": mean("silhouette_iou"),
               "occupancy_iou": mean("occupancy_iou"), "shape": "",
               "shape_correct": mean("shape_correct"), "colour": "",
               "colour_correct": mean("colour_correct"), "steps": rows[0]["steps"],
               "train_s": mean("train_s"), "wall_s": mean("wall_s")})
  return rows, settings
