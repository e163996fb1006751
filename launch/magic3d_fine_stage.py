"""Magic3D's fine stage alone, started from a finished run's coarse stage with config
overrides, then scored like `jax3d eval`: one line per call, also appended to OUT/summary.txt.

    python launch/magic3d_fine_stage.py RUN_FOLDER OUT TAG [KEY=VALUE ...]
    e.g. python launch/magic3d_fine_stage.py runs/m3d runs/m3x nc1e4 \\
             fine.regularizers.normal_consistency=1e4

The fine stage trains in OUT/TAG-PROMPT (its own checkpoints and final/ folder); the run
folder is only read. A dev tool for choosing fine-stage settings.
"""

import json
import os
import sys

from jax3d.priors import registry as priors
from jax3d.solids import metrics, shapes
from jax3d.systems import registry
from jax3d.train import runner


def main():
  src, out_root, tag, overrides = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
  run = json.load(open(os.path.join(src, "config.json")))["run"]
  method, cfg = registry.resolve("magic3d", None, overrides)
  system = registry.make_system(method, run["prompt"], cfg, priors.load_prior(run["prior"]))
  fine = runner.next_stage_from(system, os.path.join(src, system.stage))
  out = os.path.join(out_root, f"{tag}-{run['prompt'].replace(' ', '-')}")
  os.makedirs(out, exist_ok=True)
  summary, _ = runner._train_stage(  # pylint: disable=protected-access
      fine, run["prompt"], run["prior"], out, os.path.join(out, "final"), None, False,
      lambda _: None)
  shape = shapes.shape_from_mesh(os.path.join(out, "final", "mesh.glb"), resolution=96)
  r = metrics.evaluate(shape, run["prompt"], metrics.MetricsConfig(resolution=96))
  line = (f"{tag} {run['prompt']}: silhouette IoU {r['silhouette_iou']:.3f}, occupancy IoU "
          f"{r['occupancy_iou']:.3f}, {r['predicted_solid']}, {r['predicted_colour']} "
          f"({r['hue_deg']:.0f} deg), {summary['particles'][0]['num_faces']} faces, "
          f"{summary['wall_time_s']:.0f} s")
  print(line)
  with open(os.path.join(out_root, "summary.txt"), "a") as f:
    f.write(line + "\n")


if __name__ == "__main__":
  main()
