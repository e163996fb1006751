"""Magic3D: the two stages in one run folder, resume at any point, the fine stage's start from
the coarse one, and one-line errors."""

import json
import os

import jax
import numpy as np
import pytest

import tiny_pipeline as tp
from jax3d.errors import UserError
from jax3d.fields import dmtet
from jax3d.systems import magic3d
from jax3d.systems import registry
from jax3d.train import checkpoint
from jax3d.train import runner

# Both stages small enough for a test: 8x8 coarse renders, a 4^3-cell tet grid at 16x16.
TINY = ["camera.height=8", "camera.width=8", "views_per_step=1",
        "field.hashgrid.num_levels=2", "field.hashgrid.log2_table_size=8",
        "field.hashgrid.max_resolution=16", "field.hidden_dim=8", "render.num_samples=8",
        "preview_every=3", "checkpoint_every=1", "num_steps=3",
        "export.mesh_resolution=16", "export.video_frames=2", "export.video_size=16",
        "fine.num_steps=3", "fine.render_size=16", "fine.views_per_step=1",
        "fine.grid.resolution=4", "fine.max_faces=512", "fine.raster_capacity=64"]


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
  return str(tp.write_tiny_pipeline(tmp_path_factory.mktemp("prior") / "pixel", latent=False,
                                    weights="msgpack").folder)


def _config(*extra):
  method, cfg = registry.resolve("magic3d", None, TINY + list(extra))
  assert method == "magic3d"
  return cfg


def _params(folder):
  ckpt = checkpoint.Checkpointer(os.path.join(folder, "checkpoints"))
  try:
    out = ckpt._manager.restore(ckpt.latest_step())  # pylint: disable=protected-access
  finally:
    ckpt.close()
  return out["state"]["particles"]["params"]


def test_both_stages_run_in_one_folder_and_resume_anywhere(prior_dir, tmp_path):
  cfg = _config()
  ref = str(tmp_path / "ref")
  summary = runner.generate("a red cube", ref, cfg, prior_dir, enable_bar=False)
  assert summary["stage"] == "fine" and summary["steps"] == 3
  assert summary["stages"]["coarse"]["steps"] == 3
  for name in ("mesh.glb", "turntable.mp4", "metrics.json"):
    assert os.path.isfile(os.path.join(ref, "coarse", name)), name
    assert os.path.isfile(os.path.join(ref, "final", name)), name
  assert os.path.isdir(os.path.join(ref, "coarse", "checkpoints"))
  assert os.path.isfile(os.path.join(ref, "previews", "step_000003.png"))
  assert os.path.isfile(os.path.join(ref, "coarse", "previews", "step_000003.png"))
  final = json.load(open(os.path.join(ref, "final", "metrics.json")))
  assert final["particles"][0]["num_faces"] > 0 and "stages" in final
  metrics = final["final_metrics"]
  assert metrics["faces_dropped"] == 0 and metrics["raster_dropped"] == 0

  # Interrupted in the coarse stage, then between the stages, then finished.
  work = str(tmp_path / "work")
  s = runner.generate("a red cube", work, cfg, prior_dir, stop_after=2, enable_bar=False)
  assert s["stage"] == "coarse" and s["steps"] == 2
  with pytest.raises(UserError, match="coarse stage has not finished"):
    runner.export_command(work)
  s = runner.generate("a red cube", work, cfg, prior_dir, stop_after=1, enable_bar=False)
  assert s["stage"] == "coarse" and s["steps"] == 3
  assert not os.path.isdir(os.path.join(work, "checkpoints"))
  s = runner.generate("a red cube", work, cfg, prior_dir, stop_after=1, enable_bar=False)
  assert s["stage"] == "fine" and s["steps"] == 1
  s = runner.generate("a red cube", work, cfg, prior_dir, enable_bar=False)
  assert s["steps"] == 3 and s["resumed_from"] == 1
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               _params(ref), _params(work))

  # `jax3d export` rebuilds the fine stage from both stages' checkpoints.
  exported = runner.export_command(work)
  assert exported[0]["num_faces"] == final["particles"][0]["num_faces"]
  with pytest.raises(UserError, match="SDF's zero set"):
    runner.export_command(work, level=1.0)


def test_the_fine_stage_starts_from_the_coarse_density(prior_dir):
  from jax3d.priors import registry as priors  # pylint: disable=g-import-not-at-top
  cfg = _config("fine.min_component_fraction=0.0")
  coarse = registry.make_system("magic3d", "a red cube", cfg, priors.load_prior(prior_dir))
  state = coarse.init(jax.random.key(0))
  params = jax.tree.map(lambda x: x[0], state.particles["params"])
  grid = dmtet.tet_grid(4, 1.0)
  sigma = np.asarray(coarse.field.density(params, grid.vertices, coarse.density_schedule(3)))
  level = float(np.median(sigma))
  fine = coarse.next_stage(state, [level])
  assert isinstance(fine, magic3d.MeshStage) and fine.config.num_steps == 3
  assert (fine.config.camera.height, fine.config.guidance.timesteps.t_max) == (16, 0.5)
  p = jax.tree.map(lambda x: x[0], fine.init(jax.random.key(0)).particles["params"])
  np.testing.assert_allclose(p["sdf"], np.clip(level - sigma, -1, 1), atol=1e-5)
  assert not np.any(np.asarray(p["deform"]))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               p["texture"], params)
  # A level above every density leaves no surface: refused in one line.
  with pytest.raises(UserError, match="no surface") as err:
    coarse.next_stage(state, [float(sigma.max()) + 1.0])
  assert "\n" not in str(err.value)


def test_a_tet_grid_that_cannot_fit_is_refused_with_the_estimate(prior_dir, tmp_path):
  from jax3d.priors import registry as priors  # pylint: disable=g-import-not-at-top
  cfg = _config("fine.grid.resolution=512")
  with pytest.raises(UserError, match=r"dmtet resolution 512 needs about [\d.]+ GiB") as err:
    registry.make_system("magic3d", "a red cube", cfg, priors.load_prior(prior_dir))
  assert "\n" not in str(err.value)
