"""`jax3d bench render`: hash-grid NeRF render and hash-encoding throughput.

The field is the `--grid` preset's (`configs/dreamfusion.py`: toy or sd). Rows: the encoding
alone on random points; renders of one camera at 64² and 128² with 64 and 128 samples per ray,
forward and forward+backward (the gradient of the mean rendered albedo with respect to every
field param, stratified samples); the same with per-sample normals and Lambertian shading
(finite-difference and analytic) at 64² × 64. Times exclude compilation (ahead-of-time
`lower().compile()`, reported as compile_s); each repetition ends with `block_until_ready`,
and the median is reported.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from jax3d.bench.table import Row, repeats as repeats_of, time_compiled


def field_config(grid: str):
  """The hash-grid NeRF of the dreamfusion preset `grid`."""
  from jax3d import configuration  # pylint: disable=g-import-not-at-top
  from jax3d.fields import nerf  # pylint: disable=g-import-not-at-top
  return configuration.typed(nerf.NeRFConfig, configuration.load(f"dreamfusion:{grid}").field,
                             "field")


def run(args) -> tuple[list[Row], dict[str, Any]]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax3d import cameras  # pylint: disable=g-import-not-at-top
  from jax3d.fields import hashgrid, nerf  # pylint: disable=g-import-not-at-top
  from jax3d.render import shading, volume  # pylint: disable=g-import-not-at-top

  cfg = field_config(args.grid)
  grid = cfg.hashgrid
  settings = {
      "grid": args.grid, "nerf": dataclasses.asdict(cfg),
      "grid_label": (f"{args.grid} hash grid (dreamfusion:{args.grid}): L={grid.num_levels} "
                     f"F={grid.features_per_level} T=2^{grid.log2_table_size} "
                     f"N={grid.base_resolution}..{grid.max_resolution} (f32); MLP "
                     f"{cfg.num_hidden_layers}x{cfg.hidden_dim}; {cfg.density_activation} "
                     f"density; albedo render unless +normals (Lambertian); median of "
                     f"{repeats_of(args)} runs, compile excluded")}
  if args.quick:
    sizes, samples, normal_cases, num_points = (16,), (8,), (("finite_difference", 16, 8),), 4096
  else:
    sizes, samples, num_points = (64, 128), (64, 128), 2**18
    normal_cases = (("finite_difference", 64, 64), ("analytic", 64, 64))
  repeats = repeats_of(args)
  params = nerf.init(jax.random.PRNGKey(0), cfg)
  rows: list[Row] = []

  def add(case, image, spp, rays, points, pass_, compile_s, seconds):
    rows.append({"case": case, "pass": pass_, "image": image, "samples_per_ray": spp,
                 "points": points, "compile_s": compile_s, "time_ms": seconds * 1e3,
                 "rays_per_s": None if rays is None else rays / seconds,
                 "samples_per_s": points / seconds})
    print(f"  {case} {image or ''} {pass_}: {seconds * 1e3:.1f} ms", file=sys.stderr, flush=True)

  # The encoding alone, on points in the unit cube.
  x = jax.random.uniform(jax.random.PRNGKey(1), (num_points, 3))
  table = params["encoding"]
  c, s = time_compiled(lambda t, x: hashgrid.encode(t, x, grid), (table, x), repeats)
  add("encode", None, None, None, num_points, "forward", c, s)
  enc_grad = jax.grad(lambda t, x: jnp.sum(hashgrid.encode(t, x, grid)))
  c, s = time_compiled(enc_grad, (table, x), repeats)
  add("encode", None, None, None, num_points, "forward+backward", c, s)

  def render_fns(res, spp, normal_method):
    cam = cameras.from_spherical(30.0, 15.0, 2.0, 40.0, res, res)
    origins, dirs = cameras.rays(cam)
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    rcfg = volume.RenderConfig(num_samples=spp, bound=cfg.bound, stratified=True, min_near=0.0)
    fcfg = cfg if normal_method is None else dataclasses.replace(cfg, normal_method=normal_method)
    light = jnp.array([0.6, 0.3, 0.74])

    def forward(p, k):
      def field(points, _):
        q = nerf.query(p, points, fcfg, with_normals=normal_method is not None)
        if normal_method is not None:
          q["albedo"] = shading.shade(q["albedo"], q["normal"], light, 1)
        return q
      return volume.render_rays(field, origins, dirs, k, rcfg,
                                background={"albedo": jnp.ones(3)})["albedo"]

    return forward, jax.grad(lambda p, k: jnp.mean(forward(p, k)))

  cases = [("nerf", r, s, None) for r in sizes for s in samples]
  short = {"finite_difference": "fd", "analytic": "analytic"}
  cases += [(f"nerf+normals({short[m]})", r, s, m) for m, r, s in normal_cases]
  for name, res, spp, method in cases:
    fwd, fwd_bwd = render_fns(res, spp, method)
    rays = res * res
    for pass_, fn in (("forward", fwd), ("forward+backward", fwd_bwd)):
      c, s = time_compiled(fn, (params, jax.random.PRNGKey(2)), repeats)
      add(name, f"{res}x{res}", spp, rays, rays * spp, pass_, c, s)
  return rows, settings
