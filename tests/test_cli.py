"""Config loading (`path.py:preset`, shipped names from any cwd), `--config.key=value`
overrides, and the CLI's error contract: a user's mistake is one stderr line and exit 2."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import types

import ml_collections
import pytest

import jax3d
from jax3d import cli
from jax3d import configuration
from jax3d.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy():
  return configuration.load("dreamfusion:toy")


# --- load -----------------------------------------------------------------------------------

def test_load_shipped_name_and_path(monkeypatch):
  toy = configuration.load("dreamfusion:toy")
  assert isinstance(toy, ml_collections.ConfigDict)
  assert toy.method == "sds" and toy.camera.height == 32
  monkeypatch.chdir(REPO)
  sd = configuration.load("configs/dreamfusion.py:sd")
  assert sd.camera.height == 64 and sd.field.hashgrid.num_levels == 16
  assert sd.num_steps != toy.num_steps
  # No preset: the file's own default; `default_preset` fills in a missing one.
  assert configuration.load("dreamfusion").to_dict() == toy.to_dict()
  assert configuration.load("dreamfusion", "sd").to_dict() == sd.to_dict()
  assert configuration.load("solids_prior:tiny").train.num_steps < 100


def test_shipped_configs_resolve_from_any_cwd(tmp_path):
  code = ("from jax3d import configuration as c; "
          "a = c.load('dreamfusion:toy'); b = c.load('configs/dreamfusion.py:sd'); "
          "print(a.method, a.camera.height, b.camera.height)")
  out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["sds", "32", "64"]


def test_load_a_user_config_file(tmp_path):
  path = tmp_path / "mine.py"
  path.write_text("import ml_collections\n"
                  "def get_config(preset=None):\n"
                  "  return ml_collections.ConfigDict(dict(preset=preset or 'none', n=3))\n")
  assert configuration.load(str(path)).preset == "none"
  assert configuration.load(f"{path}:big").preset == "big"


@pytest.mark.parametrize("spec,match", [
    ("no_such_config:toy", "not a shipped config.*dreamfusion"),
    ("/no/such/dir/config.py", "not found"),
    ("dreamfusion:no_such_preset", "no_such_preset"),
    ("solids_prior:toy", "'toy'"),
])
def test_load_bad_spec_is_a_user_error(spec, match):
  with pytest.raises(UserError, match=match):
    configuration.load(spec)


@pytest.mark.parametrize("source,match", [
    ("X = 1\n", "get_config"),
    ("raise RuntimeError('boom')\n", "boom"),
    ("def get_config(preset=None)\n  return 1\n", "SyntaxError"),
    ("import no_such_module_jax3d\n", "no_such_module_jax3d"),
])
def test_broken_config_file_is_a_user_error(tmp_path, source, match):
  path = tmp_path / "broken.py"
  path.write_text(source)
  with pytest.raises(UserError, match=match):
    configuration.load(f"{path}:toy")


def test_get_config_raising_is_a_user_error(tmp_path):
  path = tmp_path / "raises.py"
  path.write_text("def get_config(preset=None):\n"
                  "  raise ValueError(f'unknown preset {preset}')\n")
  with pytest.raises(UserError, match="unknown preset big"):
    configuration.load(f"{path}:big")


def test_non_python_config_file_is_a_user_error(tmp_path):
  path = tmp_path / "config.yaml"
  path.write_text("seed: 0\n")
  with pytest.raises(UserError, match="config.yaml"):
    configuration.load(str(path))


def test_get_config_without_arguments(tmp_path):
  path = tmp_path / "noarg.py"
  path.write_text("import ml_collections\n"
                  "def get_config():\n"
                  "  return ml_collections.ConfigDict(dict(a=1))\n")
  try:
    assert configuration.load(str(path)).a == 1
  except UserError:
    pass  # Also acceptable: a one-line explanation.


# --- apply_overrides ------------------------------------------------------------------------

def test_overrides_parse_each_type(toy):
  before = toy.to_dict()
  cfg = configuration.apply_overrides(toy, [
      "field.hashgrid.num_levels=4",  # nested int
      "guidance.scale=7.5",  # float
      "optim.lr_grid=1e-3",
      "regularizers.opacity=2",  # an int given to a float stays a float
      "guidance.view_dependent_prompt=False",  # bool
      "method=sjc",  # bare word
      "field.density_activation=exp",
      "camera.elevation_range=(0, 30)",  # tuple
      "background=(0.5, 0.25, 1.0)",
      "num_steps=12",
      "guidance.timesteps.t_max_end=0.5",  # a None default takes any value
  ])
  assert cfg.field.hashgrid.num_levels == 4 and isinstance(cfg.field.hashgrid.num_levels, int)
  assert cfg.guidance.scale == 7.5
  assert cfg.optim.lr_grid == 1e-3
  assert cfg.regularizers.opacity == 2.0 and isinstance(cfg.regularizers.opacity, float)
  assert cfg.guidance.view_dependent_prompt is False
  assert cfg.method == "sjc" and cfg.field.density_activation == "exp"
  assert tuple(cfg.camera.elevation_range) == (0, 30)
  assert tuple(cfg.background) == (0.5, 0.25, 1.0)
  assert cfg.num_steps == 12 and isinstance(cfg.num_steps, int)
  assert cfg.guidance.timesteps.t_max_end == 0.5
  # Untouched keys keep their values; the input config is not mutated.
  assert cfg.seed == toy.seed and cfg.field.hashgrid.log2_table_size == 14
  assert toy.to_dict() == before
  assert configuration.apply_overrides(toy, []).to_dict() == before


def test_string_override_keeps_digits_as_text():
  cfg = ml_collections.ConfigDict(dict(name="a", tag="x"))
  out = configuration.apply_overrides(cfg, ["name=123", "tag=(1, 2)"])
  assert out.name == "123" and out.tag == "(1, 2)"


@pytest.mark.parametrize("override,match", [
    ("num_steps=2.5", "integer"),
    ("field.hashgrid.num_levels=four", "number"),
    ("guidance.scale=high", "number"),
    ("guidance.scale=True", "number"),
    ("guidance.scale=", "number"),
    ("guidance.view_dependent_prompt=1", "True or False"),
    ("camera.elevation_range=5", "tuple"),
    ("seed", "value"),
])
def test_bad_override_values_are_user_errors(toy, override, match):
  with pytest.raises(UserError, match=match):
    configuration.apply_overrides(toy, [override])


@pytest.mark.parametrize("override,known", [
    ("nope=1", ["seed", "camera", "field", "num_steps"]),
    ("field.hashgrid.num_levelz=4", ["num_levels", "log2_table_size", "base_resolution"]),
    ("fields.hashgrid.num_levels=4", ["field", "camera"]),
])
def test_unknown_key_names_the_known_keys(toy, override, known):
  with pytest.raises(UserError, match="unknown config key") as e:
    configuration.apply_overrides(toy, [override])
  for k in known:
    assert k in str(e.value)


def test_group_given_a_value_is_a_user_error(toy):
  with pytest.raises(UserError, match="group") as e:
    configuration.apply_overrides(toy, ["field.hashgrid=4"])
  assert "num_levels" in str(e.value)


def test_key_below_a_leaf_is_a_user_error(toy):
  with pytest.raises(UserError, match="seed"):
    configuration.apply_overrides(toy, ["seed.x.y=1"])


def test_to_json_roundtrip(toy):
  import json  # pylint: disable=g-import-not-at-top
  assert json.loads(configuration.to_json(toy))["camera"]["height"] == 32


# --- the CLI error contract -----------------------------------------------------------------

def _one_error_line(capsys, argv):
  code = cli.main(argv)
  out, err = capsys.readouterr()
  lines = err.splitlines()
  assert code == 2, (code, err)
  assert len(lines) == 1 and lines[0].startswith("jax3d: error: "), err
  assert out == ""
  return lines[0]


@pytest.mark.parametrize("argv,match", [
    ([], "required"),
    (["nope"], "nope"),
    (["--nope"], ""),
    (["bench"], "required"),
    (["bench", "nope"], "nope"),
    (["bench", "render", "--nope"], "--nope"),
    (["bench", "render", "--repeats", "many"], "many"),
    (["export", "w", "stray"], "stray"),
    (["train-prior", "--workdir", "/nonexistent/w", "--stop-after", "0"], "--stop-after"),
])
def test_cli_usage_errors(capsys, argv, match):
  assert match in _one_error_line(capsys, argv)


@pytest.mark.parametrize("argv", [
    ["train-prior", "--workdir", "w", "--config.train.num_steps"],
    ["generate", "a red cube", "--workdir", "w", "--config.seed"],
])
def test_cli_override_without_value(capsys, argv):
  assert "--config." in _one_error_line(capsys, argv)


def test_method_and_config_resolve_to_one_system():
  from jax3d.systems import registry  # pylint: disable=g-import-not-at-top
  method, cfg = registry.resolve("sjc", None)  # --method alone: that method's default config
  assert method == "sjc" and cfg.to_dict() == configuration.load(
      registry.SYSTEMS["sjc"].config).to_dict()
  assert registry.resolve(None, "sjc:sd")[0] == "sjc"  # the config's `method` picks the system
  assert registry.resolve(None, None)[0] == "sds"
  method, cfg = registry.resolve("sds", "dreamfusion:toy", ["num_steps=3"])
  assert method == "sds" and cfg.num_steps == 3


@pytest.mark.parametrize("args,match", [
    (["--method", "sjc", "--config", "dreamfusion:toy"],
     "--method sjc contradicts config dreamfusion:toy"),
    (["--method", "dreamtime"], "unknown method 'dreamtime'; choose one of sds, sjc"),
    (["--config", "dreamfusion:toy", "--config.method=dreamtime"], "unknown method 'dreamtime'"),
])
def test_cli_method_errors(capsys, tmp_path, args, match):
  workdir = tmp_path / "w"
  assert match in _one_error_line(capsys, ["generate", "a red cube", "--workdir", str(workdir),
                                           *args])
  assert not workdir.exists()


def test_cli_rejects_overrides_a_command_cannot_use(capsys, monkeypatch):
  calls = []
  fake = types.ModuleType("jax3d.bench")
  fake.main = lambda args: calls.append(args) or 0
  monkeypatch.setitem(sys.modules, "jax3d.bench", fake)
  monkeypatch.setattr(jax3d, "bench", fake, raising=False)
  code = cli.main(["bench", "render", "--quick", "--config.seed=1"])
  capsys.readouterr()
  assert not calls and code == 2


def test_cli_module_error_is_one_line_without_traceback():
  env = dict(os.environ)
  out = subprocess.run([sys.executable, "-m", "jax3d.cli", "bench", "nope"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 2, out.stderr
  assert "Traceback" not in out.stderr
  lines = out.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("jax3d: error: "), out.stderr
  assert "nope" in lines[0] and out.stdout == ""


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_training_is_one_line_and_exit_128_plus_signal(capsys, monkeypatch, signum,
                                                                   code):
  from jax3d.errors import Interrupted  # pylint: disable=g-import-not-at-top
  fake = types.ModuleType("jax3d.bench")

  def interrupted(args):
    raise Interrupted(7, signum=signum)
  fake.main = interrupted
  monkeypatch.setitem(sys.modules, "jax3d.bench", fake)
  monkeypatch.setattr(jax3d, "bench", fake, raising=False)
  assert cli.main(["bench", "render", "--quick"]) == code
  _, err = capsys.readouterr()
  assert err.strip().splitlines() == [
      f"jax3d: interrupted by {signal.Signals(signum).name}; checkpoint saved at step 7: rerun "
      f"the same command to resume"]


def test_python_dash_m_jax3d_runs_the_cli():
  out = subprocess.run([sys.executable, "-m", "jax3d", "bench", "nope"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 2 and "nope" in out.stderr
