"""Smoke test of `jax3d bench render --quick` through the CLI, plus the table/JSON helpers."""

from __future__ import annotations

import io
import json
import platform
import re
import shlex

import jax
import numpy as np

from jax3d import bench
from jax3d import cli
from jax3d import configuration


def test_bench_render_quick_writes_json(tmp_path, capsys):
  out = tmp_path / "sub" / "render.json"
  argv = ["bench", "render", "--quick", "--repeats", "1", "--out", str(out)]
  assert cli.main(argv) == 0
  payload = json.loads(out.read_text())
  assert payload["benchmark"] == "render"
  assert payload["command"] == "jax3d " + shlex.join(argv)
  assert payload["commit"] is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", payload["commit"])
  assert payload["device"] == jax.devices()[0].device_kind
  assert payload["jax_version"] == jax.__version__
  assert payload["versions"]["jax"] == jax.__version__
  assert payload["versions"]["python"] == platform.python_version()
  assert payload["quick"] is True
  # --grid toy: the field of the dreamfusion:toy preset.
  assert payload["settings"]["grid"] == "toy"
  assert payload["settings"]["nerf"] == configuration.load("dreamfusion:toy").field.to_dict()
  rows = payload["rows"]
  cases = {(r["case"], r["pass"]) for r in rows}
  for pass_ in ("forward", "forward+backward"):
    assert ("encode", pass_) in cases and ("nerf", pass_) in cases
  for r in rows:
    assert r["time_ms"] > 0 and r["compile_s"] > 0 and r["samples_per_s"] > 0
    np.testing.assert_allclose(r["samples_per_s"] * r["time_ms"] / 1e3, r["points"], rtol=1e-6)
    if r["case"] != "encode":
      np.testing.assert_allclose(r["rays_per_s"] * r["samples_per_ray"], r["samples_per_s"],
                                 rtol=1e-6)
      assert r["points"] == 16 * 16 * r["samples_per_ray"]
  printed = capsys.readouterr().out
  assert "jax3d bench render" in printed and "toy hash grid (dreamfusion:toy)" in printed
  assert "forward+backward" in printed


def test_bench_render_raster_quick(tmp_path, capsys):
  from jax3d.bench import render  # pylint: disable=g-import-not-at-top
  out = tmp_path / "raster.json"
  assert cli.main(["bench", "render", "--raster", "--quick", "--repeats", "1", "--out",
                   str(out)]) == 0
  payload = json.loads(out.read_text())
  assert payload["settings"]["raster"] is True
  rows = payload["rows"]
  assert {r["pass"] for r in rows} == {"forward", "forward+backward"}
  for r in rows:
    assert r["overflow"] == 0 and r["time_ms"] > 0 and r["image"] == "16x16"
    np.testing.assert_allclose(r["faces_per_s"] * r["time_ms"] / 1e3, r["faces"], rtol=1e-6)
  assert "mesh rasterizer" in capsys.readouterr().out
  # The benchmark's sphere is closed and outward: V − E + F = 2, positive volume.
  v, f = render.sphere_mesh(1000)
  pairs = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
  edges = np.unique(np.sort(pairs, 1), axis=0)
  assert len(v) - len(edges) + len(f) == 2
  tri = v[f].astype(np.float64)
  assert np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() > 0
  assert cli.main(["bench", "prior", "--raster"]) == 2


def test_bench_bad_repeats_is_user_error(capsys):
  assert cli.main(["bench", "render", "--quick", "--repeats", "0"]) == 2
  assert "--repeats" in capsys.readouterr().err


def test_print_table_aligns_and_formats():
  buf = io.StringIO()
  bench.print_table([{"case": "a", "n": 1234567, "x": 0.5, "y": None},
                     {"case": "bbbb", "n": 2, "x": 2.5e7, "y": "z"}], title="T", file=buf)
  lines = buf.getvalue().splitlines()
  assert lines[0] == "T"
  assert len({len(line) for line in lines[1:]}) == 1  # header, rule and rows align
  assert "1,234,567" in lines[3] and "25,000,000" in lines[4] and "-" in lines[3]
