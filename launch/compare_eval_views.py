"""Silhouette IoU of finished runs with the framed held-out views and with the views before
framing (every view at distance 2, cropping what lies more than ~0.75 below the centre).

  python launch/compare_eval_views.py RUN_FOLDER... [--out FILE.json]

Each RUN_FOLDER is a `jax3d generate` folder with a solids prompt and final/mesh.glb (e.g.
runs/bench-solids/sds/*). Prints one row per run and the mean; --out writes the rows with the
command, commit and device.
"""

import argparse
import json
import os
import sys

import numpy as np

from jax3d import bench
from jax3d.solids import metrics, scenes, shapes


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  framed, fixed = metrics.MetricsConfig(), metrics.MetricsConfig(framed_views=False)
  rows = []
  for run in args.runs:
    with open(os.path.join(run, "config.json")) as f:
      prompt = json.load(f)["run"]["prompt"]
    solid = scenes.parse_prompt(prompt).solid
    shape = shapes.shape_from_mesh(os.path.join(run, "final", "mesh.glb"))
    rows.append({"prompt": prompt,
                 "framed_iou": metrics.silhouette_iou(shape, solid, framed)[0],
                 "fixed_iou": metrics.silhouette_iou(shape, solid, fixed)[0]})
    rows[-1]["change"] = rows[-1]["framed_iou"] - rows[-1]["fixed_iou"]
  rows.append({"prompt": "MEAN", **{k: float(np.mean([r[k] for r in rows]))
                                    for k in ("framed_iou", "fixed_iou", "change")}})
  bench.print_table(rows, title="silhouette IoU: framed views vs every view at distance 2")
  if args.out:
    head = bench.header("compare_eval_views", argv)
    head["command"] = "python launch/compare_eval_views.py " + " ".join(argv)
    bench.write_json(args.out, {**head, "rows": rows})


if __name__ == "__main__":
  main(sys.argv[1:])
