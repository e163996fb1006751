"""Prior names and paths -> `Prior` objects (the `--prior` option of every command).

    'solids'   the shipped solids prior (jax3d/assets/solids-prior/, a pixel-space diffusers
               folder trained by `jax3d train-prior`)
    'analytic' the exact prior over solids renders (`analytic.solids_analytic_prior`)
    PATH       a local diffusers-layout folder (Stable Diffusion or any compatible pipeline)
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib

from jax3d.errors import UserError

SOLIDS = "solids"
ANALYTIC = "analytic"
SHIPPED_SOLIDS_FOLDER = "solids-prior"
ANALYTIC_SEED = 0
DTYPES = ("float32", "bfloat16")


def shipped_solids_path() -> pathlib.Path:
  """Where the shipped solids prior lives inside the installed package."""
  return pathlib.Path(str(importlib.resources.files("jax3d.assets"))) / SHIPPED_SOLIDS_FOLDER


def load_prior(spec: str, dtype: str = "float32", allow_pickle: bool = False):
  """'solids' | 'analytic' | a diffusers folder path -> Prior.

  `dtype` ('float32' | 'bfloat16') applies to network priors; the analytic prior is always
  float32 (it has no network, and its mixture weights need the precision).
  """
  if dtype not in DTYPES:
    raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
  # Heavy imports after the cheap checks, so mistakes are reported at once.
  if spec == ANALYTIC:
    import jax  # pylint: disable=g-import-not-at-top
    from jax3d.priors import analytic  # pylint: disable=g-import-not-at-top
    return analytic.solids_analytic_prior(jax.random.key(ANALYTIC_SEED))
  name = None
  if spec == SOLIDS:
    path, name = shipped_solids_path(), SOLIDS
    if not (path / "model_index.json").is_file():
      raise UserError("the shipped solids prior is not installed yet; use --prior analytic or "
                      "a diffusers folder")
  else:
    path = pathlib.Path(os.path.expanduser(spec))
    if not path.exists():
      raise UserError(f"unknown prior {spec!r}: not 'solids', not 'analytic', and no such "
                      f"folder")
  from jax3d.priors import diffusers as diffusers_prior  # pylint: disable=g-import-not-at-top
  return diffusers_prior.load_diffusers_prior(path, dtype, allow_pickle, name=name)


__all__ = ["load_prior", "shipped_solids_path"]
