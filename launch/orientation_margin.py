"""Does a prior prefer the cube turned as its azimuth label says, on the images SDS shows it?

For each label `a red cube, azimuth A view` it renders the true cube from azimuth A + δ
(δ = 0, 15, 30, 45°: the label's own view, then views whose cube is turned by δ) and scores
each image by the prior's implicit classifier (Ho & Salimans 2022): the denoising-loss gain
of the labelled prompt over the empty one, averaged over the same t and noise draws,

  margin(x) = E_{t,ε} ‖ε − ε(x_t, ∅)‖² − ‖ε − ε(x_t, c)‖²  (per pixel, ×1e3).

With CFG ≫ 1, SDS climbs this margin, so a prior whose margin does not peak at δ = 0 cannot
hold a cube turned to the labels: the cube's silhouette is then as good from every side as the
circumscribed cylinder's. Images are shaded (the prior's training renders) and flat (albedo
only, what the toy preset renders).

  python launch/orientation_margin.py PRIOR [NUM_DRAWS]
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from jax3d import cameras
from jax3d.priors import registry
from jax3d.solids import render
from jax3d.solids import scenes

OFFSETS = (0.0, 15.0, 30.0, 45.0)
ELEVATION = 15.0


def margins(prior_spec: str, num_draws: int = 32) -> dict[str, np.ndarray]:
  """{'shaded'|'flat': (12 labels, len(OFFSETS)) mean classifier margin}."""
  prior = registry.load_prior(prior_spec)
  res = prior.resolution
  labels = np.arange(0.0, 360.0, 30.0)
  az = (labels[:, None] + np.asarray(OFFSETS)[None]).ravel()
  shared = scenes.camera_config(res)
  cams = cameras.from_spherical(jnp.asarray(az), jnp.full(az.shape, ELEVATION),
                                shared.distance, shared.fov_deg, res, res)
  rgb = np.tile(scenes.albedo("red"), (az.size, 1))
  cond = prior.embed([f"a red cube, azimuth {int(a)} view" for a in labels])
  cond = jnp.repeat(cond, len(OFFSETS), axis=0)
  uncond = prior.uncond(1)
  n_t = prior.num_train_timesteps

  @jax.jit
  def score(key, x0):
    kt, ke = jax.random.split(key)
    t = jax.random.randint(kt, (x0.shape[0],), int(0.02 * n_t), int(0.98 * n_t))
    eps = jax.random.normal(ke, x0.shape)
    a = prior.alphas_cumprod[t][:, None, None, None]
    x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps
    e_u = prior.eps(prior.params, x_t, t, cond, uncond, 0.0)
    e_c = prior.eps(prior.params, x_t, t, cond, uncond, 1.0)
    return (((eps - e_u) ** 2).mean((1, 2, 3)) - ((eps - e_c) ** 2).mean((1, 2, 3))) * 1e3

  out = {}
  for mode, ambient in (("shaded", render.AMBIENT), ("flat", 1.0)):
    images = render.render_batch("cube", rgb, cams, supersample=2, ambient=ambient)["image"]
    x0 = prior.encode(prior.params, images)
    total = sum(score(k, x0) for k in jax.random.split(jax.random.key(0), num_draws))
    out[mode] = np.asarray(total / num_draws).reshape(len(labels), len(OFFSETS))
  return out


def main(prior_spec: str, num_draws: str = "32") -> None:
  for mode, m in margins(prior_spec, int(num_draws)).items():
    mean = m.mean(0)
    best = (m.argmax(1) == 0).mean()
    print(f"{mode:6s} margin by turn offset " +
          "  ".join(f"δ={d:2.0f}°: {v:7.3f}" for d, v in zip(OFFSETS, mean)) +
          f"   labels peaking at δ=0: {best:.2f}")


if __name__ == "__main__":
  main(*sys.argv[1:])
