"""How closely a prior's cubes follow azimuth view labels.

For each label `a red cube, azimuth A view` (A = 0, 30, …, 330) it draws N samples with the
same noise (seed 0), finds each sample's cube turn by nearest sphere-traced reference (turns
every 3°, six elevations), and reports the turn error modulo the cube's 90° symmetry. A prior
that ignores the label scores chance: a mean error of 22.5° and 1/3 of samples within 15°
(inside the label's own 30° sector).

  python launch/azimuth_fidelity.py PRIOR [N]
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from jax3d import cameras
from jax3d.priors import registry
from jax3d.priors import sampling
from jax3d.solids import render
from jax3d.solids import scenes


def turn_errors(prior_spec: str, num: int = 8) -> dict[int, np.ndarray]:
  """{label azimuth: (num,) turn error in degrees, modulo 90}."""
  prior = registry.load_prior(prior_spec)
  res = prior.latent_shape[0]
  turns, elevations = np.meshgrid(np.arange(0.0, 360.0, 3.0),
                                  np.array([-5.0, 5.0, 15.0, 25.0, 35.0, 45.0]), indexing="ij")
  turns = turns.ravel()
  shared = scenes.camera_config(res)  # the training distribution's distance and fov
  cams = cameras.from_spherical(jnp.asarray(turns), jnp.asarray(elevations.ravel()),
                                shared.distance, shared.fov_deg, res, res)
  refs = np.asarray(render.render_batch(
      "cube", np.tile(scenes.albedo("red"), (turns.size, 1)), cams, supersample=2)["image"])
  errors = {}
  for a in range(0, 360, 30):
    cond = prior.embed([f"a red cube, azimuth {a} view"] * num)
    images = np.asarray(sampling.ddim_sample(prior, prior.params, jax.random.key(0), cond))
    best = turns[((images[:, None] - refs[None]) ** 2).mean(axis=(2, 3, 4)).argmin(1)]
    errors[a] = np.abs((best - a + 45.0) % 90.0 - 45.0)
  return errors


def main(prior_spec: str, num: str = "8") -> None:
  errors = turn_errors(prior_spec, int(num))
  for a, e in errors.items():
    print(f"azimuth {a:3d}: mean turn error {e.mean():5.1f}°")
  e = np.concatenate(list(errors.values()))
  print(f"all: mean {e.mean():.1f}° (chance 22.5), within 15°: {(e <= 15).mean():.2f} "
        f"(chance 0.33)")


if __name__ == "__main__":
  main(*sys.argv[1:])
