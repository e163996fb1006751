"""Where jax3d's caches live: $ENV_VAR, else $XDG_CACHE_HOME/jax3d/NAME (~/.cache/jax3d/NAME);
the value "off" means no cache."""

from __future__ import annotations

import os
import pathlib
from typing import Mapping

OFF = "off"
# The prior cache: converted diffusers weights and the analytic prior's rendered image set.
PRIOR_ENV = "JAX3D_PRIOR_CACHE"


def folder(env_var: str, name: str,
           environ: Mapping[str, str] = os.environ) -> pathlib.Path | None:
  """The cache folder `env_var` names (user-expanded), else the XDG default; None when off."""
  root = environ.get(env_var)
  if root == OFF:
    return None
  if root:
    return pathlib.Path(root).expanduser()
  xdg = environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
  return pathlib.Path(xdg).expanduser() / "jax3d" / name


def prior_folder(environ: Mapping[str, str] = os.environ) -> pathlib.Path | None:
  """The prior cache: $JAX3D_PRIOR_CACHE, else $XDG_CACHE_HOME/jax3d/priors; None when off."""
  return folder(PRIOR_ENV, "priors", environ)


__all__ = ["OFF", "PRIOR_ENV", "folder", "prior_folder"]
