"""LoRA adapters and camera conditioning on the shipped solids prior and a tiny SD pipeline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_pipeline as tp
from jax3d.errors import UserError
from jax3d.priors import lora
from jax3d.priors import registry as priors


@pytest.fixture(scope="module")
def solids():
  return priors.load_prior("solids")


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
  folder = tp.write_tiny_pipeline(tmp_path_factory.mktemp("sd") / "sd", latent=True).folder
  return priors.load_prior(str(folder))


def _inputs(prior, key, batch=2):
  k1, k2, k3 = jax.random.split(key, 3)
  size = prior.latent_shape
  x = jax.random.normal(k1, (batch, *size))
  t = jax.random.randint(k2, (batch,), 1, prior.num_train_timesteps)
  cond = prior.embed(["a red cube", "a blue cone"][:batch])
  c2w = jax.random.normal(k3, (batch, 4, 4))
  return x, t, cond, c2w


def _zero(tree):
  return jax.tree.map(jnp.zeros_like, tree)


def _randomized_b(trained, key, scale=0.05):
  flat = jax.tree_util.tree_flatten_with_path(trained["lora"])[0]
  leaves = [jax.random.normal(jax.random.fold_in(key, i), x.shape) * scale
            if path[-1].key == "b" else x for i, (path, x) in enumerate(flat)]
  return dict(trained, lora=jax.tree.unflatten(jax.tree.structure(trained["lora"]), leaves))


@pytest.mark.parametrize("which", ["solids", "tiny_sd"])
def test_untrained_adapters_and_zero_camera_leave_the_unet_bit_for_bit(which, request):
  prior = request.getfixturevalue(which)
  trained = lora.init_trained(jax.random.key(0), prior, rank=4)
  trained = dict(trained, camera=_zero(trained["camera"]))
  x, t, cond, c2w = _inputs(prior, jax.random.key(1))
  base = np.asarray(jax.jit(prior.model_fn)(prior.params, x, t, cond))
  for merged in (True, False):
    out = jax.jit(lambda p, tr, m=merged: lora.lora_eps(prior, p, tr, x, t, cond, c2w,
                                                         merged=m))(prior.params, trained)
    np.testing.assert_array_equal(np.asarray(out), base)


@pytest.mark.parametrize("which", ["solids", "tiny_sd"])
def test_merged_equals_unmerged_and_both_change_the_output(which, request):
  prior = request.getfixturevalue(which)
  trained = _randomized_b(lora.init_trained(jax.random.key(0), prior, rank=4),
                          jax.random.key(2))
  x, t, cond, c2w = _inputs(prior, jax.random.key(1))
  base = np.asarray(prior.model_fn(prior.params, x, t, cond))
  merged = np.asarray(jax.jit(lambda tr: lora.lora_eps(prior, prior.params, tr, x, t, cond,
                                                       c2w, scale=0.5))(trained))
  unmerged = np.asarray(jax.jit(lambda tr: lora.lora_eps(
      prior, prior.params, tr, x, t, cond, c2w, scale=0.5, merged=False))(trained))
  np.testing.assert_allclose(merged, unmerged, rtol=1e-4, atol=1e-5)
  assert np.abs(merged - base).max() > 1e-3


def test_adapters_cover_every_attention_projection_and_only_b_and_camera_get_gradients(solids):
  """At init (B = 0) the loss's gradient reaches every B and the camera MLP, and no A (their
  output is multiplied by B = 0); nothing of the prior's own params is in the trained tree."""
  trained = lora.init_trained(jax.random.key(0), solids, rank=4)
  paths = lora.target_paths(solids.params["unet"])
  attns = {p[:-1] for p in paths}
  assert len(paths) == 4 * len(attns) and all(p[-1] in lora.PROJECTIONS for p in paths)
  assert {p[-2] for p in paths} == {"attn1", "attn2"}
  flat = jax.tree_util.tree_flatten_with_path(trained)[0]
  assert len(flat) == 2 * len(paths) + 4
  x, t, cond, c2w = _inputs(solids, jax.random.key(1))

  def loss(tr):
    return jnp.mean(lora.lora_eps(solids, solids.params, tr, x, t, cond, c2w) ** 2)
  grads = jax.jit(jax.grad(loss))(trained)
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    name = path[-1].key
    size = float(jnp.abs(g).max())
    if name == "a":
      assert size == 0.0, path
    else:
      assert size > 0.0, path


def test_bad_requests_are_user_errors(solids):
  with pytest.raises(UserError, match="rank must be >= 1"):
    lora.init_trained(jax.random.key(0), solids, rank=0)
  analytic = priors.load_prior("analytic:1")
  with pytest.raises(UserError, match="no UNet network"):
    lora.init_trained(jax.random.key(0), analytic, rank=4)
  with pytest.raises(UserError, match="no attention projections"):
    lora.init(jax.random.key(0), {"conv": {"kernel": jnp.zeros((3, 3))}}, rank=4)
