"""Benchmark result files record where they come from: the command, the commit, the device,
the versions, and the settings they resolved (prior and weights' sha256, config, overrides)."""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess

import jax
import pytest

import tiny_pipeline as tp
from jax3d import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config.camera.height=8", "--config.camera.width=8", "--config.views_per_step=1",
        "--config.field.hashgrid.num_levels=2", "--config.field.hashgrid.log2_table_size=8",
        "--config.field.hashgrid.max_resolution=16", "--config.field.hidden_dim=8",
        "--config.render.num_samples=8"]


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
  return tp.write_tiny_pipeline(tmp_path_factory.mktemp("prior") / "pixel", latent=False,
                                weights="msgpack").folder


def _sha256_of_weights(folder: pathlib.Path) -> str:
  digest = hashlib.sha256()
  for path in sorted(folder.rglob("*.msgpack")):
    digest.update(str(path.relative_to(folder)).encode())
    digest.update(path.read_bytes())
  return digest.hexdigest()


def _git(*args) -> str:
  return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                        check=True).stdout.strip()


def test_bench_step_records_its_provenance_and_resolved_settings(prior_dir, tmp_path):
  out = tmp_path / "step.json"
  argv = ["bench", "step", "--quick", "--repeats", "1", "--prior", str(prior_dir),
          *TINY, "--config.guidance.scale=7.5", "--dtype", "bfloat16", "--out", str(out)]
  assert cli.main(argv) == 0
  payload = json.loads(out.read_text())
  assert payload["command"].startswith("jax3d bench step --quick")
  assert "--config.guidance.scale=7.5" in payload["command"]
  assert payload["device"] == jax.devices()[0].device_kind
  assert payload["versions"]["jax"] == jax.__version__
  head = _git("rev-parse", "HEAD")
  dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
  assert payload["commit"] == head + ("+dirty" if dirty else "")
  s = payload["settings"]
  assert s["method"] == "sds" and s["config"] == "dreamfusion:toy"
  assert s["overrides"] == [o[len("--config."):] for o in argv if o.startswith("--config.")]
  assert s["prior"] == str(prior_dir)
  assert s["weights_sha256"] == _sha256_of_weights(prior_dir)
  assert s["dtype"] == "bfloat16"
  assert payload["rows"][0]["step_s"] > 0


def test_weights_hash_changes_with_the_weights_and_is_none_for_the_analytic_prior(prior_dir,
                                                                                   tmp_path):
  from jax3d.priors import registry  # pylint: disable=g-import-not-at-top
  before = registry.describe(str(prior_dir))["weights_sha256"]
  copy = tmp_path / "copy"
  subprocess.run(["cp", "-r", str(prior_dir), str(copy)], check=True)
  assert registry.describe(str(copy))["weights_sha256"] == before
  weights = next(copy.rglob("*.msgpack"))
  data = bytearray(weights.read_bytes())
  data[-1] ^= 1
  weights.write_bytes(bytes(data))
  assert registry.describe(str(copy))["weights_sha256"] != before
  assert registry.describe("analytic:8") == {"prior": "analytic:8", "weights_sha256": None}


def test_bench_solids_rows_score_every_particle_and_the_population():
  """Every particle is a row; the first row of a population holds its distinct colours, hue
  spread and 1 − pairwise IoU; the mean averages colour only over prompts that name one."""
  from jax3d.bench import solids  # pylint: disable=g-import-not-at-top

  def particle(k, shape, colour, correct, iou):
    return {"particle": k, "silhouette_iou": iou, "occupancy_iou": iou / 2,
            "predicted_solid": shape, "shape_correct": shape == "cube",
            "predicted_colour": colour, "colour_correct": correct}
  timing = {"steps": 10, "train_s": 1.0, "wall_s": 2.0}
  colourless = {"prompt": "a cube", "particles": [
      particle(0, "cube", "red", None, 0.9), particle(1, "cube", "red", None, 0.8),
      particle(2, "sphere", "blue", None, 0.5)],
      "diversity": {"hue_spread": 0.4, "mean_pairwise_silhouette_iou": 0.75}}
  named = {"prompt": "a red cube", "particles": [
      particle(0, "cube", "red", True, 1.0), particle(1, "cube", "orange", False, 0.6),
      particle(2, "cube", "red", True, 0.8)],
      "diversity": {"hue_spread": 0.1, "mean_pairwise_silhouette_iou": 0.95}}
  rows = solids.prompt_rows(colourless, timing) + solids.prompt_rows(named, timing)
  assert [r["particle"] for r in rows] == [0, 1, 2, 0, 1, 2]
  assert (rows[0]["distinct_colours"], rows[3]["distinct_colours"]) == (2, 2)
  assert rows[0]["pairwise_1_minus_iou"] == pytest.approx(0.25)
  assert "distinct_colours" not in rows[1]
  mean = solids.mean_row(rows)
  assert mean["silhouette_iou"] == pytest.approx(4.6 / 6)
  assert mean["shape_correct"] == pytest.approx(5 / 6)
  assert mean["colour_correct"] == pytest.approx(2 / 3)  # the named prompt's 3 particles
  assert mean["distinct_colours"] == 2 and mean["hue_spread"] == pytest.approx(0.25)
  assert mean["pairwise_1_minus_iou"] == pytest.approx(0.15)
  one = solids.prompt_rows({"prompt": "a red cube", "particles": named["particles"][:1]},
                           timing)
  assert "distinct_colours" not in solids.mean_row(one)


def test_bench_solids_keeps_finished_prompts_of_the_same_command_and_commit(tmp_path,
                                                                          monkeypatch):
  """After every prompt the rows so far are written (`complete: false`); a rerun of the same
  command at the same clean commit keeps them and runs only the rest; at another commit, or
  with other settings, every prompt runs again."""
  from jax3d import bench  # pylint: disable=g-import-not-at-top
  from jax3d.train import runner  # pylint: disable=g-import-not-at-top
  ran, fail_on = [], {"a blue cone"}

  def generate(prompt, workdir, cfg, prior, enable_bar):
    del workdir, cfg, prior, enable_bar
    if prompt in fail_on:
      raise KeyboardInterrupt  # the machine's session ends mid-benchmark
    ran.append(prompt)
    return {"steps": 2, "wall_time_s": 1.0}

  def eval_command(workdir):
    prompt = pathlib.Path(workdir).name.replace("-", " ")
    return {"prompt": prompt, "particles": [{
        "particle": 0, "silhouette_iou": 0.5 + len(ran) / 10, "occupancy_iou": 0.3,
        "predicted_solid": "cube", "shape_correct": True, "predicted_colour": "red",
        "colour_correct": True}]}
  monkeypatch.setattr(runner, "generate", generate)
  monkeypatch.setattr(runner, "eval_command", eval_command)
  commit = {"value": "abc123"}
  monkeypatch.setattr(bench, "commit", lambda: commit["value"])
  out = tmp_path / "solids.json"
  argv = ["bench", "solids", "--method", "sds", "--prompts", "a red cube;a blue cone",
          "--workdir-root", str(tmp_path / "runs"), "--out", str(out)]
  assert cli.main(argv) == 130  # interrupted
  partial = json.loads(out.read_text())
  assert partial["complete"] is False and [r["prompt"] for r in partial["rows"]] == [
      "a red cube"]

  fail_on.clear()
  assert cli.main(argv) == 0
  assert ran == ["a red cube", "a blue cone"]  # the cube's row was kept, not rerun
  result = json.loads(out.read_text())
  assert result["complete"] is True
  assert [r["prompt"] for r in result["rows"]] == ["a red cube", "a blue cone", "MEAN"]
  assert result["rows"][0] == partial["rows"][0]

  result["complete"] = False  # as if interrupted again, then rerun at another commit
  out.write_text(json.dumps(result))
  commit["value"] = "def456"
  assert cli.main(argv) == 0
  assert ran[2:] == ["a red cube", "a blue cone"]
  commit["value"] = "def456+dirty"  # uncommitted changes: nothing is kept either
  result = json.loads(out.read_text())
  result["complete"] = False
  out.write_text(json.dumps(result))
  assert cli.main(argv) == 0
  assert ran[4:] == ["a red cube", "a blue cone"]
