"""The analytic prior: ε̂ is the exact score of the Gaussian mixture, conditioning restricts the
set, CFG identities hold, and the solids image set is what the renderer draws."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax3d import cameras
from jax3d.errors import UserError
from jax3d.priors import analytic
from jax3d.solids import render, scenes

T_VALUES = np.array([0, 1, 5, 50, 250, 500, 750, 990, 999], np.int32)
LABELS = np.array([0, 0, 1, 1, 1, 2])
PROMPTS = {"zero": LABELS == 0, "one": LABELS == 1, "two": LABELS == 2, "none": LABELS > 5}


def _toy_mask(prompt):
  if prompt not in PROMPTS:
    raise UserError(f"unknown toy prompt {prompt!r}")
  return PROMPTS[prompt]


@pytest.fixture(scope="module")
def toy():
  images = np.random.default_rng(0).uniform(size=(6, 4, 4, 3)).astype(np.float32)
  return analytic.analytic_prior(images, _toy_mask), images


def _log_density(images, ac, x, t, mask):
  """log p_t(x) + const of the (masked) mixture, by logsumexp of the components."""
  a, var = jnp.sqrt(ac[t]), 1.0 - ac[t]
  d2 = jnp.sum(jnp.square(x[None] - a * images), axis=(1, 2, 3))
  return jax.nn.logsumexp(jnp.where(mask > 0, -d2 / (2 * var), -jnp.inf))


@jax.jit
def _score_eps_impl(images, ac, x, t, mask):
  grad = jax.vmap(jax.grad(functools.partial(_log_density, images, ac)),
                  in_axes=(0, 0, None))(x, t, mask)
  return -jnp.sqrt(1.0 - ac[t])[:, None, None, None] * grad


def _score_eps(prior, x, t, mask):
  """−√(1−ᾱ_t) ∇_x log p_t(x) by autodiff, per example."""
  return _score_eps_impl(prior.params["images"], prior.alphas_cumprod, x, t, mask)


def _noisy(prior, key, t, index):
  """x_t = √ᾱ_t y_index + √(1−ᾱ_t) ε, and ε."""
  y = prior.params["images"][index]
  eps = jax.random.normal(key, y.shape)
  ac = prior.alphas_cumprod[t][:, None, None, None]
  return jnp.sqrt(ac) * y + jnp.sqrt(1.0 - ac) * eps, eps


@pytest.mark.parametrize("prompt", ["", "one"])
def test_eps_is_minus_sigma_times_the_score(toy, prompt):
  prior, _ = toy
  mask = prior.embed([prompt])[0, 0]
  n = len(T_VALUES)
  members = np.flatnonzero(np.asarray(mask))
  x_data, _ = _noisy(prior, jax.random.key(1), T_VALUES, members[np.arange(n) % len(members)])
  x_far = 2.0 * jax.random.normal(jax.random.key(2), x_data.shape)  # Off the data, too.
  for x in (x_data, x_far):
    got = jax.jit(prior.model_fn)(prior.params, x, T_VALUES, jnp.broadcast_to(mask, (n, 1, 6)))
    want = _score_eps(prior, x, T_VALUES, mask)
    assert np.isfinite(got).all() and np.isfinite(want).all()
    scale = np.abs(want).max(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(got / scale, want / scale, atol=2e-5)


def test_eps_recovers_the_noise_near_t0(toy):
  """Near t = 0 the components are far apart relative to σ_t: the posterior is one-hot and ε̂ is
  exactly the noise that was added."""
  prior, _ = toy
  t = jnp.array([0, 1, 3, 5, 0, 2], jnp.int32)
  x, eps = _noisy(prior, jax.random.key(3), t, np.arange(6))
  got = prior.model_fn(prior.params, x, t, prior.uncond(6))
  np.testing.assert_allclose(got, eps, atol=1e-3)


def test_conditioning_restricts_to_the_prompts_images(toy):
  prior, _ = toy
  y = np.asarray(prior.params["images"], np.float64).reshape(6, -1)
  ac = np.asarray(prior.alphas_cumprod, np.float64)
  # Start next to image 0 (label 0), condition on label 1: the denoised estimate is the
  # brute-force posterior mean over images 2, 3, 4 only.
  t = np.array([20, 300, 600, 900], np.int32)
  x, _ = _noisy(prior, jax.random.key(4), t, np.zeros(4, int))
  cond = prior.embed(["one"] * 4)
  e = prior.eps(prior.params, x, t, cond, prior.uncond(4), 1.0)
  a = np.sqrt(ac[t])[:, None]
  xf = np.asarray(x, np.float64).reshape(4, -1)
  x0_hat = (xf - np.sqrt(1 - ac[t])[:, None] * np.asarray(e, np.float64).reshape(4, -1)) / a
  members = np.flatnonzero(PROMPTS["one"])
  logits = -np.sum((xf[:, None] - a[:, :, None] * y[None, members])**2, -1) / (
      2 * (1 - ac[t])[:, None])
  w = np.exp(logits - logits.max(1, keepdims=True))
  w /= w.sum(1, keepdims=True)
  np.testing.assert_allclose(x0_hat, w @ y[members], atol=2e-4)
  # A one-image prompt denoises to that image from anywhere.
  x = 3.0 * jax.random.normal(jax.random.key(5), (4, 4, 4, 3))
  e = prior.eps(prior.params, x, t, prior.embed(["two"]), prior.uncond(1), 1.0)
  x0 = (x - jnp.sqrt(1 - ac[t])[:, None, None, None] * e) / a[:, :, None, None]
  np.testing.assert_allclose(x0, jnp.broadcast_to(prior.params["images"][5], x0.shape),
                             atol=2e-4)


def test_classifier_free_guidance_identities(toy):
  prior, _ = toy
  t = jnp.array([100, 500, 800], jnp.int32)
  x, _ = _noisy(prior, jax.random.key(6), t, np.array([0, 3, 5]))
  cond, uncond = prior.embed(["zero", "one", "two"]), prior.uncond(3)
  e_c = prior.model_fn(prior.params, x, t, cond)
  e_u = prior.model_fn(prior.params, x, t, uncond)
  assert np.abs(e_c - e_u).max() > 0.1
  eps = jax.jit(prior.eps)
  np.testing.assert_allclose(eps(prior.params, x, t, cond, uncond, 1.0), e_c, atol=1e-6)
  np.testing.assert_allclose(eps(prior.params, x, t, cond, uncond, 0.0), e_u, atol=1e-6)
  np.testing.assert_allclose(eps(prior.params, x, t, cond, uncond, 4.0),
                             e_u + 4.0 * (e_c - e_u), atol=1e-5)
  # (1, L, D) conditioning broadcasts over the batch.
  np.testing.assert_allclose(prior.eps(prior.params, x, t, cond[:1], uncond[:1], 2.0),
                             prior.eps(prior.params, x, t, jnp.repeat(cond[:1], 3, 0), uncond,
                                       2.0), atol=1e-6)


def test_embedding_is_a_mask_and_bad_prompts_are_user_errors(toy):
  prior, _ = toy
  e = prior.embed(["", "zero", "one"])
  assert e.shape == (3, 1, 6)
  np.testing.assert_array_equal(e[:, 0], np.stack([np.ones(6), PROMPTS["zero"],
                                                   PROMPTS["one"]]))
  with pytest.raises(UserError, match="unknown toy prompt"):
    prior.embed(["a teapot"])
  with pytest.raises(UserError, match="no images"):
    prior.embed(["none"])
  x = jnp.full((2, 4, 4, 3), 0.25)
  np.testing.assert_allclose(prior.decode(prior.params, prior.encode(prior.params, x)), x,
                             atol=1e-6)


# --- The solids image set. ----------------------------------------------------------------

M = 4


@pytest.fixture(scope="module")
def solids():
  data = analytic.render_solids_set(jax.random.key(7), views_per_object=M)
  prior = analytic.analytic_prior(data["image"],
                                  functools.partial(analytic.solids_prompt_mask, data))
  return data, prior


def test_the_cached_solids_set_is_the_rendered_one_and_renders_once(solids, tmp_path,
                                                                    monkeypatch):
  data, _ = solids
  key = jax.random.key(7)
  cache = tmp_path / "priors"
  calls = []
  render_set = analytic.render_solids_set
  monkeypatch.setattr(analytic, "render_solids_set",
                      lambda *a: calls.append(a) or render_set(*a))
  first = analytic.cached_solids_set(key, M, cache=cache)
  assert len(calls) == 1 and len(list(cache.glob("analytic-solids-*.npz"))) == 1
  second = analytic.cached_solids_set(key, M, cache=cache)
  assert len(calls) == 1  # read back, not rendered
  for got in (first, second):
    assert got.keys() == data.keys()
    for name in data:
      np.testing.assert_array_equal(got[name], data[name])
  # Another key is another set (and file); a damaged file or an unwritable folder is passed
  # over and the set rendered as without a cache.
  analytic.cached_solids_set(jax.random.key(8), 1, resolution=8, supersample=1, cache=cache)
  files = sorted(cache.glob("analytic-solids-*.npz"))
  assert len(calls) == 2 and len(files) == 2
  for f in files:
    f.write_bytes(b"not a zip")
  np.testing.assert_array_equal(analytic.cached_solids_set(key, M, cache=cache)["image"],
                                data["image"])
  blocked = tmp_path / "file"
  blocked.write_text("")
  out = analytic.cached_solids_set(jax.random.key(8), 1, resolution=8, supersample=1,
                                   cache=blocked / "priors")
  assert len(calls) == 4 and out["image"].shape == (30, 8, 8, 3)


def test_solids_set_matches_direct_renders(solids):
  data, prior = solids
  n = len(scenes.SOLIDS) * len(scenes.COLOURS) * M
  assert data["image"].shape == (n, 32, 32, 3) and prior.latent_shape == (32, 32, 3)
  cams = cameras.sample(jax.random.key(7), len(scenes.SOLIDS) * M, scenes.camera_config(32))
  for solid, colour, view in [("cube", "yellow", 3), ("torus", "purple", 0),
                              ("cone", "red", 2)]:
    s, c = scenes.SOLIDS.index(solid), scenes.COLOURS.index(colour)
    i = (s * len(scenes.COLOURS) + c) * M + view
    assert (data["solid"][i], data["colour"][i]) == (s, c)
    cam = jax.tree.map(lambda a: a[s * M + view], cams)
    direct = render.render(s, scenes.albedo(colour), cam, supersample=2)["image"]
    np.testing.assert_allclose(data["image"][i], direct, atol=1e-4)  # static vs traced solid
    az, el, _ = cameras.to_spherical(cam)
    assert cameras.VIEW_LABELS[data["view"][i]] == cameras.view_label(az, el)
    assert cameras.AZIMUTH_LABELS[data["sector"][i]] == cameras.view_label(az, el, "azimuth")


def test_solids_prompt_masks(solids):
  data, prior = solids
  mask = lambda p: np.asarray(prior.embed([p])[0, 0]) > 0
  red_cube = mask("a red cube")
  assert red_cube.sum() == M
  assert (data["solid"][red_cube] == 1).all() and (data["colour"][red_cube] == 0).all()
  cube = mask("a cube")
  assert cube.sum() == 6 * M and set(data["colour"][cube]) == set(range(6))
  assert mask("an orange cone").sum() == M
  for label in ("front", "side", "back"):
    sub = mask(f"a cube, {label} view")
    in_view = cube & (data["view"] == cameras.VIEW_LABELS.index(label))
    np.testing.assert_array_equal(sub, in_view if in_view.any() else cube)
  for label in cameras.AZIMUTH_LABELS:
    sub = mask(f"a red cube, {label} view")
    in_sector = red_cube & (data["sector"] == cameras.AZIMUTH_LABELS.index(label))
    np.testing.assert_array_equal(sub, in_sector if in_sector.any() else red_cube)
  # Default elevations stop at 45°: no overhead image, so the suffix is ignored.
  np.testing.assert_array_equal(mask("a cube, overhead view"), cube)
  with pytest.raises(UserError, match="colour"):
    prior.embed(["a photo of a dog"])


def test_solids_eps_matches_the_score_in_float32(solids):
  _, prior = solids
  t = jnp.array([0, 10, 200, 500, 999], jnp.int32)
  x, _ = _noisy(prior, jax.random.key(8), t, np.array([0, 40, 41, 80, 100]))
  mask = prior.embed(["a sphere"])[0, 0]  # Near-duplicate images: mixed posteriors.
  got = jax.jit(prior.model_fn)(prior.params, x, t,
                                jnp.broadcast_to(mask, (5, 1, mask.shape[0])))
  want = _score_eps(prior, x, t, mask)
  assert np.isfinite(got).all()
  scale = np.abs(want).max(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(got / scale, want / scale, atol=1e-4)
