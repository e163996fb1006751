"""Benchmark tables and result files: aligned text tables, JSON, and compiled timings."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any, Callable, Sequence

from jax3d.errors import UserError

Row = dict[str, Any]


def _format(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  if isinstance(value, int):
    return f"{value:,}"
  if value == 0 or 1e-3 <= abs(value) < 1e3:
    return f"{value:.4g}"
  if abs(value) >= 1e3 and abs(value) < 1e12:
    return f"{value:,.0f}"
  return f"{value:.3e}"


def print_table(rows: Sequence[Row], title: str | None = None, file=None) -> None:
  """Prints rows (dicts with the same keys, in order) as an aligned text table."""
  file = file or sys.stdout
  if title:
    print(title, file=file)
  if not rows:
    print("(no rows)", file=file)
    return
  columns = list(rows[0])
  for row in rows[1:]:
    columns += [k for k in row if k not in columns]
  cells = [[_format(row.get(c)) for c in columns] for row in rows]
  widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
  line = "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                   for i, (c, w) in enumerate(zip(columns, widths)))
  print(line, file=file)
  print("-" * len(line), file=file)
  for r in cells:
    print("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                    for i, (v, w) in enumerate(zip(r, widths))), file=file)
  file.flush()


def write_json(path: str, payload: Any) -> None:
  """Writes `payload` as indented JSON, creating parent folders."""
  parent = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
      json.dump(payload, f, indent=2, sort_keys=False, default=str)
      f.write("\n")
  except OSError as e:
    raise UserError(f"cannot write benchmark results to {path}: {e}") from e


def time_compiled(fn: Callable, args: Sequence[Any], repeats: int) -> tuple[float, float]:
  """(compile seconds, median run seconds) of `jax.jit(fn)(*args)`, compile excluded."""
  import jax  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))  # warm-up: first-run allocations
  times = []
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return compile_s, statistics.median(times)


def repeats(args) -> int:
  """Timed repetitions per row: --repeats, at most 2 with --quick."""
  if args.repeats < 1:
    raise UserError(f"--repeats must be at least 1, got {args.repeats}")
  return min(args.repeats, 2) if args.quick else args.repeats
