"""DDIM sampling (against diffusers' DDIM scheduler), analytic-prior samples land on the prompt's
renders, and the `jax3d sample` command (grid PNG; bad inputs -> one line, exit 2)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import tiny_pipeline as tp
from jax3d import cli
from jax3d.errors import UserError
from jax3d.priors import _quiet  # noqa: F401  (before diffusers)
from jax3d.priors import analytic
from jax3d.priors import registry
from jax3d.priors import sampling
from jax3d.solids import scenes

import diffusers  # pylint: disable=g-import-not-at-top,g-bad-import-order

REPO = pathlib.Path(__file__).resolve().parents[1]


def _scheduler(steps_offset=0):
  return diffusers.FlaxDDIMScheduler(
      num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
      beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=True,
      steps_offset=steps_offset)


@pytest.mark.parametrize("steps,offset", [(50, 0), (50, 1), (7, 0), (1000, 0), (3, 1)])
def test_leading_timesteps_match_diffusers(steps, offset):
  sched = _scheduler(offset)
  state = sched.set_timesteps(sched.create_state(), steps)
  np.testing.assert_array_equal(sampling.leading_timesteps(1000, steps, offset),
                                np.asarray(state.timesteps))


def test_bad_step_counts_are_user_errors():
  for steps in (0, 1001):
    with pytest.raises(UserError, match="steps"):
      sampling.leading_timesteps(1000, steps)


@pytest.fixture(scope="module")
def toy():
  images = np.random.default_rng(0).uniform(size=(5, 8, 8, 3)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 1])
  return analytic.analytic_prior(images, lambda p: labels == int(p))


def test_ddim_matches_the_diffusers_ddim_scheduler(toy):
  prior = toy
  key = jax.random.key(0)
  cond, uncond = prior.embed(["0", "1", "1"]), prior.uncond(3)
  got = sampling.ddim_sample(prior, prior.params, key, cond, uncond, num_steps=10,
                             guidance_scale=2.0, clip_sample=False, decode=False)
  # The same loop with diffusers' Flax DDIM scheduler (η = 0, final ᾱ = 1).
  sched = _scheduler()
  state = sched.set_timesteps(sched.create_state(), 10, (3,) + prior.latent_shape)
  x = jax.random.normal(key, (3,) + prior.latent_shape)
  eps = jax.jit(prior.eps)
  for t in np.asarray(state.timesteps):
    e = eps(prior.params, x, jnp.full((3,), t), cond, uncond, 2.0)
    x, state = sched.step(state, e, int(t), x, return_dict=False)
  np.testing.assert_allclose(got, x, atol=2e-4)
  images = sampling.ddim_sample(prior, prior.params, key, cond, uncond, num_steps=10,
                                guidance_scale=2.0, clip_sample=False)
  np.testing.assert_allclose(images, np.clip((np.asarray(x) + 1) / 2, 0, 1), atol=1e-4)


def test_analytic_samples_are_renders_of_the_prompt():
  """DDIM on an exact finite-set prior converges onto the set: every sample is (per pixel) one
  of the prompt's own renders."""
  prior = analytic.solids_analytic_prior(jax.random.key(1), views_per_object=4)
  renders = (np.asarray(prior.params["images"]) + 1) / 2
  for prompt in ("a blue torus", "a cone"):
    cond = prior.embed([prompt] * 3)
    members = np.flatnonzero(np.asarray(cond[0, 0]))
    images = np.asarray(sampling.ddim_sample(prior, prior.params, jax.random.key(2), cond,
                                             num_steps=25, guidance_scale=1.0))
    assert images.shape == (3, 32, 32, 3)
    dist = np.abs(images[:, None] - renders[None]).mean(axis=(2, 3, 4))
    nearest = dist.argmin(axis=1)
    assert set(nearest) <= set(members), (prompt, nearest, members)
    assert dist.min(axis=1).max() < 0.01


@pytest.fixture(scope="module")
def pixel_folder(tmp_path_factory):
  return tp.write_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pixel", latent=False,
                                weights="msgpack").folder


def test_sample_command_writes_a_grid(pixel_folder, tmp_path, capsys):
  out = tmp_path / "grid.png"
  args = cli.build_parser().parse_args(
      ["sample", "a red cube", "--prior", str(pixel_folder), "--num", "3", "--steps", "4",
       "--seed", "1", "--out", str(out)])
  assert sampling.sample_command(args) == 0
  grid = np.asarray(Image.open(out))
  assert grid.shape == (2 * 16 + 2, 2 * 16 + 2, 3)  # 3 images of 16×16 in a 2×2 grid, 2 px gutters.
  assert "wrote 3 sample(s)" in capsys.readouterr().out
  assert not list(tmp_path.glob("*.tmp"))


def test_load_prior_names(pixel_folder, monkeypatch, tmp_path):
  prior = registry.load_prior(str(pixel_folder))
  assert prior.name == "pixel" and not prior.latent
  monkeypatch.setattr(registry, "shipped_solids_path", lambda name: tmp_path / name)
  for name in ("solids", "solids-azimuth"):
    with pytest.raises(UserError, match=f"shipped {name} prior is not installed; use --prior"):
      registry.load_prior(name)
  with pytest.raises(UserError, match="dtype"):
    registry.load_prior("analytic", dtype="float64")


def test_analytic_spec_sets_renders_per_object():
  assert registry.analytic_views("analytic") == registry.ANALYTIC_VIEWS == 64
  assert registry.analytic_views("analytic:256") == 256
  assert registry.analytic_views("solids") is None
  assert registry.analytic_views("analytics") is None  # a folder name, not the analytic prior
  assert registry.is_solids_prior("analytic:3") and not registry.is_solids_prior("/tmp/x")
  for bad in ("analytic:", "analytic:0", "analytic:x", "analytic:-4", "analytic:2.5"):
    with pytest.raises(UserError, match="analytic:N"):
      registry.is_solids_prior(bad)
  num_objects = len(scenes.SOLIDS) * len(scenes.COLOURS)
  images = registry.load_prior("analytic:2").params["images"]
  assert images.shape[0] == 2 * num_objects, (images.shape, num_objects)


def _run_cli(*argv, cwd):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
  return subprocess.run([sys.executable, "-m", "jax3d.cli", "sample", *argv], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=120)


def _pickle_only(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  shutil.copytree(src, dst)
  for f in list(dst.rglob("*.msgpack")) + list(dst.rglob("*.safetensors")):
    f.rename(f.with_suffix(".bin"))
  return dst


def test_cli_bad_inputs_are_one_line_errors(pixel_folder, tmp_path):
  cases = [
      (["a red cube", "--prior", str(tmp_path / "missing")], "unknown prior"),
      (["a red cube", "--prior", str(_pickle_only(pixel_folder, tmp_path / "pickles"))],
       "pickle"),
      (["a photo of a dog", "--prior", "analytic"], "not a solids prompt"),
      (["a red cube", "--prior", "analytic:many"], "analytic:N"),
  ]
  if not (registry.shipped_solids_path() / "model_index.json").exists():
    cases.append((["a red cube", "--prior", "solids"], "not installed yet"))
  messages = {}
  for argv, expected in cases:
    out = tmp_path / "grid.png"
    proc = _run_cli(*argv, "--num", "2", "--out", str(out), cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (argv, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("jax3d: error:"), proc.stderr
    assert expected in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()
    messages[expected] = lines[0]
  # The analytic prior's error lists the accepted prompt forms.
  for word in scenes.SOLIDS + scenes.COLOURS + ("{colour} {solid}",):
    assert word in messages["not a solids prompt"], word
