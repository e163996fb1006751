"""Makes plain `pytest` run as CI does: 4 forced CPU devices (`cpu_env`), a compilation cache
and a prior cache shared with the suite's subprocesses (none in the home folder), and float32
matmuls at full precision for comparisons against references. Must run before jax is
imported."""

import os

import cpu_env

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + cpu_env.xla_flags(4)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_CACHE = os.environ.get("JAX3D_TEST_CACHE",
                        os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache"))
# The prior cache (converted weights, the analytic prior's renders) is the suite's, so the
# analytic set is rendered once per run; tests of the cache point it at their own folder, and
# no test writes to ~/.cache.
os.environ.setdefault("JAX3D_PRIOR_CACHE", os.path.join(_CACHE, "priors"))

import jax  # noqa: E402  (after XLA_FLAGS on purpose)

# The suite's subprocesses (`jax3d generate`, two-process runs, resumes) inherit the cache.
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(_CACHE, "xla")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
jax.config.update("jax_compilation_cache_dir", os.path.join(_CACHE, "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_default_matmul_precision", "highest")

# The longest test files (seconds in CI), started first: with --no-loadscope-reorder
# (pyproject.toml) pytest-xdist hands whole files to its workers in collection order, so no
# long file is left to run alone at the end (by default it orders files by their test count).
LONGEST_FIRST = ("test_distributed.py", "test_prior_training.py", "test_magic3d.py",
                 "test_runner.py", "test_prolificdreamer.py", "test_presets_sd.py",
                 "test_systems.py", "test_bench_render.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a file
