"""The persistent XLA compilation cache of jax3d's commands.

A second run of the same configuration loads its compiled programs from disk instead of
compiling them again (minutes for a Stable Diffusion step on a TPU). The folder is JAX's own
$JAX_COMPILATION_CACHE_DIR when that is set; else $JAX3D_COMPILE_CACHE; else
$XDG_CACHE_HOME/jax3d/xla (~/.cache/jax3d/xla). JAX3D_COMPILE_CACHE=off turns it off. jax3d
caps the folder at MAX_BYTES (JAX evicts the least recently used entries) unless
jax_compilation_cache_max_size is set. Programs that compile in under a second are not kept
(JAX's default threshold).
"""

from __future__ import annotations

import os
from typing import Mapping

from jax3d import cache_paths

ENV = "JAX3D_COMPILE_CACHE"
OFF = cache_paths.OFF
MAX_BYTES = 8 << 30


def folder(environ: Mapping[str, str] = os.environ) -> str | None:
  """The cache folder jax3d uses when JAX has none configured; None when it is off."""
  root = cache_paths.folder(ENV, "xla", environ)
  return None if root is None else str(root)


def enable(environ: Mapping[str, str] = os.environ) -> str | None:
  """Points JAX's persistent compilation cache at `folder()` unless JAX already has one
  (from $JAX_COMPILATION_CACHE_DIR or jax.config); returns the folder in use, or None."""
  import jax  # pylint: disable=g-import-not-at-top  (`jax3d --help` stays instant)
  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  root = folder(environ)
  if root is None:
    return None
  jax.config.update("jax_compilation_cache_dir", root)
  if jax.config.jax_compilation_cache_max_size < 0:
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  return root


__all__ = ["ENV", "OFF", "MAX_BYTES", "folder", "enable"]
