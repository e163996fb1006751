"""Bad input as an adversarial user gives it: every case exits 2 with exactly one stderr line
`jax3d: error: ...` (no traceback) and leaves the folder it ran in unchanged."""

import json
import os
import pathlib
import shutil
import signal

import pytest

from jax3d import cli
from jax3d.priors import registry as priors
from jax3d.systems import registry
from jax3d.train import run_folder, runner

GEN = ["generate", "a red cube", "--workdir", "W"]


def _snapshot(root: pathlib.Path):
  return sorted((str(p.relative_to(root)), p.is_dir() or p.stat().st_size,
                 p.is_dir() or p.stat().st_mtime_ns) for p in root.rglob("*"))


def _user_folder(tmp):
  (tmp / "W" / "mydata").mkdir(parents=True)
  (tmp / "W" / "mydata" / "thesis.tex").write_text("x")


def _float32_run(tmp):
  """A run folder of `a red cube` (default config, float32), as `generate` writes it."""
  _, cfg = registry.resolve(None, None)
  identity = runner.run_identity("a red cube", "sds", cfg.prior, cfg, "float32")
  (tmp / "W").mkdir()
  (tmp / "W" / run_folder.MARKER).write_text("")
  run_folder.write_json(str(tmp / "W" / run_folder.CONFIG), {"run": identity, "jax3d": "x"})


def _config_file(source):
  def setup(tmp):
    (tmp / "mine.py").write_text("import ml_collections\n" + source)
  return setup


def _pickle_prior(tmp):
  shutil.copytree(priors.shipped_solids_path(), tmp / "pickles")
  for p in (tmp / "pickles").rglob("*.msgpack"):
    p.rename(p.with_suffix(".bin"))


def _shadowing_file(tmp):
  (tmp / "dreamfusion").write_text("not a config")


def _long_prompt_args():
  return ["generate", "a " + "very " * 2000 + "red cube", "--workdir", "W"]


CASES = [
    # Prompts.
    ("empty-prompt", ["generate", "", "--workdir", "W"], None, "prompt is empty"),
    ("blank-prompt", ["generate", "  \t", "--workdir", "W"], None, "prompt is empty"),
    ("non-utf8-prompt", ["generate", "a red \udcff cube", "--workdir", "W"], None,
     "not a solids prompt"),
    ("long-prompt", _long_prompt_args(), None, "…' is not a solids prompt"),
    # Config keys, types and values (item 3).
    ("unknown-key", [*GEN, "--config.nope=1"], None, "unknown config key 'nope'"),
    ("wrong-type", [*GEN, "--config.num_steps=abc"], None, "must be a number"),
    ("height-0", [*GEN, "--config.camera.height=0"], None,
     "'camera.height' is 0; allowed: [1, 8192]"),
    ("height-negative", [*GEN, "--config.camera.height=-4"], None, "'camera.height' is -4"),
    # ~13 GiB per device: XLA's elemental emitter (cpu_env) compiles no scatter-add over the
    # 2^31 indices of a 2048^2 render with two views.
    ("too-big-for-memory", [*GEN, "--config.camera.height=1024", "--config.camera.width=1024",
                            "--config.views_per_step=1"], None, "GiB per device"),
    ("checkpoint-every-0", [*GEN, "--config.checkpoint_every=0"], None,
     "'checkpoint_every' is 0; allowed: >= 1"),
    ("log-every-0", [*GEN, "--config.log_every=0"], None, "'log_every' is 0"),
    ("short-background", [*GEN, "--config.background=(1.0, 1.0)"], None,
     "'background' must have 3 entries"),
    ("mesh-resolution", [*GEN, "--config.export.mesh_resolution=100000"], None,
     "'export.mesh_resolution' is 100000; allowed: [2, 1024]"),
    ("video-size-0", [*GEN, "--config.export.video_size=0"], None, "'export.video_size' is 0"),
    ("nan-value", [*GEN, "--config.guidance.scale=nan"], None, "must be a number, got 'nan'"),
    ("method-contradicts-config", [*GEN, "--method", "sjc", "--config", "dreamfusion:toy"],
     None, "contradicts"),
    # Priors.
    ("no-such-prior", [*GEN, "--prior", "/no/such/folder"], None, "/no/such/folder"),
    ("pickle-only-prior", [*GEN, "--prior", "pickles"], _pickle_prior, "pickle"),
    # Run folders (items 1, 7).
    ("unwritable-workdir", ["generate", "a red cube", "--workdir", "/proc/jax3d/w"], None,
     "cannot write"),
    ("overwrite-a-user-folder", ["generate", "a red cube", "--workdir", "W/mydata",
                                 "--overwrite"], _user_folder, "never deletes"),
    ("other-prompt", ["generate", "a blue cone", "--workdir", "W"], _float32_run,
     "differing in prompt"),
    ("other-dtype", [*GEN, "--dtype", "bfloat16"], _float32_run, "differing in dtype"),
    # Config files (items 8, 9).
    ("get-config-not-a-configdict", [*GEN, "--config", "mine.py"],
     _config_file("def get_config(preset=None):\n  return {'method': 'sds'}\n"),
     "must return an ml_collections.ConfigDict"),
    ("get-config-missing-keys", [*GEN, "--config", "mine.py"],
     _config_file("def get_config(preset=None):\n"
                  "  return ml_collections.ConfigDict(dict(method='sds'))\n"), "are missing"),
    ("get-config-key-error", [*GEN, "--config", "mine.py"],
     _config_file("def get_config(preset=None):\n  return {}['oops']\n"), "KeyError: 'oops'"),
    ("unknown-preset", [*GEN, "--config", "dreamfusion:big"], None, "unknown preset 'big'"),
    ("bare-name-is-shipped", ["generate", "a pink elephant", "--workdir", "W", "--config",
                              "dreamfusion"], _shadowing_file, "not a solids prompt"),
    # VSD (the LoRA network's settings and a prior it can attach to).
    ("vsd-analytic-prior", [*GEN, "--method", "vsd", "--prior", "analytic"], None,
     "no UNet network"),
    ("vsd-lora-rank-0", [*GEN, "--method", "vsd", "--config.lora.rank=0"], None, "lora.rank"),
    ("vsd-lora-prediction", [*GEN, "--method", "vsd", "--config.lora.prediction=x0"], None,
     "lora.prediction"),
    ("vsd-camera-drop", [*GEN, "--method", "vsd", "--config.lora.camera_drop=2"], None,
     "lora.camera_drop"),
    # Other commands (items 8, 9).
    ("bench-no-prompts", ["bench", "solids", "--prompts", ""], None, "names no prompt"),
    ("bench-blank-prompts", ["bench", "solids", "--prompts", " ; "], None, "names no prompt"),
    ("sample-out-folder", ["sample", "a red cube", "--out", "W"],
     lambda tmp: (tmp / "W").mkdir(), "is a folder"),
    ("sample-empty-prompt", ["sample", "", "--out", "s.png"], None, "prompt is empty"),
    ("sample-non-solids-prompt", ["sample", "a photo of a dog", "--out", "s.png"], None,
     "not a solids prompt"),
    ("eval-resolution-0", ["eval", "W", "--resolution", "0"], _float32_run, "--resolution"),
    ("eval-not-a-run", ["eval", "W"], lambda tmp: (tmp / "W").mkdir(), "holds no jax3d run"),
    ("export-no-checkpoint", ["export", "W"], _float32_run, "no checkpoint yet"),
    ("export-level-nan", ["export", "W", "--level", "nan"], _float32_run, "--level"),
    ("train-prior-bad-key", ["train-prior", "--workdir", "W", "--config.nope=1"], None,
     "unknown config key"),
]


@pytest.mark.parametrize("argv,setup,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(argv, setup, needle, tmp_path,
                                                          monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  if setup is not None:
    setup(tmp_path)
  before = _snapshot(tmp_path)
  code = cli.main(list(argv))
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert code == 2, err[-2000:]
  assert len(lines) == 1 and lines[0].startswith("jax3d: error: "), err[-2000:]
  assert needle in lines[0], lines[0]
  assert len(lines[0]) < 600
  assert _snapshot(tmp_path) == before


def test_sigterm_outside_training_is_one_line_exit_143(tmp_path, monkeypatch, capsys):
  """SIGTERM while the prior loads (before training): one line, exit 143, nothing written."""
  monkeypatch.chdir(tmp_path)
  real = priors.load_prior

  def load_then_terminated(*args, **kwargs):
    prior = real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return prior
  monkeypatch.setattr(priors, "load_prior", load_then_terminated)
  handler = signal.getsignal(signal.SIGTERM)
  assert cli.main(list(GEN)) == 143
  lines = capsys.readouterr().err.strip().splitlines()
  assert lines == ["jax3d: interrupted by SIGTERM before the command finished; rerun the same "
                   "command to finish it (completed checkpoints are kept)"], lines
  assert not (tmp_path / "W").exists()
  assert signal.getsignal(signal.SIGTERM) is handler  # Restored after the command.


def test_identity_records_dtype_and_prior_weights(tmp_path):
  _float32_run(tmp_path)
  record = json.loads((tmp_path / "W" / "config.json").read_text())["run"]
  assert record["dtype"] == "float32"
  assert record["prior_weights_sha256"] == priors.describe(record["prior"])["weights_sha256"]
  assert len(record["prior_weights_sha256"]) == 64
