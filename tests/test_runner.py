"""The generate runner: outputs, resume after SIGKILL, non-finite stops, one-line user errors."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cpu_env
import tiny_pipeline as tp
from jax3d.errors import UserError
from jax3d.systems import registry
from jax3d.train import checkpoint
from jax3d.train import loop
from jax3d.train import run_folder
from jax3d.train import runner
from jax3d.train.checkpoint import Checkpointer

# A run small enough for a test: 8x8 renders, a 2-level grid, tiny exports.
TINY = ["--config.camera.height=8", "--config.camera.width=8", "--config.views_per_step=1",
        "--config.field.hashgrid.num_levels=2", "--config.field.hashgrid.log2_table_size=8",
        "--config.field.hashgrid.max_resolution=16", "--config.field.hidden_dim=8",
        "--config.render.num_samples=8", "--config.preview_every=3",
        "--config.export.mesh_resolution=16", "--config.export.video_frames=2",
        "--config.export.video_size=16", "--config.log_every=1"]


def _env():
  env = cpu_env.subprocess_env(4)
  env["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(__file__).parent),
                                       env.get("PYTHONPATH", "")])
  return env


def _cmd(*args):
  return [sys.executable, "-m", "jax3d.cli", *args]


def _run(*args, cwd):
  return subprocess.run(_cmd(*args), cwd=cwd, env=_env(), capture_output=True, text=True,
                        timeout=600)


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
  return str(tp.write_tiny_pipeline(tmp_path_factory.mktemp("prior") / "pixel", latent=False,
                                    weights="msgpack").folder)


def _final_params(workdir):
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    step = ckpt.latest_step()
    out = ckpt._manager.restore(step)  # pylint: disable=protected-access
  finally:
    ckpt.close()
  return step, out["state"]


def test_generate_writes_outputs_and_resumes_bit_identically_after_sigkill(prior_dir,
                                                                           tmp_path):
  steps = ["--config.num_steps=6", "--config.checkpoint_every=2"]
  args = ["a red cube", "--prior", prior_dir, *TINY, *steps]
  # Uninterrupted reference run.
  ref = tmp_path / "ref"
  r = _run("generate", *args, "--workdir", str(ref), cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  for name in ("mesh.glb", "mesh.obj", "turntable.mp4", "turntable.gif", "metrics.json"):
    assert (ref / "final" / name).is_file(), name
  assert (ref / "config.json").is_file() and (ref / "previews" / "step_000003.png").is_file()
  assert any((ref / "tensorboard").iterdir())
  metrics = json.loads((ref / "final" / "metrics.json").read_text())
  assert metrics["steps"] == 6 and metrics["device"]

  # The same run, SIGKILLed once a checkpoint exists, then rerun to completion.
  work = tmp_path / "killed"
  proc = subprocess.Popen(_cmd("generate", *args, "--workdir", str(work)), cwd=tmp_path,
                          env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  ckpts = work / "checkpoints"
  while time.time() < deadline and proc.poll() is None:
    done = [p for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.is_dir() else []
    if done:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max((int(p.name) for p in ckpts.glob("*") if p.name.isdigit()), default=0)
  assert killed_at < 6, "the run finished before it could be killed; make it longer"
  r = _run("generate", *args, "--workdir", str(work), cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  resumed = json.loads((work / "final" / "metrics.json").read_text())
  assert resumed["resumed_from"] is not None

  (s1, a), (s2, b) = _final_params(ref), _final_params(work)
  assert s1 == s2 == 6
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
               a["particles"]["params"], b["particles"]["params"])


def test_non_finite_loss_stops_before_checkpointing(tmp_path):
  def step_fn(state, key):
    del key
    x = state["x"] + 1.0
    loss = jnp.where(x >= 3.0, jnp.nan, x)
    return {"x": x}, {"loss": loss}

  ckpt = Checkpointer(str(tmp_path / "ckpt"))
  with pytest.raises(loop.NonFiniteError, match="non-finite loss at step 3"):
    loop.run(step_fn, {"x": jnp.zeros(())}, jax.random.key(0),
             loop.Schedule(num_steps=10, checkpoint_every=1), ckpt)
  assert ckpt.latest_step() == 2
  ckpt.close()


def _assert_user_error(r, workdir, needle):
  assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("jax3d: error:"), r.stderr[-1500:]
  assert needle in lines[0], lines[0]
  assert "Traceback" not in r.stderr
  if workdir is not None:
    assert not os.path.exists(workdir) or not os.listdir(workdir) or (
        workdir.endswith("other"))


@pytest.mark.parametrize("args,needle", [
    (["", "--prior", "analytic"], "prompt is empty"),
    (["a pink elephant", "--prior", "analytic"], "not a solids prompt"),
    (["a red cube", "--prior", "analytic", "--config.nope=1"], "unknown config key"),
    (["a red cube", "--prior", "analytic", "--config.num_steps=abc"], "must be a number"),
    (["a red cube", "--method", "dreamtime"], "unknown method 'dreamtime'; choose one of sds, sjc"),
    (["a red cube", "--prior", "/no/such/folder"], "/no/such/folder"),
    (["a red cube", "--method", "sjc", "--prior", "analytic",
      "--config.guidance.num_perturbations=0"], "guidance.num_perturbations"),
    (["a red cube", "--method", "sjc", "--prior", "analytic", "--config.guidance.trim_low=995"],
     "sigma trim"),
    (["a red cube", "--method", "sjc", "--prior", "analytic",
      "--config.field.voxel.resolution=1500"], "GiB"),
    (["a red cube", "--prior", "analytic", "--config.guidance.view_labels=octant"],
     "unknown view labels"),
    # The shipped solids prior knows DreamFusion's view words only, solids-azimuth (the toy
    # presets' default) the azimuth words only.
    (["a red cube", "--prior", "solids", "--config.guidance.view_labels=azimuth"],
     "trained with view labels dreamfusion"),
    (["a red cube", "--method", "sjc", "--config.guidance.view_labels=dreamfusion"],
     "trained with view labels azimuth"),
    (["a red cube", "--config", "dreamfusion:sd"], "names no prior"),
    (["a red cube", "--prior", "analytic", "--config.guidance.view_scale=-1"], "view_scale"),
])
def test_generate_bad_inputs(args, needle, tmp_path):
  workdir = str(tmp_path / "w")
  _assert_user_error(_run("generate", *args, "--workdir", workdir, cwd=tmp_path), workdir,
                     needle)


def test_generate_runs_uneven_particles_over_a_views_axis(prior_dir, tmp_path):
  """6 particles on 4 devices train on a (2, 2) particles x views mesh (`--particles 6`)."""
  overrides = [a[len("--config."):] for a in TINY] + ["num_steps=2"]
  method, cfg = registry.resolve(None, None, overrides)
  cfg.num_particles = 6
  workdir = str(tmp_path / "w")
  summary = runner.generate("a red cube", workdir, cfg, prior_dir, stop_after=1,
                            enable_bar=False)
  assert method == "sds" and summary["num_particles"] == 6 and summary["steps"] == 1
  assert all(np.isfinite(v) for v in summary["final_metrics"].values())
  step, state = _final_params(workdir)
  assert step == 1 and state["particles"]["params"]["encoding"].shape[0] == 6


def test_particles_flag_sets_the_population(prior_dir, tmp_path, capsys):
  from jax3d import cli  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "w"
  assert cli.main(["generate", "a red cube", "--prior", prior_dir, "--particles", "0", *TINY,
                   "--workdir", str(workdir)]) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and "'num_particles' is 0; allowed: [1, 65536]" in lines[0], lines
  assert not workdir.exists()


def test_generate_refuses_unwritable_and_other_runs(prior_dir, tmp_path):
  r = _run("generate", "a red cube", "--prior", prior_dir, "--workdir", "/proc/jax3d/w",
           cwd=tmp_path)
  _assert_user_error(r, None, "cannot write")
  other = tmp_path / "other"
  other.mkdir()
  (other / "config.json").write_text(json.dumps({"run": {"prompt": "a blue cone"}}))
  r = _run("generate", "a red cube", "--prior", prior_dir, *TINY, "--workdir", str(other),
           cwd=tmp_path)
  _assert_user_error(r, None, "differing in prompt")
  assert sorted(os.listdir(other)) == ["config.json"]


def test_eval_refuses_non_solids_prompts(tmp_path):
  work = tmp_path / "w"
  work.mkdir()
  (work / "config.json").write_text(json.dumps({"run": {
      "prompt": "a photo of a dog", "method": "sds", "prior": "x",
      "config": {"num_particles": 1}}}))
  _assert_user_error(_run("eval", str(work), cwd=tmp_path), None, "not a solids prompt")


def test_eval_scores_a_known_mesh(tmp_path):
  """`jax3d eval` on a run whose final mesh is the exact red cube, turned 20°: it scores as
  the cube, red, and 2/π of its circumscribed cylinder (closed form)."""
  import trimesh  # pylint: disable=g-import-not-at-top
  work = tmp_path / "w"
  (work / "final").mkdir(parents=True)
  (work / "config.json").write_text(json.dumps({"run": {
      "prompt": "a red cube", "method": "sds", "prior": "x", "config": {"num_particles": 1}}}))
  box = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
  box.apply_transform(trimesh.transformations.rotation_matrix(np.deg2rad(20.0), (0, 0, 1)))
  box.visual.face_colors = (230, 25, 25, 255)
  box.export(work / "final" / "mesh.glb")
  r = _run("eval", str(work), cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  row = json.loads((work / "eval.json").read_text())["particles"][0]
  assert row["predicted_solid"] == "cube" and row["shape_correct"], row
  assert row["occupancy_iou"] > 0.95 and row["silhouette_iou"] > 0.95, row
  assert row["predicted_colour"] == "red" and row["colour_correct"], row
  assert abs(row["cylinder_iou"] - 2.0 / np.pi) < 0.02, row
  assert "cylinder_iou" in r.stdout


def test_bench_solids_refuses_a_clashing_workdir_before_running(tmp_path):
  root = tmp_path / "root"
  other = root / "sjc" / "a-blue-cone"
  other.mkdir(parents=True)
  (other / "config.json").write_text(json.dumps({"run": {"prompt": "a blue cone"}}))
  r = _run("bench", "solids", "--method", "sjc", "--prior", "analytic", "--quick",
           "--prompts", "a red cube;a blue cone", "--workdir-root", str(root),
           "--out", str(tmp_path / "out.json"), cwd=tmp_path)
  _assert_user_error(r, None, "a-blue-cone")
  assert sorted(os.listdir(root / "sjc")) == ["a-blue-cone"]  # "a red cube" never started
  assert not (tmp_path / "out.json").exists()


def test_a_rerun_of_a_finished_run_keeps_its_final_metrics(prior_dir, tmp_path):
  overrides = [a[len("--config."):] for a in TINY] + ["num_steps=2"]
  _, cfg = registry.resolve(None, None, overrides)
  workdir = str(tmp_path / "w")
  first = runner.generate("a red cube", workdir, cfg, prior_dir, enable_bar=False)
  again = runner.generate("a red cube", workdir, cfg, prior_dir, enable_bar=False)
  assert again["resumed_from"] == 2 and again["steps"] == 2
  assert first["final_metrics"] and again["final_metrics"] == first["final_metrics"]
  written = json.loads((tmp_path / "w" / "final" / "metrics.json").read_text())
  assert written["final_metrics"] == first["final_metrics"]


def test_overwrite_moves_the_old_run_aside_until_the_new_one_checkpoints(prior_dir, tmp_path,
                                                                         monkeypatch):
  overrides = [a[len("--config."):] for a in TINY] + ["num_steps=2"]
  _, cfg = registry.resolve(None, None, overrides)
  workdir = tmp_path / "w"
  runner.generate("a red cube", str(workdir), cfg, prior_dir, stop_after=1, enable_bar=False)
  seen = []
  real_discard = run_folder.discard

  def discard(aside):
    seen.append(aside)
    if len(seen) == 1:  # At the new run's first checkpoint the old run is still whole.
      assert aside and os.path.isfile(os.path.join(aside, "checkpoints", "1", "_CHECKPOINT_METADATA"))
      assert json.loads(pathlib.Path(aside, "config.json").read_text())["run"]["prompt"] == (
          "a red cube")
    real_discard(aside)
  monkeypatch.setattr(run_folder, "discard", discard)
  with pytest.raises(UserError, match="different run"):
    runner.generate("a blue cone", str(workdir), cfg, prior_dir, enable_bar=False)
  runner.generate("a blue cone", str(workdir), cfg, prior_dir, overwrite=True,
                  enable_bar=False)
  assert seen and not os.path.exists(seen[0])
  assert json.loads((workdir / "config.json").read_text())["run"]["prompt"] == "a blue cone"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_a_second_process_is_refused_while_one_holds_the_run(prior_dir, tmp_path):
  """Two processes: the holder locks W; `jax3d generate` on W gets one line naming the
  holder's pid and writes nothing; once the holder is SIGKILLed its stale lock is taken."""
  workdir = tmp_path / "w"
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from jax3d.train import run_folder\n"
       f"with run_folder.Lock({str(workdir)!r}, 'generate'):\n"
       "  print('locked', flush=True); time.sleep(600)"],
      env=_env(), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    r = _run("generate", "a red cube", "--prior", prior_dir, *TINY, "--workdir", str(workdir),
             cwd=tmp_path)
    _assert_user_error(r, None, f"in use by another jax3d process (pid {holder.pid}")
    r = _run("train-prior", "--workdir", str(workdir), "--config", "solids_prior:tiny",
             cwd=tmp_path)
    _assert_user_error(r, None, f"(pid {holder.pid}, jax3d generate)")
    assert sorted(os.listdir(workdir)) == [run_folder.LOCK]
  finally:
    holder.kill()
    holder.wait()
  with run_folder.Lock(str(workdir), "generate"):
    assert (workdir / run_folder.LOCK).read_text().startswith(f"pid {os.getpid()},")


def _counting_step(state, key):
  del key
  return {"x": state["x"] + 1.0}, {"loss": state["x"]}


def test_disk_full_during_a_save_is_one_error_and_the_last_checkpoint_resumes(tmp_path,
                                                                             monkeypatch):
  """The disk fills while checkpoint 4 is written (orbax's wrapped ENOSPC): DiskFull names
  step 4 and the last complete one (2), the partial folder is removed, and rerunning resumes
  from step 2 to the same end."""
  ckpt = Checkpointer(str(tmp_path / "ckpt"))
  real_save = ckpt._manager.save  # pylint: disable=protected-access

  def save(step, *args, **kwargs):
    if step == 4:
      (tmp_path / "ckpt" / "4.orbax-checkpoint-tmp").mkdir()
      raise ValueError('RESOURCE_EXHAUSTED: Error writing "x": Failed to write 8 bytes: No '
                       "space left on device [os_error_code='28']")
    return real_save(step, *args, **kwargs)
  monkeypatch.setattr(ckpt._manager, "save", save)  # pylint: disable=protected-access
  schedule = loop.Schedule(num_steps=6, checkpoint_every=2)
  with pytest.raises(checkpoint.DiskFull) as e:
    loop.run(_counting_step, {"x": jnp.zeros(())}, jax.random.key(0), schedule, ckpt)
  assert str(e.value) == (
      f"no space left on device writing checkpoint 4 in {tmp_path / 'ckpt'}; the last "
      f"complete checkpoint is step 2; free space and rerun the same command to resume")
  assert sorted(os.listdir(tmp_path / "ckpt")) == ["2"]
  ckpt.close()
  ckpt = Checkpointer(str(tmp_path / "ckpt"))
  result = loop.run(_counting_step, {"x": jnp.zeros(())}, jax.random.key(0), schedule, ckpt)
  ckpt.close()
  assert result.resumed_from == 2 and float(result.state["x"]) == 6.0
  assert result.metrics == {"loss": 5.0}


def test_a_save_that_cannot_fit_is_refused_before_writing(tmp_path, monkeypatch):
  ckpt = Checkpointer(str(tmp_path / "ckpt"))
  loop.run(_counting_step, {"x": jnp.zeros(())}, jax.random.key(0),
           loop.Schedule(num_steps=2, checkpoint_every=2), ckpt)
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                      lambda path: usage._replace(free=1000))
  with pytest.raises(checkpoint.DiskFull, match="checkpoint 4 .*the last complete checkpoint "
                                                "is step 2"):
    loop.run(_counting_step, {"x": jnp.zeros(())}, jax.random.key(0),
             loop.Schedule(num_steps=4, checkpoint_every=2), ckpt)
  ckpt.close()
  assert sorted(os.listdir(tmp_path / "ckpt")) == ["2"]


def test_several_particles_export_each_and_one_grid_turntable(prior_dir, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  overrides = [a[len("--config."):] for a in TINY] + ["num_steps=1", "num_particles=3"]
  _, cfg = registry.resolve(None, None, overrides)
  runner.generate("a red cube", str(tmp_path / "w"), cfg, prior_dir, enable_bar=False)
  final = tmp_path / "w" / "final"
  for k in range(3):
    assert (final / f"particle_{k}" / "mesh.glb").is_file()
  with Image.open(final / "particles.gif") as gif:  # 2 columns x 2 rows of 16 px, 2 px gutters
    assert gif.size == (34, 34) and gif.n_frames == 2
    frame = np.asarray(gif.convert("RGB"))
  assert (frame[18:, 18:] == 255).all()  # the empty fourth cell is white
  assert (final / "particles.mp4").stat().st_size > 0


def test_replicated_small_and_large_arrays_and_sharded_ones_round_trip(tmp_path):
  """On 4 devices, `checkpoint`'s array handler saves a small replicated array from one replica
  and one of 4 MiB in 1-MiB slices from every replica; both, and an array sharded over the
  devices, restore exactly, with their shardings."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("d",))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  rng = np.random.default_rng(0)
  state = {"small": jax.device_put(rng.normal(size=(3, 5)).astype(np.float32), rep),
           "large": jax.device_put(rng.normal(size=(1 << 20,)).astype(np.float32), rep),
           "sharded": jax.device_put(rng.normal(size=(8, 4)).astype(np.float32), split)}
  ckpt = Checkpointer(str(tmp_path / "ckpt"))
  try:
    ckpt.save(1, state)
    like = jax.tree.map(lambda x: jax.device_put(jnp.zeros_like(x), x.sharding), state)
    restored, _, step = ckpt.restore(like)
  finally:
    ckpt.close()
  assert step == 1
  for k, x in state.items():
    assert restored[k].sharding == x.sharding, k
    np.testing.assert_array_equal(np.asarray(restored[k]), np.asarray(x))
