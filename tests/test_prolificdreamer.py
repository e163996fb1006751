"""The VSD system: every particle and the LoRA network step together, 1 device == 4 devices."""

import jax
import numpy as np
import jax.numpy as jnp
import pytest

import tiny_pipeline as tp

from jax3d.errors import UserError
from jax3d.priors import registry as priors
from jax3d.systems import registry
from jax3d.train import sharding

DEVICES = jax.devices()
TINY = ["camera.height=8", "camera.width=8", "views_per_step=1",
        "field.hashgrid.num_levels=2", "field.hashgrid.log2_table_size=8",
        "field.hashgrid.max_resolution=16", "field.hidden_dim=8", "render.num_samples=8",
        "lora.warmup_steps=0", "lora.lr=1e-2", "lora.camera_drop=0.0"]


@pytest.fixture(scope="module")
def prior():
  return priors.load_prior("solids-azimuth")


def _two_steps(prior, devices, num_particles=4):
  _, cfg = registry.resolve("vsd", None, TINY + [f"num_particles={num_particles}"])
  system = registry.make_system("vsd", "a red cube", cfg, prior,
                                sharding.make_mesh(num_particles, devices))
  state = system.init(jax.random.key(0))
  first = jax.tree.map(np.asarray, state)
  for i in range(2):
    state, metrics = system.train_step(state, jax.random.fold_in(jax.random.key(1), i))
  return system, first, state, metrics


def test_every_particle_and_the_lora_step_together_and_four_devices_equal_one(prior):
  system, first, state, metrics = _two_steps(prior, DEVICES)
  assert len(DEVICES) == 4 and "lora_loss" in metrics and np.isfinite(metrics["loss"])
  # The LoRA network learned (B left zero) and is replicated; particles are split and moved.
  b = [x for p, x in jax.tree_util.tree_flatten_with_path(state.shared["params"]["lora"])[0]
       if p[-1].key == "b"]
  assert all(float(np.abs(x).max()) > 0 for x in b)
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state.shared))
  enc = state.particles["params"]["encoding"]
  assert enc.sharding.spec[0] == sharding.PARTICLES
  moved = np.abs(np.asarray(enc) - first.particles["params"]["encoding"]).reshape(4, -1)
  assert (moved.max(axis=1) > 0).all()
  # One device: the same states up to float order. Two programs may round a sample's position
  # differently by an ulp, and a sample on a cell boundary then feeds other grid corners,
  # whose first Adam steps (±lr whatever the gradient's size) differ by up to 2·lr = 0.02; so
  # all but 0.5 % of each particle leaf's entries must agree to 1e-3 (a wrong reduction or a
  # particle's stray key changes most of them). The LoRA (AdamW, 1e-2): entries with
  # near-zero gradients differ by ~1e-4.
  _, _, single, _ = _two_steps(prior, DEVICES[:1])
  for a, c in zip(jax.tree.leaves(jax.tree.map(np.asarray, state.shared["params"])),
                  jax.tree.leaves(jax.tree.map(np.asarray, single.shared["params"]))):
    np.testing.assert_allclose(a, c, rtol=1e-3, atol=2e-4)
  for a, c in zip(jax.tree.leaves(jax.tree.map(np.asarray, state.particles["params"])),
                  jax.tree.leaves(jax.tree.map(np.asarray, single.particles["params"]))):
    assert np.mean(np.abs(a - c) > 1e-3) <= 5e-3, np.sort(np.abs(a - c).ravel())[-8:]


def test_vsd_refuses_a_prior_without_a_unet():
  _, cfg = registry.resolve("vsd", None, TINY)
  with pytest.raises(UserError, match="no UNet network"):
    registry.make_system("vsd", "a red cube", cfg, priors.load_prior("analytic:1"))


def test_remat_reaches_the_step_and_changes_no_gradient(prior, tmp_path, monkeypatch):
  """`lora.remat` wraps the LoRA update's UNet in jax.checkpoint (seen by a spy while the
  LoRA loss is traced), and on a tiny latent SD pipeline the rematerialised VAE encoder
  (`guidance.remat_encoder`, test_dreamfusion) passes the same gradient to the images."""
  _, cfg = registry.resolve("vsd", None, TINY + ["num_particles=1", "lora.remat=True"])
  system = registry.make_system("vsd", "a red cube", cfg, prior,
                                sharding.make_mesh(1, DEVICES[:1]))
  wrapped, checkpoint = [], jax.checkpoint
  monkeypatch.setattr(jax, "checkpoint", lambda f, **kw: wrapped.append(f) or checkpoint(f, **kw))
  state = system.init(jax.random.key(0))
  outputs = {"x0": jnp.zeros((1, 1) + tuple(prior.latent_shape)), "c2w": jnp.eye(4)[None, None]}
  jax.eval_shape(lambda sh: system.shared_loss(sh, outputs, jax.random.key(1), 0,
                                               system.inputs)[0], state.shared["params"])
  assert len(wrapped) == 1
  monkeypatch.setattr(jax, "checkpoint", checkpoint)

  sd = priors.load_prior(str(tp.write_tiny_pipeline(tmp_path / "sd", latent=True).folder))
  images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  weights = jax.random.normal(jax.random.key(2), sd.encode(sd.params, images).shape)
  plain, remat = (jax.jit(jax.grad(lambda im, enc=enc: jnp.sum(weights * enc(sd.params, im))))(
      images) for enc in (sd.encode, jax.checkpoint(sd.encode)))
  # Recomputation fuses differently: float order, relative to the gradient's scale.
  plain, remat = np.asarray(plain), np.asarray(remat)
  np.testing.assert_allclose(plain, remat, rtol=1e-5, atol=1e-5 * np.abs(plain).max())
