"""Where jax3d's caches live: $ENV_VAR, else $XDG_CACHE_HOME/jax3d/NAME (~/.cache/jax3d/NAME);
the value "off" means no cache."""

from __future__ import annotations

import os
import pathlib
from typing import Mapping

OFF = "off"


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


__all__ = ["OFF", "folder"]
