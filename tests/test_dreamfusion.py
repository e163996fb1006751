"""The DreamFusion system: particles are independent, and sharding does not change results."""

import jax
import numpy as np
import pytest

from jax3d import configuration
from jax3d.errors import UserError
from jax3d.priors import analytic
from jax3d.systems import dreamfusion
from jax3d.systems import registry
from jax3d.train import sharding


def tiny_config(num_particles):
  c = configuration.load("dreamfusion:toy")
  c.num_particles = num_particles
  c.views_per_step = 1
  c.camera.height = c.camera.width = 8
  c.field.hashgrid.update(num_levels=2, log2_table_size=8, base_resolution=4,
                         max_resolution=8)
  c.field.hidden_dim = 8
  c.render.num_samples = 8
  return c


@pytest.fixture(scope="module")
def prior():
  images = np.random.default_rng(0).uniform(size=(3, 8, 8, 3)).astype(np.float32)
  # Every prompt (with or without a view suffix) denotes image 0; "" is the whole set.
  return analytic.analytic_prior(images, lambda p: np.array([True, False, False]))


def _run(prior, num_particles, devices, steps=2, particle_ids=None):
  cfg = configuration.typed(dreamfusion.Config, tiny_config(num_particles))
  system = dreamfusion.DreamFusion("p", cfg, prior,
                                   mesh=sharding.make_mesh(num_particles, devices))
  state = system.init(jax.random.key(0), particle_ids)
  for i in range(steps):
    state, metrics = system.train_step(state, jax.random.fold_in(jax.random.key(1), i))
  return system, state, metrics


@pytest.fixture(scope="module")
def four_sharded(prior):
  assert len(jax.devices()) == 4
  return _run(prior, 4, jax.devices())


def test_state_is_sharded_over_particles(four_sharded):
  _, state, metrics = four_sharded
  table = state.particles["params"]["encoding"]
  assert table.shape[0] == 4
  assert len(table.sharding.device_set) == 4
  assert table.sharding.spec[0] == sharding.PARTICLES
  assert all(np.isfinite(float(v)) for v in metrics.values())


def test_four_devices_match_one_device(prior, four_sharded):
  _, sharded, _ = four_sharded
  _, single, _ = _run(prior, 4, jax.devices()[:1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=1e-5, atol=1e-5),
               sharded.particles["params"], single.particles["params"])


def test_one_particle_equals_a_single_particle_run(prior, four_sharded):
  _, population, _ = four_sharded
  _, alone, _ = _run(prior, 1, jax.devices()[:1], particle_ids=[2])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a)[2], np.asarray(b)[0],
                                                       rtol=1e-5, atol=1e-5),
               population.particles["params"], alone.particles["params"])


def test_particles_differ_and_training_moves_them(prior, four_sharded):
  system, state, _ = four_sharded
  init = system.init(jax.random.key(0))
  moved = np.abs(np.asarray(state.particles["params"]["mlp"][0]["w"]) -
                 np.asarray(init.particles["params"]["mlp"][0]["w"])).max()
  assert moved > 0
  w = np.asarray(state.particles["params"]["mlp"][0]["w"])
  assert not np.allclose(w[0], w[1])


def test_uneven_particles_share_devices_over_a_views_axis():
  """P particles on D devices: a (gcd(P, D), D / gcd(P, D)) mesh of particles x views."""
  devices = jax.devices()
  assert dict(sharding.make_mesh(6, devices).shape) == {"particles": 2, "views": 2}
  assert dict(sharding.make_mesh(1, devices).shape) == {"particles": 1, "views": 4}
  assert dict(sharding.make_mesh(4, devices).shape) == {"particles": 4, "views": 1}
  assert dict(sharding.make_mesh(3, devices[:1]).shape) == {"particles": 1, "views": 1}
  with pytest.raises(UserError, match="--particles must be >= 1"):
    sharding.make_mesh(0, devices)


def test_view_guidance_reaches_the_step():
  """guidance.view_scale = scale is plain CFG (same step); another scale changes it."""
  images = np.random.default_rng(1).uniform(size=(3, 8, 8, 3)).astype(np.float32)
  # The bare prompt denotes images 0 and 1, each view-suffixed one image 0 only.
  prior = analytic.analytic_prior(images, lambda p: np.array([True, p == "p", False]))

  def step(view_scale):
    c = tiny_config(1)
    c.guidance.view_scale = view_scale
    system = dreamfusion.DreamFusion("p", configuration.typed(dreamfusion.Config, c), prior,
                                     mesh=sharding.make_mesh(1, jax.devices()[:1]))
    state, _ = system.train_step(system.init(jax.random.key(0)), jax.random.key(1))
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.particles["params"])])

  off = step(0.0)
  np.testing.assert_allclose(step(100.0), off, rtol=1e-4, atol=1e-6)
  assert np.abs(step(300.0) - off).max() > 1e-4


def test_auto_view_labels_are_the_priors_and_the_config_names_the_prior():
  from jax3d.train import runner  # pylint: disable=g-import-not-at-top
  images = np.zeros((2, 8, 8, 3), np.float32)
  azimuth_prior = analytic.analytic_prior(images, lambda p: np.ones(2, bool),
                                          view_schemes=("azimuth",))
  c = tiny_config(1)
  assert c.guidance.view_labels == "auto"
  system = registry.make_system("sds", "p", c, azimuth_prior)
  assert system.view_scheme == "azimuth" and system.conds["views"].shape[0] == 12
  assert c.guidance.view_labels == "auto"  # the caller's config is left as it was
  assert system.config.guidance.view_labels == "auto"
  assert registry.make_system("sds", "p", c, prior_of_images(images)).view_scheme == (
      "dreamfusion")
  assert runner.resolve_prior(None, c) == "solids-azimuth"  # the toy presets' default
  assert runner.resolve_prior("analytic", c) == "analytic"
  # The exact prior's preset: denser image set, CFG 10, azimuth words, no view guidance.
  ca = configuration.load("dreamfusion:toy-analytic")
  assert runner.resolve_prior(None, ca) == "analytic:256"
  assert (ca.guidance.scale, ca.guidance.view_labels, ca.guidance.view_scale) == (
      10.0, "azimuth", 0.0)
  with pytest.raises(UserError, match="not a solids prompt"):
    runner.check_prompt_for_prior("a photo of a dog", "analytic:256")
  assert runner.resolve_prior(None, configuration.load("sjc:toy")) == "solids-azimuth"
  with pytest.raises(UserError, match="names no prior"):
    runner.resolve_prior(None, configuration.load("sjc:sd"))


def prior_of_images(images):
  return analytic.analytic_prior(images, lambda p: np.ones(images.shape[0], bool))


def test_remat_encoder_wraps_the_encoder(prior, monkeypatch):
  """`guidance.remat_encoder` puts the prior's encoder under jax.checkpoint in the particle
  loss (a spy sees it while the loss's gradient is traced); that checkpointing leaves the
  encoder's gradient unchanged is tested on a latent SD pipeline in test_prolificdreamer."""
  for remat in (False, True):
    c = tiny_config(1)
    c.guidance.remat_encoder = remat
    cfg = configuration.typed(dreamfusion.Config, c)
    system = dreamfusion.DreamFusion("p", cfg, prior,
                                     mesh=sharding.make_mesh(1, jax.devices()[:1]))
    wrapped, checkpoint = [], jax.checkpoint
    monkeypatch.setattr(jax, "checkpoint", lambda f, **kw: wrapped.append(f) or checkpoint(f, **kw))
    params = system.init_particle(jax.random.key(0))
    jax.eval_shape(jax.grad(lambda p: system.particle_loss(
        p, None, jax.random.key(1), 0, system.inputs)[0]), params)
    monkeypatch.setattr(jax, "checkpoint", checkpoint)
    assert wrapped == ([prior.encode] if remat else [])
