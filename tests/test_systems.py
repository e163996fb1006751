"""The system contract: a new method is one system file + one config + one registry line; the
population step's shared part reduces across devices exactly as on one; placements."""

from __future__ import annotations

import dataclasses
import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax3d import cli
from jax3d import configuration
from jax3d.errors import UserError
from jax3d.priors import analytic
from jax3d.systems import base
from jax3d.systems import registry
from jax3d.systems import settings
from jax3d.train import sharding

DEVICES = jax.devices()

# ---- a dummy third method, written as a user would ---------------------------------------

SYSTEM_FILE = '''
"""A dummy method: hash-grid NeRFs (a density blob at init) whose renders are pulled toward
a plain grey image."""
import dataclasses

import jax
import jax.numpy as jnp

from jax3d.fields import radiance
from jax3d.systems import base, field_system


@dataclasses.dataclass(frozen=True)
class Config(field_system.FieldRunConfig):
  field: radiance.FieldConfig
  guidance: field_system.ViewWords
  grey: float


class Dummy(field_system.FieldSystem):
  Config = Config

  def __init__(self, prompt, config, prior, mesh=None):
    super().__init__(prompt, config, prior, radiance.make(config.field), mesh)

  def particle_loss(self, params, shared_params, key, step, inputs):
    cams, _ = self.sample_views(key)
    color = self.render_views(params, cams, jax.random.fold_in(key, 1))["color"]
    loss = jnp.mean((color - self.config.grey) ** 2)
    return loss, ({"loss": loss, "mean_opacity": jnp.mean(color)}, None)

  def step_parts(self, state, key):
    cams, _ = self.sample_views(key)
    return base.StepParts(render=lambda p, k: self.render_views(p, cams, k)["color"],
                          guidance=lambda pp, x0, k: x0 - self.config.grey)
'''

CONFIG_FILE = '''
import ml_collections
from jax3d.configs import _common


def get_config(preset=None):
  c = ml_collections.ConfigDict()
  c.method = "dummy"
  c.seed = 0
  c.prior = "analytic"
  c.num_particles = 1
  c.num_steps = 4
  c.views_per_step = 1
  c.camera = _common.camera(8)
  c.field = ml_collections.ConfigDict(dict(
      kind="nerf", nerf=_common.nerf_field(), voxel=_common.voxel_field()))
  c.field.nerf.hashgrid.update(num_levels=2, log2_table_size=8, max_resolution=16)
  c.field.nerf.hidden_dim = 8
  c.render = ml_collections.ConfigDict(dict(num_samples=8, bound=1.0, stratified=True,
                                            min_near=0.0))
  c.guidance = ml_collections.ConfigDict()
  _common.view_words(c)
  c.background = (1.0, 1.0, 1.0)
  c.grey = 0.5
  c.optim = _common.optim("adam", lr_grid=0.1, lr_mlp=0.1, b1=0.9, b2=0.99, eps=1e-8)
  _common.add_runner(c)
  c.checkpoint_every = 2
  c.preview_every = 2
  c.export.update(mesh_resolution=16, video_frames=2, video_size=16)
  return c
'''


def _tiny_analytic():
  images = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
  return analytic.analytic_prior(images, lambda p: np.array([True, False]))


def test_a_third_method_is_one_system_file_one_config_one_registry_line(tmp_path, monkeypatch):
  (tmp_path / "dummy_system.py").write_text(textwrap.dedent(SYSTEM_FILE))
  (tmp_path / "dummy.py").write_text(textwrap.dedent(CONFIG_FILE))
  monkeypatch.syspath_prepend(str(tmp_path))
  # The one registry line:
  monkeypatch.setitem(registry.SYSTEMS, "dummy",
                      registry.Entry("dummy_system:Dummy", f"{tmp_path / 'dummy.py'}:default"))
  # The analytic prior of two 8x8 images stands in for a real one (the registry loads it).
  monkeypatch.setattr("jax3d.priors.registry.load_prior", lambda spec, **_: _tiny_analytic())

  work = tmp_path / "run"
  assert cli.main(["generate", "a red cube", "--method", "dummy", "--workdir", str(work)]) == 0
  for name in ("mesh.glb", "mesh.obj", "turntable.mp4", "turntable.gif", "metrics.json"):
    assert (work / "final" / name).is_file(), name
  assert (work / "previews" / "step_000004.png").is_file()
  run = json.loads((work / "config.json").read_text())["run"]
  assert run["method"] == "dummy" and run["config"]["grey"] == 0.5
  metrics = json.loads((work / "final" / "metrics.json").read_text())
  assert metrics["steps"] == 4 and np.isfinite(metrics["final_metrics"]["loss"])
  # The runner resumes it, the bench times it, and a contradicting --method is refused.
  assert cli.main(["generate", "a red cube", "--method", "dummy", "--workdir", str(work)]) == 0
  out = tmp_path / "step.json"
  assert cli.main(["bench", "step", "--method", "dummy", "--quick", "--repeats", "1",
                   "--out", str(out)]) == 0
  rows = json.loads(out.read_text())["rows"]
  assert rows[0]["method"] == "dummy" and rows[0]["step_s"] > 0
  assert cli.main(["generate", "a red cube", "--method", "sds", "--config",
                   f"{tmp_path / 'dummy.py'}", "--workdir", str(tmp_path / "x")]) == 2


# ---- the population step's shared part -----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PullConfig(settings.RunConfig):
  lr: float


class Pull(base.PopulationSystem):
  """Particles w_p (3,) descend ½|w_p − s|² (s: the shared vector, no gradient there); the
  shared part descends mean_p |s − o_p|² with o_p = w_p + noise_p (the particles' outputs), so
  its SGD update is s − lr·2·(s − mean_p o_p): a mean over the particle axis."""

  def __init__(self, config, mesh):
    super().__init__(config, None, mesh)
    self.particle_tx = optax.sgd(config.lr)
    self.shared_tx = optax.sgd(config.lr)

  def step_inputs(self):
    return {"offset": jnp.arange(3.0)}

  def init_particle(self, key):
    return jax.random.normal(key, (3,))

  def init_shared(self, key):
    return jax.random.normal(key, (3,))

  def particle_loss(self, params, shared_params, key, step, inputs):
    loss = 0.5 * jnp.sum((params - shared_params) ** 2)
    out = jax.lax.stop_gradient(params) + jax.random.normal(key, (3,)) + inputs["offset"]
    return loss, ({"loss": loss}, {"o": out})

  def shared_loss(self, shared_params, outputs, key, step, inputs):
    loss = jnp.mean(jnp.sum((shared_params - outputs["o"]) ** 2, axis=-1))
    return loss, {"shared_loss": loss}


def _pull(num_particles, devices, steps=3):
  cfg = PullConfig(method="pull", seed=0, prior="", num_particles=num_particles, num_steps=steps,
                   log_every=1, preview_every=0, checkpoint_every=1, export=None, lr=0.1)
  system = Pull(cfg, sharding.make_mesh(num_particles, devices))
  state = system.init(jax.random.key(0))
  history = [jax.tree.map(np.asarray, state)]
  for i in range(steps):
    state, metrics = system.train_step(state, jax.random.fold_in(jax.random.key(1), i))
    history.append(jax.tree.map(np.asarray, state))
  return system, state, history, metrics


@pytest.mark.parametrize("num_particles", [4, 8, 2])
def test_shared_reduction_on_four_devices_equals_one_device_and_the_closed_form(num_particles):
  system, state, history, metrics = _pull(num_particles, DEVICES)
  assert len(DEVICES) == 4
  # Placement: particle leaves split over `particles`, shared leaves on all four devices.
  w = state.particles["params"]
  assert w.sharding.spec[0] == sharding.PARTICLES and len(w.sharding.device_set) == 4
  s = state.shared["params"]
  assert s.sharding.is_fully_replicated and len(s.sharding.device_set) == 4
  _, _, single, _ = _pull(num_particles, DEVICES[:1])
  for a, b in zip(jax.tree.leaves(history[-1]), jax.tree.leaves(single[-1])):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  # The closed form, step by step, from each step's own state and keys.
  for i in range(3):
    before, after = history[i], history[i + 1]
    key = jax.random.fold_in(jax.random.key(1), i)
    w, s = before.particles["params"], before.shared["params"]
    noise = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(key, pid), (3,)))
                      for pid in before.particles["particle_id"]])
    o = w + noise + np.arange(3.0)
    np.testing.assert_allclose(after.shared["params"], s - 0.1 * 2 * (s - o.mean(0)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after.particles["params"], w - 0.1 * (w - s), rtol=1e-5,
                               atol=1e-6)
  assert int(history[-1].step) == 3 and "shared_loss" in metrics


def test_uneven_populations_use_every_device():
  assert dict(sharding.make_mesh(6, DEVICES).shape) == {"particles": 2, "views": 2}
  assert dict(sharding.make_mesh(1, DEVICES).shape) == {"particles": 1, "views": 4}
  assert dict(sharding.make_mesh(8, DEVICES).shape) == {"particles": 4, "views": 1}
  assert dict(sharding.make_mesh(3, DEVICES).shape) == {"particles": 1, "views": 4}


# ---- placements inside the step of a real system ------------------------------------------

def _dreamfusion(prior, num_particles, devices):
  c = configuration.load("dreamfusion:toy")
  c.num_particles = num_particles
  c.views_per_step = 1
  c.camera.height = c.camera.width = 8
  c.field.hashgrid.update(num_levels=2, log2_table_size=8, base_resolution=4, max_resolution=8)
  c.field.hidden_dim = 8
  c.render.num_samples = 8
  c.guidance.view_scale = 0.0
  return registry.make_system("sds", "p", c, prior, sharding.make_mesh(num_particles, devices))


@pytest.mark.parametrize("num_particles", [1, 4])
def test_prior_weights_are_replicated_inside_the_step(num_particles):
  prior = _tiny_analytic()
  seen = []

  def model_fn(params, x, t, context):
    jax.debug.inspect_array_sharding(params["images"], callback=seen.append)
    return prior.model_fn(params, x, t, context)

  spy = dataclasses.replace(prior, model_fn=model_fn)
  system = _dreamfusion(spy, num_particles, DEVICES)
  system.train_step(system.init(jax.random.key(0)), jax.random.key(1))
  assert seen, "the step never called the prior"
  for s in seen:
    assert s.is_fully_replicated and len(s.device_set) == 4, s


def test_one_particle_splits_its_rays_over_every_device(monkeypatch):
  prior = _tiny_analytic()
  seen = []
  split = sharding.split_rays

  def spy(x, mesh):
    y = split(x, mesh)
    jax.debug.inspect_array_sharding(y, callback=seen.append)
    return y

  monkeypatch.setattr(sharding, "split_rays", spy)
  four = _dreamfusion(prior, 1, DEVICES)
  state, _ = four.train_step(four.init(jax.random.key(0)), jax.random.key(1))
  assert seen and all(len(s.device_set) == 4 and not s.is_fully_replicated for s in seen)
  one = _dreamfusion(prior, 1, DEVICES[:1])
  alone, _ = one.train_step(one.init(jax.random.key(0)), jax.random.key(1))
  for a, b in zip(jax.tree.leaves(state.particles), jax.tree.leaves(alone.particles)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_compiled_ahead_step_is_the_jitted_step_and_counts_its_memory():
  """`compile_step` on 4 devices: the step it compiles gives the jitted step's states bit for
  bit, and its memory figure is at least the per-device arguments (state + inputs)."""
  system, _, history, _ = _pull(4, DEVICES)
  fresh = Pull(system.config, system.mesh)
  need = fresh.compile_step()
  state = fresh.init(jax.random.key(0))
  per_device = sum(x.addressable_shards[0].data.nbytes
                   for x in jax.tree.leaves((state, fresh.inputs)))
  assert need is not None and need >= per_device
  for i in range(3):
    state, _ = fresh.train_step(state, jax.random.fold_in(jax.random.key(1), i))
  for a, b in zip(jax.tree.leaves(jax.tree.map(np.asarray, state)),
                  jax.tree.leaves(history[-1])):
    np.testing.assert_array_equal(a, b)
  assert fresh._jitted_step._cache_size() == 0  # pylint: disable=protected-access


def test_step_memory_grows_with_the_render_and_refuses_what_cannot_fit(monkeypatch):
  """XLA's estimate for a DreamFusion step is affine in the pixels rendered (the growth from
  32² to 64² is 4x that from 16² to 32²); a step larger than the device's memory is a
  one-line UserError naming the settings to lower."""
  from jax3d.errors import UserError  # pylint: disable=g-import-not-at-top
  from jax3d.train import memory  # pylint: disable=g-import-not-at-top
  prior = _tiny_analytic()
  needs = {}
  for size in (16, 32, 64):
    _, cfg = registry.resolve(None, None, [f"camera.height={size}", f"camera.width={size}",
                                           "views_per_step=1", "render.num_samples=16"])
    system = registry.make_system("sds", "a red cube", cfg, prior,
                                  sharding.make_mesh(1, DEVICES[:1]))
    needs[size] = system.compile_step()
  growth = (needs[64] - needs[32]) / (needs[32] - needs[16])
  assert 3.4 < growth < 4.6, needs
  monkeypatch.setattr(memory, "device_bytes", lambda devices: needs[64] - 1)
  with pytest.raises(UserError, match=r"camera.height/width \(64x64\), render.num_samples "
                                      r"\(16\), views_per_step \(1\)"):
    memory.check_step_fits(needs[64], DEVICES[:1], memory.step_hint(system.config))
  memory.check_step_fits(needs[16], DEVICES[:1], memory.step_hint(system.config))


def test_the_density_rate_switches_at_its_step():
  """Adamax under a constant gradient g moves each leaf by exactly -lr·sign(g) a step (its
  bias-corrected first moment is g, its infinity norm |g|): the density's steps are
  lr_density until `density_switch_step`, then lr_density_late; the grid's stay lr_grid."""
  cfg = settings.OptimConfig(name="adamax", lr_grid=0.05, lr_mlp=0.05, b1=0.9, b2=0.999,
                             eps=1e-12, grad_clip=0.0, lr_density=0.01, lr_density_late=0.02,
                             density_switch_step=2)
  params = {"d": jnp.zeros(3), "g": jnp.zeros(3)}
  tx = settings.make_optimizer(cfg, {"d": "density", "g": "grid"})
  state, steps = tx.init(params), []
  for _ in range(4):
    updates, state = tx.update({"d": jnp.ones(3), "g": -jnp.ones(3)}, state, params)
    steps.append((float(updates["d"][0]), float(updates["g"][0])))
  np.testing.assert_allclose(steps, [(-0.01, 0.05), (-0.01, 0.05), (-0.02, 0.05),
                                     (-0.02, 0.05)], rtol=1e-5)
  with pytest.raises(UserError, match="must be >= 0"):
    dataclasses.replace(cfg, density_switch_step=-1)
