"""Multi-process runs on one machine: two `jax3d generate --distributed` processes with two CPU
devices each equal one process with four (VSD: split particles, a replicated LoRA), resume
after both are stopped, and stop with one line when one of them dies (SDS)."""

import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import cpu_env
import tiny_pipeline as tp
from jax3d import cli
from jax3d.errors import UserError
from jax3d.priors import registry as priors
from jax3d.systems import registry
from jax3d.train import distributed
from jax3d.train.checkpoint import Checkpointer

TINY = ["--config.camera.height=8", "--config.camera.width=8", "--config.views_per_step=1",
        "--config.field.hashgrid.num_levels=2", "--config.field.hashgrid.log2_table_size=8",
        "--config.field.hashgrid.max_resolution=16", "--config.field.hidden_dim=8",
        "--config.render.num_samples=8", "--config.num_steps=3", "--config.checkpoint_every=1",
        "--config.preview_every=3", "--config.export.mesh_resolution=16",
        "--config.export.video_frames=2", "--config.export.video_size=16"]
REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["generate", "a red cube", "--particles", "4", *TINY]


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory) -> str:
  """A tiny pixel-space prior (16x16): what is tested is the process plumbing, so the UNet
  that every process compiles is the smallest one that knows the prompt's words."""
  return str(tp.write_tiny_pipeline(tmp_path_factory.mktemp("prior") / "pixel", latent=False,
                                    weights="msgpack").folder)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(workdir, *extra, args=tuple(ARGS), timeout=240):
  """Runs `args` as 2 processes x 2 CPU devices through launch/local.sh; (exit code, stderr)."""
  env = cpu_env.subprocess_env(2, JAX3D_LOCAL_DEVICES="2", JAX3D_PORT=str(_free_port()))
  p = subprocess.run(
      ["bash", str(REPO / "launch" / "local.sh"), "2", sys.executable, "-m", "jax3d", *args,
       "--workdir", str(workdir), *extra, "--init-timeout", "60", "--heartbeat-timeout", "20"],
      env=env, capture_output=True, text=True, timeout=timeout)
  return p.returncode, p.stderr


def _final_state(workdir: pathlib.Path, like):
  """The last checkpoint's state, restored onto this process's 4 devices."""
  checkpointer = Checkpointer(str(workdir / "checkpoints"))
  try:
    return checkpointer.restore(like)[0]
  finally:
    checkpointer.close()


VSD_TINY = ["--config.camera.height=8", "--config.camera.width=8",
            "--config.field.hashgrid.num_levels=2", "--config.field.hashgrid.log2_table_size=8",
            "--config.field.hashgrid.max_resolution=16", "--config.field.hidden_dim=8",
            "--config.render.num_samples=8", "--config.lora.warmup_steps=0",
            "--config.num_steps=3", "--config.checkpoint_every=1", "--config.preview_every=3",
            "--config.export.mesh_resolution=16", "--config.export.video_frames=2",
            "--config.export.video_size=16"]
VSD_ARGS = ["generate", "a red cube", "--method", "vsd", "--particles", "4", *VSD_TINY]


def test_two_processes_equal_one_and_resume_after_both_stop(prior_dir, tmp_path):
  """VSD with 4 particles as 2 processes x 2 devices: stopped after 2 steps, resumed, and
  exported by process 0 alone; its particles (split over processes) and LoRA (replicated on
  every device of both, its gradient reduced over all particles) end as in one process with
  4 devices."""
  args = [*VSD_ARGS, "--prior", prior_dir]
  split = tmp_path / "two"
  code, err = _two_processes(split, "--stop-after", "2", args=args)
  assert code == 0, err[-3000:]
  assert sorted(os.listdir(split / "checkpoints")) == ["1", "2"]
  assert not (split / "final").exists()
  code, err = _two_processes(split, args=args)
  assert code == 0 and "process 1: done at step 3" in err, err[-3000:]
  # Only the main process wrote the folder's files; the export holds every particle.
  assert sorted(os.listdir(split / "final")) == [
      "metrics.json", "particle_0", "particle_1", "particle_2", "particle_3", "particles.gif",
      "particles.mp4"]
  assert len(os.listdir(split / "tensorboard")) == 2  # one events file per call, not per process

  one = tmp_path / "one"
  assert len(jax.devices()) == 4
  assert cli.main([*args, "--workdir", str(one)]) == 0
  _, cfg = registry.resolve("vsd", None, [o[len("--config."):] for o in VSD_TINY])
  cfg.num_particles, cfg.prior = 4, prior_dir
  system = registry.make_system("vsd", "a red cube", cfg, priors.load_prior(cfg.prior))
  like = system.init(jax.random.key(0))
  a, b = _final_state(split, like), _final_state(one, like)
  assert int(a.step) == int(b.step) == 3
  # Float order differs across processes; AdamW turns a near-zero gradient's flipped sign into
  # a ±lr step (the toy preset's LoRA lr, 1e-3), so a few entries may differ by up to
  # ~lr; a wrong reduction moves most.
  x, y = (np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree.leaves(s.shared)])
          for s in (a, b))
  off = np.abs(x - y) > 1e-4 + 1e-3 * np.abs(y)
  assert off.mean() < 0.01, (off.mean(), np.sort(np.abs(x - y))[-5:])
  for x, y in zip(jax.tree.leaves(a.particles), jax.tree.leaves(b.particles)):
    x, y = np.asarray(x), np.asarray(y)  # boundary-cell flips: see test_prolificdreamer
    assert np.mean(np.abs(x - y) > 1e-3) <= 5e-3, np.sort(np.abs(x - y).ravel())[-8:]


LONG_ARGS = [a for a in ARGS if not a.startswith("--config.num_steps=")] + [
    "--config.num_steps=400"]


def _kill_one_mid_run(work, prior_dir, victim: int, after_step: int):
  """Starts LONG_ARGS as 2 processes, SIGKILLs process `victim` once checkpoint `after_step`
  exists; (the other's exit code, its stderr)."""
  port = _free_port()
  args = [*LONG_ARGS, "--prior", prior_dir, "--workdir", str(work), "--distributed",
          "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
          "--heartbeat-timeout", "20"]
  procs = [subprocess.Popen([sys.executable, "-m", "jax3d", *args, "--process-id", str(i)],
                            env=cpu_env.subprocess_env(2), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  other = procs[1 - victim]
  try:
    deadline = time.monotonic() + 180
    while not (work / "checkpoints" / str(after_step)).exists():
      assert time.monotonic() < deadline and other.poll() is None, "no checkpoint"
      time.sleep(0.2)
    procs[victim].kill()
    t0 = time.monotonic()
    err = other.communicate(timeout=50)[1]
    assert time.monotonic() - t0 < 50
  finally:
    for p in procs:
      p.kill()
      p.communicate()
  return other.returncode, err


def _latest_step(work) -> int:
  checkpointer = Checkpointer(str(work / "checkpoints"))
  try:
    return checkpointer.latest_step()
  finally:
    checkpointer.close()


def test_a_dead_process_stops_the_other_with_one_line_and_a_rerun_resumes(prior_dir, tmp_path):
  """SIGKILL of process 1 mid-run: process 0 exits 1 with one line, at once when it was in a
  collective (the collective fails), else within the heartbeat timeout (20 s: the watchdog,
  e.g. when it was waiting at orbax's checkpoint barrier); the same command then resumes
  from the last complete checkpoint. SIGKILL of process 0, which hosts JAX's coordination
  service, then stops process 1 with one line too (the supervisor's relay: JAX's client
  aborts it with a fatal log)."""
  work = tmp_path / "W"
  for victim, after in ((1, 2), (0, None)):
    after = after or _latest_step(work) + 1
    code, err = _kill_one_mid_run(work, prior_dir, victim, after)
    lines = [x for x in err.splitlines() if "jax3d: error:" in x]
    assert code == 1 and len(lines) == 1, err[-3000:]
    assert f"process {1 - victim}:" in lines[0], lines[0]
    assert "Rerun the same launch command" in lines[0] and "Traceback" not in err
    assert "Check failure" not in err and "@     0x" not in err, err[-3000:]
    if victim == 1:
      done = _latest_step(work)
      code, err = _two_processes(work, "--stop-after", "1",
                                 args=[*LONG_ARGS, "--prior", prior_dir])
      assert code == 0, err[-3000:]
      assert _latest_step(work) == done + 1


def test_processes_that_disagree_on_the_config_stop_before_writing(prior_dir, tmp_path):
  port = _free_port()
  env = cpu_env.subprocess_env(1)
  procs = [subprocess.Popen(
      [sys.executable, "-m", "jax3d", *ARGS, "--prior", prior_dir, f"--config.seed={i}",
       "--workdir",
       str(tmp_path / "W"), "--distributed", "--coordinator", f"127.0.0.1:{port}",
       "--num-processes", "2", "--process-id", str(i), "--init-timeout", "60"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  errs = [p.communicate(timeout=180)[1] for p in procs]
  assert [p.returncode for p in procs] == [2, 2], errs
  for err in errs:
    line = [x for x in err.splitlines() if x.startswith("jax3d: error:")]
    assert len(line) == 1 and "processes disagree on the run" in line[0], err[-2000:]
  assert not (tmp_path / "W").exists()


@pytest.mark.parametrize("flags,needle", [
    (["--coordinator", "127.0.0.1:1"], "needs --distributed"),
    (["--distributed", "--coordinator", "127.0.0.1:1"], "give all of"),
    (["--distributed", "--coordinator", "x", "--num-processes", "2", "--process-id", "0"],
     "HOST:PORT"),
    (["--distributed", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
     "must be in [0, 2)"),
])
def test_bad_distributed_flags_are_refused(flags, needle):
  parser = cli.build_parser()
  args, _ = parser.parse_known_args(["generate", "a red cube", "--workdir", "W", *flags])
  with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("(", r"\(")
                     .replace(")", r"\)")):
    distributed.initialize(args)


def test_an_unreachable_coordinator_is_one_line_after_the_timeout(tmp_path):
  env = cpu_env.subprocess_env(1)
  p = subprocess.run(
      [sys.executable, "-m", "jax3d", *ARGS, "--workdir", str(tmp_path / "W"), "--distributed",
       "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2", "--process-id",
       "1", "--init-timeout", "3"], env=env, capture_output=True, text=True, timeout=120)
  lines = [x for x in p.stderr.splitlines() if x.startswith("jax3d: error:")]
  assert p.returncode == 2 and len(lines) == 1, p.stderr[-2000:]
  assert "could not reach the coordinator" in lines[0]
  assert not (tmp_path / "W").exists()


def test_distributed_is_refused_where_it_has_no_meaning(capsys):
  assert cli.main(["bench", "render", "--quick", "--distributed"]) == 2
  assert "--distributed is for `jax3d bench step`" in capsys.readouterr().err
