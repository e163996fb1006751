"""`jax3d train-prior` on a tiny config: it learns, resumes exactly, and exports a loadable prior."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cpu_env
from jax3d import configuration
from jax3d.priors import registry
from jax3d.solids import dataset as dataset_lib
from jax3d.train import prior as prior_train
from jax3d.train.checkpoint import Checkpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def tiny(num_steps=6):
  cfg = configuration.load("solids_prior:tiny")
  cfg.train.num_steps = num_steps
  return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """An uninterrupted 6-step run (exports its folder)."""
  work = str(tmp_path_factory.mktemp("prior") / "ref")
  summary = prior_train.train(work, tiny(), enable_bar=False)
  return work, summary


def _params(work):
  ckpt = Checkpointer(os.path.join(work, "checkpoints"))
  try:
    return ckpt.latest_step(), ckpt._manager.restore(ckpt.latest_step())["state"]  # pylint: disable=protected-access
  finally:
    ckpt.close()


def test_captions_table_matches_the_indexing():
  texts = dataset_lib.caption_texts()
  assert texts[-1] == "" and len(texts) == dataset_lib.empty_caption_index() + 1
  # Object 7 = cube (solid 1) in orange (colour 1); view 3 = "side"; colour given; right article.
  assert texts[dataset_lib.caption_index(7, 2, 0, 0)] == "an orange cube, side view"
  assert texts[dataset_lib.caption_index(7, 0, 1, 1)] == "an cube"
  assert texts[dataset_lib.caption_index(0, 0, 0, 0)] == "a red sphere"


def test_azimuth_captions_are_whole_word_tokens():
  texts = dataset_lib.caption_texts("azimuth")
  assert len(texts) == dataset_lib.empty_caption_index("azimuth") + 1
  assert texts[dataset_lib.caption_index(7, 2, 0, 0, "azimuth")] == (
      "an orange cube, azimuth 30 view")
  assert texts[dataset_lib.caption_index(0, 12, 1, 0, "azimuth")] == "a sphere, azimuth 330 view"
  tokens = np.asarray(prior_train._tokenize(texts[:-1], 16))  # pylint: disable=protected-access
  # Every caption fits the 16-token context untruncated (it ends in EOS padding) and the
  # distinct captions are distinct token sequences.
  eos = tokens[0, -1]
  assert (tokens[:, -1] == eos).all()
  assert len({t.tobytes() for t in tokens}) == len(set(texts[:-1]))
  one = np.asarray(prior_train._tokenize(["a red cube, azimuth 330 view"], 16))[0]  # pylint: disable=protected-access
  # BOS, a, red, cube, ",", azimuth (one token), 3, 3, 0 (CLIP splits digits), view, EOS.
  assert (one != eos).sum() == 10 and one[10] == eos


def test_a_prior_trained_with_azimuth_labels_declares_them(trained, tmp_path):
  from jax3d.errors import UserError  # pylint: disable=g-import-not-at-top
  from jax3d.systems import dreamfusion  # pylint: disable=g-import-not-at-top
  cfg = tiny(num_steps=2)
  cfg.data.view_labels = "azimuth"
  summary = prior_train.train(str(tmp_path / "az"), cfg, enable_bar=False)
  prior = registry.load_prior(summary["exported"])
  assert prior.view_schemes == ("azimuth",)
  assert registry.load_prior(trained[1]["exported"]).view_schemes == ("dreamfusion",)
  system_cfg = configuration.load("dreamfusion:toy")
  system_cfg.camera.height = system_cfg.camera.width = 16
  system_cfg.guidance.view_labels = "azimuth"
  system = dreamfusion.DreamFusion(
      "a red cube", configuration.typed(dreamfusion.Config, system_cfg), prior)
  assert system.view_scheme == "azimuth" and system.conds["views"].shape[0] == 12
  system_cfg.guidance.view_labels = "dreamfusion"
  with pytest.raises(UserError, match="trained with view labels azimuth"):
    dreamfusion.DreamFusion("a red cube", configuration.typed(dreamfusion.Config, system_cfg),
                            prior)


@pytest.mark.parametrize("scheme", ["dreamfusion", "azimuth"])
def test_mirrored_views_label_the_mirror_image(scheme):
  """A flipped render of a cube from azimuth φ is the render from −φ, and `mirrored_views`
  gives the label of −φ (brute force over azimuths away from sector edges)."""
  from jax3d import cameras  # pylint: disable=g-import-not-at-top
  from jax3d.solids import render  # pylint: disable=g-import-not-at-top
  cams = cameras.from_spherical(np.array([37.0, -37.0]), np.array([20.0, 20.0]), 2.0, 40.0,
                                24, 24)
  images = np.asarray(render.render_batch("cube", np.ones((2, 3)), cams)["image"])
  np.testing.assert_allclose(images[0][:, ::-1], images[1], atol=2e-3)
  az = np.linspace(-359.0, 359.0, 719) + 0.37
  got = dataset_lib.mirrored_views(np.asarray(cameras.view_index(az, 10.0, scheme)), scheme)
  np.testing.assert_array_equal(got, cameras.view_index(-az, 10.0, scheme))


def test_loss_decreases_on_a_fixed_batch(trained):
  cfg = tiny(num_steps=15)
  cfg.train.learning_rate = 5e-3
  setup = prior_train.prepare(trained[0], cfg)  # Reuses the cached dataset.
  key = jax.random.key(42)
  loss = jax.jit(setup.loss)
  before = float(loss(setup.state["params"], setup.data, key))
  state = setup.state
  for i in range(cfg.train.num_steps):
    state, _ = setup.step(state, setup.data, jax.random.fold_in(setup.train_key, i))
  after = float(loss(state["params"], setup.data, key))
  assert after < 0.7 * before, (before, after)


def test_resume_after_a_stop_equals_an_uninterrupted_run(trained, tmp_path):
  ref_work, ref_summary = trained
  work = str(tmp_path / "resumed")
  first = prior_train.train(work, tiny(), stop_after=4, enable_bar=False)
  assert first["step"] == 4 and "exported" not in first
  second = prior_train.train(work, tiny(), enable_bar=False)
  assert second["resumed_from"] == 4 and second["step"] == 6
  (s1, a), (s2, b) = _params(ref_work), _params(work)
  assert s1 == s2 == 6
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
  assert ref_summary["final_loss"] == second["final_loss"]


def test_exported_folder_loads_through_the_diffusers_loader(trained):
  work, summary = trained
  prior = registry.load_prior(summary["exported"])
  assert not prior.latent and prior.latent_shape == (16, 16, 3)
  cond = prior.embed(["a red cube", "a torus, side view"])
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  eps = prior.eps(prior.params, x, jnp.array([10, 900]), cond, prior.uncond(2), 3.0)
  assert eps.shape == (2, 16, 16, 3) and bool(jnp.all(jnp.isfinite(eps)))


def test_truncated_weights_are_a_one_line_error(trained, tmp_path):
  _, summary = trained
  broken = tmp_path / "broken"
  shutil.copytree(summary["exported"], broken)
  weights = broken / "unet" / "diffusion_flax_model.msgpack"
  data = weights.read_bytes()
  weights.write_bytes(data[:len(data) // 3])
  out = tmp_path / "grid.png"
  r = subprocess.run([sys.executable, "-m", "jax3d.cli", "sample", "a red cube", "--prior",
                      str(broken), "--num", "1", "--steps", "2", "--out", str(out)],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-1500:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("jax3d: error:") and "Traceback" not in r.stderr
  assert not out.exists()


@pytest.mark.skipif(not registry.shipped_solids_path().is_dir(),
                    reason="the shipped solids prior is not in this checkout")
@pytest.mark.parametrize("name,scheme", [("solids", "dreamfusion"),
                                         ("solids-azimuth", "azimuth")])
def test_shipped_priors_give_finite_eps(name, scheme):
  prior = registry.load_prior(name)
  assert prior.latent_shape == (32, 32, 3) and prior.resolution == 32
  assert prior.view_schemes == (scheme,)
  cond = prior.embed(["a blue cone"])
  x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
  # Jitted: the eager UNet call costs more than compiling it (the two priors share one HLO).
  eps = jax.jit(prior.eps)(prior.params, x, jnp.array([500]), cond, prior.uncond(1),
                           prior.default_guidance_scale)
  assert eps.shape == (1, 32, 32, 3) and bool(jnp.all(jnp.isfinite(eps)))


def _zeros_like_init(nets):
  """Zeros shaped as `init_params` (the eager initializer of the full model takes seconds)."""
  from jax3d.priors import solids_model  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(lambda key: solids_model.init_params(nets, key), jax.random.key(0))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def test_fine_tuning_starts_from_the_shipped_weights():
  """`train.init_from=solids` copies the shipped UNet and text encoder; rows of tokens the
  shipped vocabulary has ('azimuth' it has not) are matched by string, so the new tokenizer
  and the copied encoder embed a shipped-vocabulary prompt exactly as the shipped prior does."""
  from jax3d.errors import UserError  # pylint: disable=g-import-not-at-top
  from jax3d.priors import solids_model  # pylint: disable=g-import-not-at-top
  cfg = configuration.load("solids_prior")
  nets = solids_model.build(configuration.typed(solids_model.ModelConfig, cfg.model, "model"))
  params = prior_train.params_from_folder(_zeros_like_init(nets), "solids")
  shipped = registry.load_prior("solids")
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               params["unet"], shipped.params["unet"])
  prompts = ["a red cube", "a torus, side view", ""]
  tokens = prior_train._tokenize(prompts, cfg.model.max_length)  # pylint: disable=protected-access
  got = solids_model.encode_text(nets, params["text"], jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(got), np.asarray(shipped.embed(prompts)), atol=1e-5)
  with pytest.raises(UserError, match="shapes config.model builds"):
    tiny_nets = solids_model.build(
        configuration.typed(solids_model.ModelConfig, tiny().model, "model"))
    prior_train.params_from_folder(_zeros_like_init(tiny_nets), "solids")



def test_two_processes_train_the_prior_as_one_with_four_devices(trained, tmp_path):
  """`train-prior --distributed` as 2 processes x 2 CPU devices (launch/local.sh): the batch is
  split over all four devices as in this 4-device process, so the run ends where `trained`
  did, up to float order; process 0 alone writes the folder's files."""
  ref_work, _ = trained
  work = tmp_path / "two"
  env = cpu_env.subprocess_env(2, JAX3D_LOCAL_DEVICES="2")
  p = subprocess.run(
      ["bash", os.path.join(REPO, "launch", "local.sh"), "2", sys.executable, "-m", "jax3d",
       "train-prior", "--config", "solids_prior:tiny", "--workdir", str(work),
       "--init-timeout", "60"], env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0 and "process 1: done at step 6" in p.stderr, p.stderr[-3000:]
  assert os.path.isdir(work / "solids-prior") and os.path.isfile(work / "train_summary.json")
  with open(work / "train_summary.json") as f:
    assert '"processes": 2' in f.read()
  s1, a = _params(ref_work)
  like = jax.tree.map(jnp.asarray, a)  # on this process's device: the saved one's are gone
  ckpt = Checkpointer(str(work / "checkpoints"))
  try:
    b, _, s2 = ckpt.restore(like)
  finally:
    ckpt.close()
  assert s1 == s2 == 6
  # Float order differs across processes; Adam turns a near-zero gradient's flipped sign into
  # a ±lr step, so a few entries may differ by ~lr, and a wrong reduction changes most.
  x = np.concatenate([np.ravel(v) for v in jax.tree.leaves(a)])
  y = np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree.leaves(b)])
  off = np.abs(x - y) > 1e-4 * np.abs(x) + 1e-6
  assert off.mean() < 0.01, (off.mean(), np.sort(np.abs(x - y))[-5:])
