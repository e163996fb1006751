"""The Stable Diffusion presets run end to end on a tiny random latent SD folder.

Each `sd` preset is used as shipped except for sizes a CPU test can afford (steps, render and
export resolution, grid size): the latent path (VAE encode for SDS, latent renders decoded by
the VAE for SJC's previews and turntables) runs, gradients stay finite and every output is
written.
"""

import json
import os

import numpy as np
import pytest

import tiny_pipeline as tp
from jax3d import configuration
from jax3d.train import runner

SMALL = {
    "num_steps": 2, "checkpoint_every": 1, "preview_every": 2, "log_every": 1,
    "export.mesh_resolution": 16, "export.video_frames": 2, "export.video_size": 16,
}


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
  return str(tp.write_tiny_pipeline(tmp_path_factory.mktemp("sd") / "tiny-sd",
                                    latent=True).folder)


def _check_outputs(workdir, summary):
  assert summary["steps"] == 2
  assert all(np.isfinite(v) for v in summary["final_metrics"].values())
  assert summary["final_metrics"]["grad_norm"] > 0
  for name in ("mesh.glb", "mesh.obj", "turntable.mp4", "turntable.gif", "metrics.json"):
    assert os.path.isfile(os.path.join(workdir, "final", name)), name
  assert os.listdir(os.path.join(workdir, "previews"))
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["run"]["method"] in ("sds", "sjc")


def test_sds_sd_preset_runs_on_a_latent_pipeline(sd_dir, tmp_path):
  cfg = configuration.apply_overrides(configuration.load("dreamfusion:sd"), [
      *(f"{k}={v}" for k, v in SMALL.items()), "camera.height=16", "camera.width=16",
      "field.hashgrid.log2_table_size=12", "field.hashgrid.max_resolution=64",
      "render.num_samples=16"])
  workdir = str(tmp_path / "sds")
  summary = runner.generate("a red cube", workdir, cfg, sd_dir, enable_bar=False)
  _check_outputs(workdir, summary)


def test_sjc_sd_preset_renders_latents_and_decodes_them(sd_dir, tmp_path):
  from jax3d.priors import registry
  latent_hw = registry.load_prior(sd_dir).latent_shape[0]
  cfg = configuration.apply_overrides(configuration.load("sjc:sd"), [
      *(f"{k}={v}" for k, v in SMALL.items()), f"camera.height={latent_hw}",
      f"camera.width={latent_hw}", "field.voxel.resolution=16", "render.num_samples=16"])
  workdir = str(tmp_path / "sjc")
  summary = runner.generate("a red cube", workdir, cfg, sd_dir, enable_bar=False)
  _check_outputs(workdir, summary)


def test_bench_step_times_the_encoder_of_a_latent_prior(sd_dir, tmp_path):
  """`bench step --config dreamfusion:sd`: RGB renders go through the VAE encoder, which gets
  its own row, and `rest` is what the timed parts leave."""
  from jax3d import cli
  out = tmp_path / "step.json"
  assert cli.main(["bench", "step", "--config", "dreamfusion:sd", "--prior", sd_dir,
                   "--repeats", "1", "--config.camera.height=16", "--config.camera.width=16",
                   "--config.field.hashgrid.log2_table_size=12",
                   "--config.field.hashgrid.max_resolution=64", "--config.render.num_samples=16",
                   "--out", str(out)]) == 0
  row = json.loads(out.read_text())["rows"][0]
  assert row["encode_fwd_bwd_s"] > 0
  np.testing.assert_allclose(
      row["rest_s"], row["step_s"] - row["render_fwd_bwd_s"] - row["prior_s"] -
      row["encode_fwd_bwd_s"], rtol=1e-9)
