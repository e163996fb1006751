"""`jax3d bench solids`: text-to-3D quality on the solids world, `generate` then `eval` per prompt.

Each prompt runs in its own folder under `--workdir-root` (resumed if already there), so an
interrupted benchmark continues where it stopped. With `--out`, the rows so far are written
after every prompt (`"complete": false`); rerunning the same command at the same clean commit
keeps those prompts' rows and runs the rest, so a benchmark longer than a machine's session
(VSD: ~5 h on a 2-core CPU) finishes across sessions without its run folders. Every particle
is a row; with several
particles, each prompt's first row also carries the population's diversity: the number of
distinct palette colours, the hue spread (1 − |mean unit hue vector|) and the mean pairwise
(1 − silhouette IoU) after z-alignment (`solids.metrics.diversity`). The last row is the mean
over particles (colour over the prompts that name one; diversity over prompts).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from jax3d import bench
from jax3d.bench.table import Row, write_json
from jax3d.errors import UserError

BARS = ("bars: shape_correct >= 0.9, colour_correct >= 0.9, mean silhouette IoU >= 0.85 "
        "(shipped prior); IoU >= 0.92 (analytic prior)")


def run(args) -> tuple[list[Row], dict[str, Any]]:
  from jax3d.priors import registry as priors  # pylint: disable=g-import-not-at-top
  from jax3d.solids import scenes  # pylint: disable=g-import-not-at-top
  from jax3d.systems import registry  # pylint: disable=g-import-not-at-top
  from jax3d.train import run_folder, runner  # pylint: disable=g-import-not-at-top

  if args.prompts == "all":
    prompts = scenes.colour_prompts()
  elif args.prompts == "colourless":
    prompts = scenes.colourless_prompts()
  else:
    prompts = [p.strip() for p in args.prompts.split(";") if p.strip()]
    if not prompts:
      raise UserError(f"--prompts {args.prompts!r} names no prompt; give 'all' or prompts "
                      f"separated by ';', e.g. 'a red cube;a blue cone', or 'colourless'")
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
  done = finished_rows(args, settings)
  if done:
    print(f"{args.out}: keeping the rows of {len(done)} finished prompts (same command, "
          f"commit and settings)", file=sys.stderr)
  rows = []
  for prompt, workdir in zip(prompts, workdirs):
    if prompt in done:
      rows += done[prompt]
      continue
    t0 = time.perf_counter()
    summary = runner.generate(prompt, workdir, cfg, prior, enable_bar=False)
    wall = time.perf_counter() - t0  # compile, training and export: what a user waits for
    ev = runner.eval_command(workdir)
    rows += prompt_rows(ev, {"steps": summary["steps"], "train_s": summary["wall_time_s"],
                             "wall_s": wall})
    print(f"{prompt}: " + "; ".join(
        f"IoU {p['silhouette_iou']:.3f}, shape {p['predicted_solid']}, colour "
        f"{p['predicted_colour']}" for p in ev["particles"]), file=sys.stderr)
    if args.out:
      write_json(args.out, bench.result(args, settings, rows, complete=False))
  rows.append(mean_row(rows))
  return rows, settings


def finished_rows(args, settings: dict[str, Any]) -> dict[str, list[Row]]:
  """{prompt: its rows} from an unfinished `--out` file written by this same command at this
  same clean commit with these settings; {} when there is none or anything differs."""
  head = getattr(args, "header", None)
  if not args.out or not head or not os.path.isfile(args.out):
    return {}
  try:
    with open(args.out) as f:
      previous = json.load(f)
  except (OSError, ValueError):
    return {}
  same = (previous.get("complete") is False and head["commit"] is not None
          and not head["commit"].endswith("+dirty")
          and all(previous.get(k) == head[k] for k in ("command", "commit", "device"))
          and previous.get("settings") == json.loads(json.dumps(settings, default=str)))
  if not same:
    return {}
  done: dict[str, list[Row]] = {}
  for row in previous.get("rows", []):
    done.setdefault(row["prompt"], []).append(row)
  return done


DIVERSITY = ("distinct_colours", "hue_spread", "pairwise_1_minus_iou")


def prompt_rows(ev: dict[str, Any], timing: dict[str, Any]) -> list[Row]:
  """One row per particle of an `eval` summary; the first also holds the diversity columns
  when there are several particles."""
  rows = [{"prompt": ev["prompt"], "particle": p["particle"],
           "silhouette_iou": p["silhouette_iou"], "occupancy_iou": p["occupancy_iou"],
           "shape": p["predicted_solid"], "shape_correct": bool(p["shape_correct"]),
           "colour": p["predicted_colour"], "colour_correct": p["colour_correct"], **timing}
          for p in ev["particles"]]
  if "diversity" in ev:
    d = ev["diversity"]
    rows[0].update({"distinct_colours": len({p["predicted_colour"] for p in ev["particles"]}),
                    "hue_spread": d["hue_spread"],
                    "pairwise_1_minus_iou": 1.0 - d["mean_pairwise_silhouette_iou"]})
  return rows


def mean_row(rows: list[Row]) -> Row:
  """The MEAN row: scores over every particle (colour over those whose prompt names one),
  diversity over the prompts."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  def mean(key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None
  total = {"prompt": "MEAN", "particle": "", "silhouette_iou": mean("silhouette_iou"),
           "occupancy_iou": mean("occupancy_iou"), "shape": "",
           "shape_correct": mean("shape_correct"), "colour": "",
           "colour_correct": mean("colour_correct"), "steps": rows[0]["steps"],
           "train_s": mean("train_s"), "wall_s": mean("wall_s")}
  if any(DIVERSITY[0] in r for r in rows):
    total.update({key: mean(key) for key in DIVERSITY})
  return total
