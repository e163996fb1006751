"""VSD guidance: the SDS limit, the formula computed independently, and the LoRA loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax3d.guidance import sds
from jax3d.guidance import vsd
from jax3d.priors import analytic


@pytest.fixture(scope="module")
def prior():
  images = np.random.default_rng(0).uniform(size=(3, 8, 8, 3)).astype(np.float32)
  return analytic.analytic_prior(images, lambda p: np.array([True, False, True]))


def _setup(prior, b=3):
  key = jax.random.key(0)
  x0 = jax.random.uniform(jax.random.fold_in(key, 1), (b, 8, 8, 3)) * 2 - 1
  t = jnp.array([20, 500, 950])[:b]
  cond, uncond = prior.embed(["a red cube"] * b), prior.uncond(b)
  return jax.random.fold_in(key, 2), x0, t, cond, uncond


def test_vsd_with_the_point_mass_score_is_sds(prior):
  """μ = δ(x): the exact score of the noisy point mass, ε_lora(x_t) = (x_t − √ᾱ x)/√(1−ᾱ),
  recovers the step's own ε, so the VSD residual equals the SDS residual (same t, ε)."""
  key, x0, t, cond, uncond = _setup(prior)
  a = prior.alphas_cumprod[t][:, None, None, None]

  def point_mass(x_t, tt):
    del tt
    return (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)
  g_vsd, _ = vsd.vsd_residual(prior, prior.params, point_mass, key, x0, t, cond, uncond, 7.5)
  g_sds, _ = sds.sds_residual(prior, prior.params, key, x0, t, cond, uncond, 7.5)
  np.testing.assert_allclose(np.asarray(g_vsd), np.asarray(g_sds), rtol=1e-4, atol=2e-5)


def test_vsd_gradient_is_the_formula(prior):
  """d loss / d x0 = (1 − ᾱ_t)(ε̂_CFG(x_t) − ε_lora(x_t)) / B, with x_t, ε̂ and ε_lora
  computed here from the definitions (NumPy for the algebra)."""
  key, x0, t, cond, uncond = _setup(prior)
  lora_w = jax.random.normal(jax.random.key(7), (3, 3)) * 0.3

  def eps_lora(x_t, tt):  # any network of (x_t, t) will do
    return jnp.tanh(x_t @ lora_w) + 1e-3 * tt[:, None, None, None]
  images = (x0 + 1) / 2
  grad = jax.grad(lambda im: vsd.vsd_loss(prior, prior.params, eps_lora, key, im, t, cond,
                                          uncond, 7.5)[0])(images)
  eps = np.asarray(jax.random.normal(key, x0.shape))
  a = np.asarray(prior.alphas_cumprod)[np.asarray(t)][:, None, None, None]
  x_t = np.sqrt(a) * np.asarray(x0) + np.sqrt(1 - a) * eps
  e_u = np.asarray(prior.model_fn(prior.params, jnp.asarray(x_t), t, uncond))
  e_c = np.asarray(prior.model_fn(prior.params, jnp.asarray(x_t), t, cond))
  eps_cfg = e_u + 7.5 * (e_c - e_u)
  expected = (1 - a) * (eps_cfg - np.asarray(eps_lora(jnp.asarray(x_t), t))) / 3
  # images -> x0 = 2·images − 1 for a pixel prior: d/d images = 2 · d/d x0.
  np.testing.assert_allclose(np.asarray(grad), 2 * expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_lora_loss_is_the_mse_of_the_networks_own_output(prior, prediction):
  """ε-model: mean (ε̂ − ε)²; v-model: mean (v̂ − v)² with v = √ᾱ ε − √(1−ᾱ) x0 and
  v̂ = (ε̂ − √(1−ᾱ) x_t)/√ᾱ, computed from the definitions; cameras are zeroed where drawn."""
  key, x0, _, _, _ = _setup(prior)
  c2w = jnp.tile(jnp.eye(4), (3, 1, 1)) + 0.5
  seen = {}

  def eps_fn(x_t, t, cams):
    seen["cams"] = cams
    return 0.9 * x_t + 0.01 * jnp.sum(cams, axis=(1, 2))[:, None, None, None]
  ac = prior.alphas_cumprod
  loss, aux = vsd.lora_loss(eps_fn, ac, key, x0, c2w, prediction, camera_drop=0.5)
  k_t, k_eps, k_drop = jax.random.split(key, 3)
  t = np.asarray(jax.random.randint(k_t, (3,), 0, ac.shape[0]))
  eps = np.asarray(jax.random.normal(k_eps, x0.shape))
  keep = np.asarray(jax.random.uniform(k_drop, (3,))) >= 0.5
  a = np.asarray(ac)[t][:, None, None, None]
  x_t = np.sqrt(a) * np.asarray(x0) + np.sqrt(1 - a) * eps
  cams = np.where(keep[:, None, None], np.asarray(c2w), 0.0)
  np.testing.assert_array_equal(np.asarray(seen["cams"]), cams)
  eps_hat = 0.9 * x_t + 0.01 * cams.sum(axis=(1, 2))[:, None, None, None]
  if prediction == "epsilon":
    expected = np.mean((eps_hat - eps) ** 2)
  else:
    v = np.sqrt(a) * eps - np.sqrt(1 - a) * np.asarray(x0)
    v_hat = (eps_hat - np.sqrt(1 - a) * x_t) / np.sqrt(a)
    expected = np.mean((v_hat - v) ** 2)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
  assert float(aux["camera_kept"]) == pytest.approx(keep.mean())


def test_lora_loss_sends_no_gradient_into_the_renders(prior):
  key, x0, _, _, _ = _setup(prior)
  c2w = jnp.tile(jnp.eye(4), (3, 1, 1))
  g = jax.grad(lambda x: vsd.lora_loss(lambda x_t, t, c: x_t * 0.5, prior.alphas_cumprod,
                                       key, x, c2w)[0])(x0)
  assert float(jnp.abs(g).max()) == 0.0
