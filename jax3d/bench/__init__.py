"""`jax3d bench WHAT`: speed and quality benchmarks, printed as a table and written as JSON.

One module per benchmark (render, prior, solids, step), each with `run(args) -> (rows,
settings)`: a list of flat dicts, one per measured case, and the settings it resolved (prior
and weights' sha256, config and overrides). `main` adds the provenance header (the command,
the commit, the device and the versions), prints the rows and writes everything as JSON.
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import shlex
import subprocess
import sys
from typing import Any, Sequence

from jax3d.bench.table import Row, print_table, write_json  # noqa: F401  (the bench API)
from jax3d.errors import UserError

BENCHMARKS = ("render", "prior", "solids", "step")


def commit() -> str | None:
  """The git commit of the jax3d source tree ('+dirty' when it has uncommitted changes), or
  None outside a git checkout."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True, timeout=10, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ("+dirty" if dirty.strip() else "")


def versions() -> dict[str, str]:
  import jax  # pylint: disable=g-import-not-at-top
  out = {"python": platform.python_version(), "jax": jax.__version__}
  for name in ("jaxlib", "flax", "optax", "diffusers", "transformers"):
    try:
      out[name] = importlib.import_module(name).__version__
    except ImportError:
      pass
  return out


def header(what: str, argv: Sequence[str]) -> dict[str, Any]:
  """Where a result comes from: command, commit, device, versions, time."""
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  return {
      "benchmark": what,
      "command": "jax3d " + " ".join(shlex.quote(a) for a in argv),
      "commit": commit(),
      "device": device.device_kind,
      "platform": device.platform,
      "device_count": jax.device_count(),
      "process_count": jax.process_count(),
      "jax_version": jax.__version__,
      "versions": versions(),
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def result(args, settings: dict[str, Any], rows: list[Row], **extra) -> dict[str, Any]:
  """A result file's contents: `args.header` (set by `main`), then `extra`, settings and rows."""
  return {**args.header, "quick": bool(args.quick), **extra, "settings": settings, "rows": rows}


def main(args) -> int:
  """Runs the benchmark `args.what`; prints its table and writes JSON to `args.out` if set."""
  if args.what not in BENCHMARKS:
    raise UserError(f"unknown benchmark {args.what!r}; choose one of {', '.join(BENCHMARKS)}")
  if args.repeats < 1:
    raise UserError(f"--repeats must be at least 1, got {args.repeats}")
  import jax  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(f"jax3d.bench.{args.what}")
  head = header(args.what, getattr(args, "argv", sys.argv[1:]))
  args.header = head  # `bench solids` writes its rows so far after every prompt
  rows, settings = module.run(args)
  if jax.process_index() != 0:  # a multi-process `bench step`: process 0 reports
    return 0
  payload = result(args, settings, rows,
                   **({"complete": True} if args.what == "solids" else {}))
  procs = f" in {head['process_count']} processes" if head["process_count"] > 1 else ""
  title = (f"jax3d bench {args.what}: {head['device']} x{head['device_count']}{procs} "
           f"({head['platform']}), jax {head['jax_version']}, commit {head['commit']}"
           f"{' (quick)' if args.quick else ''}")
  if "prior_load_s" in settings:
    title += f"; prior {settings.get('prior')} loaded in {settings['prior_load_s']:.2f} s"
  if "grid_label" in settings:
    title += f"\n{settings['grid_label']}"
  print_table(rows, title=title)
  if args.out:
    write_json(args.out, payload)
    print(f"wrote {args.out}")
  return 0


__all__ = ["BENCHMARKS", "main", "header", "result", "commit", "versions", "print_table",
           "write_json"]
