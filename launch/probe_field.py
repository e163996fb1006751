"""Density and colour of a finished run's field by radius: the median density and mean colour
(with its hue) of particle 0 at 200 directions per radius, from the last checkpoint.

    python launch/probe_field.py RUN_FOLDER [R1 R2 ...]
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jax3d.priors import registry as priors
from jax3d.solids import colour
from jax3d.systems import registry
from jax3d.train import runner


def main():
  workdir = sys.argv[1]
  radii = [float(r) for r in sys.argv[2:]] or [0.1, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.9]
  run = json.load(open(os.path.join(workdir, "config.json")))["run"]
  system = registry.make_system(run["method"], run["prompt"],
                                ml_collections.ConfigDict(run["config"]),
                                priors.load_prior(run["prior"]))
  state, step = runner._restore(os.path.join(workdir, "checkpoints"), system)  # pylint: disable=protected-access
  params = system.particle_params(state, 0)
  dirs = np.random.default_rng(0).normal(size=(200, 3))
  dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
  print(f"{run['prompt']} ({run['method']}, step {step})")
  for r in radii:
    out = system.field.query(params, jnp.asarray(dirs * r, jnp.float32), system.density_schedule(step))
    rgb = np.asarray(out["color"]).mean(0)
    hue = colour.hue_of(rgb)
    print(f"r={r:.2f}  density {np.median(np.asarray(out['density'])):8.3f}  rgb "
          f"{np.round(rgb, 2)}  hue {'-' if hue is None else f'{hue:.0f}'}")


if __name__ == "__main__":
  jax.config.update("jax_platforms", "cpu")
  main()
