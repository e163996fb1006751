"""SDS and timestep schedules against closed forms under the exact analytic prior."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax3d.errors import UserError
from jax3d.guidance import sds
from jax3d.guidance import timesteps as ts
from jax3d.priors import analytic


def timestep_config(**kwargs):
  """DreamFusion's schedule: t ~ U[0.02, 0.98], no annealing, w(t) = 1 − ᾱ_t; with `kwargs`."""
  return ts.TimestepConfig(**{**dict(t_min=0.02, t_max=0.98, t_max_end=None, anneal_steps=0,
                                     anneal="linear", weighting="dreamfusion"), **kwargs})


def _prior(images):
  names = [f"p{i}" for i in range(images.shape[0])]
  return analytic.analytic_prior(images, lambda p: np.array([p == n for n in names]))


@pytest.fixture(scope="module")
def mixture():
  rng = np.random.default_rng(0)
  return _prior(rng.uniform(size=(5, 8, 8, 3)).astype(np.float32))


def test_sds_gradient_is_weighted_residual(mixture):
  """d loss / d x0 = w(t)(ε̂ − ε)/B, with ε̂ computed independently from the mixture."""
  prior = mixture
  images = jax.random.uniform(jax.random.key(1), (3, 8, 8, 3))
  t = jnp.array([20, 500, 970])
  cond, uncond = prior.embed(["p1", "p2", "p3"]), prior.uncond(3)
  key, scale = jax.random.key(2), 7.5

  identity = dataclasses.replace(prior, encode_fn=lambda p, x: x)  # differentiate w.r.t. x0

  def loss_of_x0(x0):
    return sds.sds_loss(identity, prior.params, key, x0, t, cond, uncond, scale)[0]

  x0 = 2.0 * images - 1.0
  grad = jax.grad(loss_of_x0)(x0)

  eps = jax.random.normal(key, x0.shape)
  a = prior.alphas_cumprod[t][:, None, None, None]
  x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * eps
  y = prior.params["images"]
  masks = jnp.eye(5)[jnp.array([1, 2, 3])]
  e_c = analytic.mixture_eps(y, prior.alphas_cumprod, x_t, t, masks)
  e_u = analytic.mixture_eps(y, prior.alphas_cumprod, x_t, t, jnp.ones((3, 5)))
  expected = (1 - a) * (e_u + scale * (e_c - e_u) - eps) / 3
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)


def test_sds_gradient_through_pixel_encoder(mixture):
  """Through encode (x0 = 2·image − 1) the image gradient is twice the residual."""
  prior = mixture
  images = jax.random.uniform(jax.random.key(3), (2, 8, 8, 3))
  t, cond, uncond = jnp.array([100, 800]), prior.embed(["p0", "p4"]), prior.uncond(2)
  grad = jax.grad(lambda im: sds.sds_loss(prior, prior.params, jax.random.key(4), im, t, cond,
                                          uncond, 100.0)[0])(images)
  _, aux = sds.sds_loss(prior, prior.params, jax.random.key(4), images, t, cond, uncond, 100.0)
  np.testing.assert_allclose(grad, 2.0 * aux["residual"] / 2, rtol=1e-5, atol=1e-6)


def test_residual_clipping_bounds_each_view():
  g = jnp.stack([jnp.full((4, 4, 3), 10.0), jnp.full((4, 4, 3), 1e-3)])
  out = sds.clip_residual(g, 1.0)
  norms = jnp.sqrt(jnp.sum(out**2, axis=(1, 2, 3)))
  np.testing.assert_allclose(norms, [1.0, float(jnp.sqrt(jnp.sum(g[1]**2)))], rtol=1e-5)


def test_sds_on_a_free_image_converges_to_the_single_image():
  """Under a one-image prior, ε̂ − ε = √ᾱ/√(1−ᾱ)(x0 − y): SDS descends to y."""
  target = np.random.default_rng(5).uniform(size=(1, 8, 8, 3)).astype(np.float32)
  prior = _prior(target)
  cond, uncond = prior.embed(["p0"]), prior.uncond(1)
  cfg = timestep_config()
  tx = optax.adam(0.05)
  image = jnp.full((1, 8, 8, 3), 0.5)
  opt = tx.init(image)

  @jax.jit
  def step(image, opt, key):
    k_t, k_n = jax.random.split(key)
    t = ts.sample(k_t, cfg, prior.num_train_timesteps, (1,))
    g = jax.grad(lambda im: sds.sds_loss(prior, prior.params, k_n, im, t, cond, uncond,
                                         100.0)[0])(image)
    updates, opt = tx.update(g, opt)
    return optax.apply_updates(image, updates), opt

  for i in range(300):
    image, opt = step(image, opt, jax.random.key(i))
  assert float(jnp.max(jnp.abs(image - target))) < 0.02


def test_timesteps_range_and_annealing():
  cfg = timestep_config(t_min=0.02, t_max=0.98, t_max_end=0.5, anneal_steps=100)
  early = ts.sample(jax.random.key(0), cfg, 1000, (4000,), step=0)
  late = ts.sample(jax.random.key(0), cfg, 1000, (4000,), step=100)
  assert int(early.min()) >= 20 and int(early.max()) <= 980 and int(early.max()) > 950
  assert int(late.max()) <= 500 and int(late.min()) >= 20
  mid = float(ts.t_max_at(cfg, 50))
  assert mid == pytest.approx(0.74)
  jump = timestep_config(t_max_end=0.5, anneal_steps=100, anneal="step")
  assert [float(ts.t_max_at(jump, s)) for s in (0, 99, 100, 500)] == pytest.approx(
      [0.98, 0.98, 0.5, 0.5])


def test_weightings_closed_forms():
  ac = jnp.linspace(0.99, 0.01, 1000)
  t = jnp.array([0, 500, 999])
  a = ac[t]
  np.testing.assert_allclose(ts.weight("dreamfusion", ac, t), 1 - a)
  np.testing.assert_allclose(ts.weight("uniform", ac, t), 1.0)
  np.testing.assert_allclose(ts.weight("sqrt_snr", ac, t), jnp.sqrt(a) * (1 - a))


@pytest.mark.parametrize("bad", [dict(t_min=0.5, t_max=0.4), dict(t_max=1.5),
                                 dict(weighting="nope"), dict(t_max_end=0.0)])
def test_bad_timestep_configs_are_user_errors(bad):
  with pytest.raises(UserError):
    timestep_config(**bad)


def test_view_guidance_is_nested_cfg():
  """ε̂ = ε_∅ + s(ε_plain − ε_∅) + s_v(ε_c − ε_plain), from the mixture's exact ε's; s_v = s is
  plain CFG on c."""
  images = np.random.default_rng(5).uniform(size=(4, 8, 8, 3)).astype(np.float32)
  masks = {"p": [1, 1, 1, 0], "p, front view": [1, 0, 0, 0], "p, back view": [0, 0, 1, 0]}
  prior = analytic.analytic_prior(images, lambda p: np.array(masks[p], bool))
  x_t = jax.random.normal(jax.random.key(6), (2, 8, 8, 3))
  t = jnp.array([300, 700])
  cond = prior.embed(["p, front view", "p, back view"])
  plain, uncond = prior.embed(["p", "p"]), prior.uncond(2)
  got = prior.eps(prior.params, x_t, t, cond, uncond, 7.5, plain, 30.0)

  def exact(rows):
    return analytic.mixture_eps(prior.params["images"], prior.alphas_cumprod, x_t, t,
                                jnp.asarray(rows, jnp.float32))
  e_u, e_p = exact([[1, 1, 1, 1]] * 2), exact([masks["p"]] * 2)
  e_c = exact([masks["p, front view"], masks["p, back view"]])
  np.testing.assert_allclose(got, e_u + 7.5 * (e_p - e_u) + 30.0 * (e_c - e_p), rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(prior.eps(prior.params, x_t, t, cond, uncond, 7.5, plain, 7.5),
                             prior.eps(prior.params, x_t, t, cond, uncond, 7.5), rtol=1e-4,
                             atol=1e-4)
  # View scale 0 is off: CFG on the view-worded prompt, `plain` ignored.
  np.testing.assert_array_equal(prior.eps(prior.params, x_t, t, cond, uncond, 7.5, plain, 0.0),
                                prior.eps(prior.params, x_t, t, cond, uncond, 7.5))
