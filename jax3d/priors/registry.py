"""Prior names and paths -> `Prior` objects (the `--prior` option of every command).

    'solids'   the shipped solids prior (jax3d/assets/solids-prior/, a pixel-space diffusers
               folder trained by `jax3d train-prior`), captions with DreamFusion's view words
    'solids-azimuth'  the same network fine-tuned on 30° azimuth view words
               (jax3d/assets/solids-azimuth-prior/): pins a cube's turn per view
    'analytic' the exact prior over solids renders (`analytic.solids_analytic_prior`), built
               from 64 renders per object; 'analytic:N' from N renders per object (a denser
               set: fewer stray images per view, see README's "The analytic prior's halo")
    'random:sd15', 'random:sd21'  Stable Diffusion v1.5 / v2.1-base architectures with seeded
               random weights made on the device (configs in jax3d/assets/random-sd*/; no weight
               files): step time and memory at the real scale, meaningless results
    PATH       a local diffusers-layout folder (Stable Diffusion or any compatible pipeline)
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import pathlib

from jax3d.errors import UserError

SOLIDS = "solids"
SOLIDS_AZIMUTH = "solids-azimuth"
ANALYTIC = "analytic"
SHIPPED = {SOLIDS: "solids-prior", SOLIDS_AZIMUTH: "solids-azimuth-prior"}  # name -> folder
RANDOM = {"random:sd15": "random-sd15", "random:sd21": "random-sd21"}  # name -> config folder
RANDOM_SEED = 0
ANALYTIC_SEED = 0
ANALYTIC_VIEWS = 64  # renders per object of plain 'analytic'
DTYPES = ("float32", "bfloat16")


def shipped_solids_path(name: str = SOLIDS) -> pathlib.Path:
  """Where the shipped prior `name` (a key of SHIPPED or RANDOM) lives inside the installed
  package."""
  return (pathlib.Path(str(importlib.resources.files("jax3d.assets"))) /
          {**SHIPPED, **RANDOM}[name])


def is_random(spec: str) -> bool:
  """Whether `spec` names a random-weight architecture (results mean nothing)."""
  return spec in RANDOM


def analytic_views(spec: str) -> int | None:
  """Renders per object of an 'analytic' or 'analytic:N' spec; None for any other spec."""
  if spec == ANALYTIC:
    return ANALYTIC_VIEWS
  if not spec.startswith(ANALYTIC + ":"):
    return None
  n = spec[len(ANALYTIC) + 1:]
  if not n.isdigit() or int(n) < 1:
    raise UserError(f"bad prior {spec!r}: write analytic:N with N a positive whole number of "
                    f"renders per object, e.g. analytic:256")
  return int(n)


def is_solids_prior(spec: str) -> bool:
  """Whether `spec` names a prior of the solids world (it knows only solids prompts)."""
  return spec in SHIPPED or analytic_views(spec) is not None


def load_prior(spec: str, dtype: str = "float32", allow_pickle: bool = False):
  """'solids' | 'solids-azimuth' | 'analytic[:N]' | a diffusers folder path -> Prior.

  `dtype` ('float32' | 'bfloat16') applies to network priors; the analytic prior is always
  float32 (it has no network, and its mixture weights need the precision).
  """
  if dtype not in DTYPES:
    raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
  # Heavy imports after the cheap checks, so mistakes are reported at once.
  views = analytic_views(spec)
  if views is not None:
    import jax  # pylint: disable=g-import-not-at-top
    from jax3d.priors import analytic  # pylint: disable=g-import-not-at-top
    from jax3d import cache_paths  # pylint: disable=g-import-not-at-top
    return analytic.solids_analytic_prior(jax.random.key(ANALYTIC_SEED), views_per_object=views,
                                          cache=cache_paths.prior_folder())
  path = prior_folder(spec)
  from jax3d.priors import diffusers as diffusers_prior  # pylint: disable=g-import-not-at-top
  return diffusers_prior.load_diffusers_prior(
      path, dtype, allow_pickle, name=spec if spec in SHIPPED or spec in RANDOM else None,
      random_seed=RANDOM_SEED if spec in RANDOM else None)


def prior_folder(spec: str) -> pathlib.Path:
  """The diffusers folder of a shipped name or a path; a UserError if it is not there."""
  if spec in SHIPPED or spec in RANDOM:
    path = shipped_solids_path(spec)
    if not (path / "model_index.json").is_file():
      raise UserError(f"the shipped {spec} prior is not installed; use --prior analytic or "
                      f"a diffusers folder")
    return path
  path = pathlib.Path(os.path.expanduser(spec))
  if not path.exists():
    raise UserError(f"unknown prior {spec!r}: not one of "
                    f"{', '.join([*SHIPPED, ANALYTIC, *RANDOM])}, "
                    f"analytic:N, and no such folder")
  return path


WEIGHT_SUFFIXES = (".msgpack", ".safetensors", ".bin", ".ckpt")


def describe(spec: str) -> dict[str, str | None]:
  """What a result file records of a prior: its spec and the sha256 of its weights (of every
  weight file's relative path and bytes, in path order); None for the analytic prior, which
  has no weights (it is a deterministic function of the spec)."""
  if analytic_views(spec) is not None:
    return {"prior": spec, "weights_sha256": None}
  if spec in RANDOM:  # a deterministic function of the spec and RANDOM_SEED
    return {"prior": spec, "weights_sha256": None, "random_seed": RANDOM_SEED}
  folder = prior_folder(spec)
  digest = hashlib.sha256()
  files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
  for path in files:
    digest.update(str(path.relative_to(folder)).encode())
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
  return {"prior": spec, "weights_sha256": digest.hexdigest() if files else None}


__all__ = ["load_prior", "prior_folder", "shipped_solids_path", "is_solids_prior", "is_random",
           "analytic_views", "describe"]
