"""SJC: perturb-and-average scoring against closed forms, a loop reference and jax.vjp."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax3d import cameras, configuration
from jax3d.errors import UserError
from jax3d.guidance import regularizers
from jax3d.guidance import sjc as sjc_lib
from jax3d.priors import analytic, base
from jax3d.systems import registry
from jax3d.systems import sjc
from jax3d.train import sharding

H = 8


def paas_config(**kwargs):
  """PAAS settings: the official ones (K 1, CFG 100, trims 30 and 10, `var_red`), no view
  guidance, with `kwargs`."""
  return sjc_lib.PAASConfig(**{**dict(num_perturbations=1, scale=100.0, view_scale=0.0,
                                      trim_low=30, trim_high=10, variance_reduction=True),
                               **kwargs})


def _prior(num_images, seed=0):
  images = np.random.default_rng(seed).uniform(size=(num_images, H, H, 3)).astype(np.float32)
  return analytic.analytic_prior(images, lambda p: np.ones(num_images, bool)), images


@pytest.fixture(scope="module")
def one_image():
  return _prior(1)


@pytest.fixture(scope="module")
def mixture():
  return _prior(5, seed=1)


def _conds(prior, b):
  return prior.embed(["p"] * b), prior.uncond(b)


def test_sigmas_are_the_ve_view_of_the_schedule():
  a = base.alphas_cumprod_from_betas(base.betas_for_schedule("scaled_linear", 1000))
  s = np.asarray(sjc_lib.sigmas(a))
  np.testing.assert_allclose(s, np.sqrt((1 - a) / a), rtol=1e-6)
  assert np.all(np.diff(s) > 0)
  lo, hi = sjc_lib.sigma_range(a, paas_config())
  assert lo == pytest.approx(s[30], rel=1e-6) and hi == pytest.approx(s[989], rel=1e-6)
  t = sjc_lib.sample_timesteps(jax.random.key(0), paas_config(), 1000, (4000,))
  assert int(t.min()) == 30 and int(t.max()) == 989


@pytest.mark.parametrize("k", [1, 3])
def test_paas_of_a_one_image_prior_is_the_closed_form(one_image, k):
  """Under a point-mass prior D(z, σ) = y0 for every z, so g = (y0 − x)/σ for every K."""
  prior, images = one_image
  y0 = images[0] * 2 - 1
  x = jax.random.uniform(jax.random.key(0), (3, H, H, 3), minval=-1, maxval=1)
  t = jnp.asarray([40, 500, 980])
  cond, uncond = _conds(prior, 3)
  g, _ = sjc_lib.paas(prior, prior.params, jax.random.key(1), x, t, cond, uncond,
                      paas_config(num_perturbations=k, scale=100.0))
  sigma = np.sqrt((1 - prior.alphas_cumprod[t]) / prior.alphas_cumprod[t])[:, None, None, None]
  np.testing.assert_allclose(np.asarray(g), (y0[None] - np.asarray(x)) / sigma, atol=2e-4)


def test_vmapped_paas_equals_a_python_loop(mixture):
  prior, _ = mixture
  k, b = 4, 2
  x = jax.random.uniform(jax.random.key(2), (b, H, H, 3), minval=-1, maxval=1)
  t = jnp.asarray([300, 700])
  cond, uncond = _conds(prior, b)
  cfg = paas_config(num_perturbations=k, scale=1.0)
  key = jax.random.key(3)
  g, _ = sjc_lib.paas(prior, prior.params, key, x, t, cond, uncond, cfg)
  noise = jax.random.normal(key, (k, b, H, H, 3))
  sigma = sjc_lib.sigmas(prior.alphas_cumprod)[t][:, None, None, None]
  terms = []
  for i in range(k):
    d = sjc_lib.denoise(prior, prior.params, x + sigma * noise[i], t, cond, uncond, 1.0)
    terms.append((d - x) / sigma)
  np.testing.assert_allclose(np.asarray(g), np.asarray(sum(terms) / k), rtol=1e-5, atol=1e-6)


def test_paas_converges_as_k_grows(mixture):
  """The Monte-Carlo error against a K = 2048 reference shrinks like 1/K."""
  prior, _ = mixture
  x = jax.random.uniform(jax.random.key(4), (1, H, H, 3), minval=-1, maxval=1)
  t = jnp.asarray([600])
  cond, uncond = _conds(prior, 1)

  def estimate(k, seed):
    cfg = paas_config(num_perturbations=k, scale=1.0)
    return np.asarray(sjc_lib.paas(prior, prior.params, jax.random.key(seed), x, t, cond,
                                   uncond, cfg)[0])

  ref = estimate(2048, 100)
  err = {k: np.mean([np.mean((estimate(k, s) - ref)**2) for s in range(8)]) for k in (2, 32)}
  assert err[32] < err[2] / 6  # 1/K scaling predicts 1/16


def _tiny_sjc_config(**overrides):
  c = configuration.load("sjc:toy")
  c.camera.height = c.camera.width = H
  c.field.voxel.resolution = 8
  c.render.num_samples = 8
  c.guidance.num_perturbations = 2
  # The toy's view guidance (500) multiplies float rounding by 500; the sharding comparison
  # below is about reduction order, not guidance.
  c.guidance.view_scale = 0.0
  for k, v in overrides.items():
    c[k] = v
  return c


def test_gradient_reaching_the_field_is_the_renderers_vjp_of_g(mixture):
  prior, _ = mixture
  cfg = configuration.typed(sjc.Config, _tiny_sjc_config())
  system = sjc.SJC("p", cfg, prior, mesh=sharding.make_mesh(1, jax.devices()[:1]))
  params = system.field.init(jax.random.key(0))
  cams = cameras.sample(jax.random.key(1), 2, cfg.camera)
  t = jnp.asarray([100, 800])
  cond, uncond = _conds(prior, 2)

  def render(p):
    return prior.encode(prior.params, system.render_views(p, cams, jax.random.key(2))["color"])

  def loss(p):
    return sjc_lib.sjc_loss(prior, prior.params, jax.random.key(3), render(p), t, cond,
                            uncond, cfg.guidance)[0]

  grads = jax.grad(loss)(params)
  x, vjp = jax.vjp(render, params)
  g, _ = sjc_lib.paas(prior, prior.params, jax.random.key(3), x, t, cond, uncond,
                      cfg.guidance)
  (expected,) = vjp(-g / 2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=1e-4, atol=1e-7), grads, expected)
  assert float(jnp.abs(grads["features"]).max()) > 0


def test_an_annealed_laplace_grid_trains_at_the_scheduled_beta(mixture):
  """With density_beta_start, the step's renders (and their gradient) are those of the grid at
  β(step) (`voxel.beta_schedule`), and previews and export at the end use β itself."""
  prior, _ = mixture
  laplace = ["field.voxel.density_activation=laplace", "field.voxel.density_shift=0",
             "field.voxel.init_radius=0.5", "num_steps=10"]

  def system(*overrides):
    c = configuration.apply_overrides(_tiny_sjc_config(), [*laplace, *overrides])
    return sjc.SJC("p", configuration.typed(sjc.Config, c), prior,
                   mesh=sharding.make_mesh(1, jax.devices()[:1]))

  annealed = system("field.voxel.density_beta_start=0.3")
  params = annealed.field.init(jax.random.key(0))
  cams = cameras.sample(jax.random.key(1), 1, annealed.config.camera)
  k = jax.random.key(2)
  for step, beta in ((0, 0.3), (10, 0.03)):
    fixed = system(f"field.voxel.density_beta={beta}")
    np.testing.assert_allclose(annealed.render_views(params, cams, k, step)["color"],
                               fixed.render_views(params, cams, k)["color"], atol=1e-5)
    # The training loss renders at its step's β: it equals the fixed-β system's.
    np.testing.assert_allclose(
        annealed.particle_loss(params, None, k, step, annealed.inputs)[0],
        fixed.particle_loss(params, None, k, step, fixed.inputs)[0], rtol=1e-5)
  assert float(annealed.density_schedule(annealed.config.num_steps)) == 1.0


def test_regularizers_match_their_closed_forms():
  w = jnp.asarray([[0.0, 0.5], [1.0, 0.25]])
  assert float(regularizers.emptiness_loss(w, 10.0)) == pytest.approx(
      np.mean(np.log1p(10 * np.asarray(w))), rel=1e-6)
  c = configuration.apply_overrides(_tiny_sjc_config(num_steps=100), [
      "regularizers.emptiness_weight=1e4", "regularizers.emptiness_step=0.5",
      "regularizers.emptiness_multiplier=20.0"])
  cfg = configuration.typed(sjc.Config, c)
  assert float(sjc.emptiness_weight(cfg, 49)) == 1e4
  assert float(sjc.emptiness_weight(cfg, 50)) == 2e5
  depth = np.zeros((1, 8, 8), np.float32)
  depth[:, 1:7, 1:7] = 2.0  # border 1/8 of 8 pixels = 1 pixel
  assert float(regularizers.center_depth_loss(jnp.asarray(depth), 1 / 8)) == pytest.approx(
      -np.log(2.0))


def test_sjc_particles_shard_and_match_one_device(mixture):
  prior, _ = mixture
  c = _tiny_sjc_config(num_particles=4)
  # CFG 100 multiplies rounding by 100 too, and Adamax turns it into steps on voxels whose
  # gradients are tiny: at 100 the 4-vs-1-device gap is 1.03x the tolerance, at 10 0.48x.
  c.guidance.scale = 10.0

  def run(devices, ids=None, p=4):
    c.num_particles = p
    system = sjc.SJC("p", configuration.typed(sjc.Config, c), prior,
                     mesh=sharding.make_mesh(p, devices))
    state = system.init(jax.random.key(0), ids)
    for i in range(2):
      state, metrics = system.train_step(state, jax.random.fold_in(jax.random.key(1), i))
    return state, metrics

  sharded, metrics = run(jax.devices())
  assert len(sharded.particles["params"]["density"].sharding.device_set) == 4
  assert all(np.isfinite(float(v)) for v in metrics.values())
  single, _ = run(jax.devices()[:1])
  alone, _ = run(jax.devices()[:1], ids=[3], p=1)
  for a, b, c1 in zip(jax.tree.leaves(sharded.particles["params"]),
                      jax.tree.leaves(single.particles["params"]),
                      jax.tree.leaves(alone.particles["params"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(a)[3], np.asarray(c1)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides,match", [
    ({"guidance.num_perturbations": 0}, "num_perturbations"),
    ({"guidance.view_scale": -1.0}, "view_scale"),
    ({"guidance.trim_low": 600, "guidance.trim_high": 400}, "trim"),
    ({"field.voxel.resolution": 2000}, "GiB"),
    ({"render_space": "latent"}, "latent prior"),
    ({"field.kind": "octree"}, "field kind"),
])
def test_bad_sjc_settings_are_user_errors(overrides, match):
  c = _tiny_sjc_config()
  c = configuration.apply_overrides(c, [f"{k}={v}" for k, v in overrides.items()])
  with pytest.raises(UserError, match=match):
    registry.make_system("sjc", "p", c, _prior(1)[0])
