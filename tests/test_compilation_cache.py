"""The commands' persistent compilation cache: where it lives, when it is on, and that JAX
writes compiled programs there when jax3d points it at a folder."""

import os
import subprocess
import sys

import jax
import pytest

import cpu_env
from jax3d import cli
from jax3d import compilation_cache


def test_folder_follows_the_environment():
  assert compilation_cache.folder({"JAX3D_COMPILE_CACHE": "off"}) is None
  assert compilation_cache.folder({"JAX3D_COMPILE_CACHE": "/x/y"}) == "/x/y"
  assert compilation_cache.folder({"XDG_CACHE_HOME": "/c"}) == "/c/jax3d/xla"
  assert compilation_cache.folder({}) == os.path.expanduser("~/.cache/jax3d/xla")


@pytest.fixture
def no_cache_configured():
  """JAX's cache settings cleared for the test, restored after it."""
  saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size)
  jax.config.update("jax_compilation_cache_dir", None)
  jax.config.update("jax_compilation_cache_max_size", -1)
  yield
  jax.config.update("jax_compilation_cache_dir", saved[0])
  jax.config.update("jax_compilation_cache_max_size", saved[1])


def test_enable_sets_the_folder_and_a_size_cap_unless_jax_has_one(no_cache_configured, tmp_path):
  assert compilation_cache.enable({"JAX3D_COMPILE_CACHE": "off"}) is None
  assert jax.config.jax_compilation_cache_dir is None
  assert compilation_cache.enable({"JAX3D_COMPILE_CACHE": str(tmp_path)}) == str(tmp_path)
  assert jax.config.jax_compilation_cache_dir == str(tmp_path)
  assert jax.config.jax_compilation_cache_max_size == compilation_cache.MAX_BYTES
  # A folder JAX already has (here the one just set) wins over the environment.
  assert compilation_cache.enable({"JAX3D_COMPILE_CACHE": "/elsewhere"}) == str(tmp_path)


def test_jax_writes_compiled_programs_to_the_folder(tmp_path):
  env = cpu_env.subprocess_env(1, JAX3D_COMPILE_CACHE=str(tmp_path / "xla"))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  code = ("from jax3d import compilation_cache; compilation_cache.enable(); import jax; "
          "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
          "jax.jit(lambda x: x * 2 + 1)(1.0).block_until_ready()")
  subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
  assert os.listdir(tmp_path / "xla")


def test_commands_enable_it_but_timing_benchmarks_do_not(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(compilation_cache, "enable", lambda: calls.append(1))
  assert cli.main(["eval", str(tmp_path / "none")]) == 2
  assert calls == [1]
  assert cli.main(["bench", "step", "--method", "nope"]) == 2
  assert calls == [1]
