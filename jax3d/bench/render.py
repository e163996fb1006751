"""`jax3d bench render`: hash-grid NeRF render and hash-encoding throughput.

The field is the `--grid` preset's (`configs/dreamfusion.py`: toy or sd). Rows: the encoding
alone on random points; renders of one camera at 64² and 128² with 64 and 128 samples per ray,
forward and forward+backward (the gradient of the mean rendered albedo with respect to every
field param, stratified samples); the same with per-sample normals and Lambertian shading
(finite-difference and analytic) at 64² × 64. Times exclude compilation (ahead-of-time
`lower().compile()`, reported as compile_s); each repetition ends with `block_until_ready`,
and the median is reported.

`--raster` (`run_raster`) times the mesh rasterizer (`jax3d.render.raster.render_mesh`: tiled
z-buffer, interpolation of vertex colours and normals, analytic antialiasing) instead, on a
geodesic sphere of about 1k, 10k and 100k faces at 64², 128² and 512², forward and
forward+backward (the gradient of the mean antialiased colour with respect to the vertices).
Each row's tile capacity K is the mesh's largest tile count (`raster.tile_counts`) rounded up
to a power of two, so no row overflows; on CPU the combinations that would take minutes are
skipped, and the output says which.
"""

from __future__ import annotations

import dataclasses
import math
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
  if getattr(args, "raster", False):
    return run_raster(args)
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


# Raster rows: (image size, target face count). On CPU, combinations whose per-pixel work
# H·W·K or face count would take minutes per row are skipped (`_cpu_feasible`); the default
# ones all fit (the whole table takes about 2 minutes on 2 cores).
RASTER_SIZES = (64, 128, 512)
RASTER_FACES = (1_000, 10_000, 100_000)
RASTER_QUICK = ((16, 1_000),)
RASTER_TILE = 8
_CPU_MAX_PIXEL_TESTS = 2**27  # H·W·K per render (512²·256 takes ~1.2 s on 2 cores)
_CPU_MAX_FACES = 200_000


def sphere_mesh(num_faces: int):
  """A unit geodesic sphere (numpy (V, 3) float32, (F, 3) int32, counter-clockwise seen from
  outside) with 20·n² ≈ num_faces faces: each icosahedron face split into n² triangles."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  n = max(1, round(math.sqrt(num_faces / 20)))
  t = (1 + math.sqrt(5)) / 2
  ico = np.array([(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t),
                  (0, -1, -t), (0, 1, -t), (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)])
  ico_faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9),
               (5, 11, 4), (11, 10, 2), (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2),
               (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7),
               (9, 8, 1)]
  ij = [(i, j) for i in range(n + 1) for j in range(n + 1 - i)]
  index = {p: k for k, p in enumerate(ij)}
  local = []
  for i in range(n):
    for j in range(n - i):
      local.append((index[i, j], index[i + 1, j], index[i, j + 1]))
      if i + j < n - 1:
        local.append((index[i + 1, j], index[i + 1, j + 1], index[i, j + 1]))
  local = np.array(local)
  weights = np.array(ij, np.float64) / n  # (P, 2): along B − A and C − A
  points, faces = [], []
  for a, b, c in ico_faces:
    pa, pb, pc = ico[a], ico[b], ico[c]
    faces.append(local + len(ij) * len(points))
    points.append(pa + weights[:, :1] * (pb - pa) + weights[:, 1:] * (pc - pa))
  points = np.concatenate(points)
  points /= np.linalg.norm(points, axis=-1, keepdims=True)
  # Shared edges were generated once per face: merge the copies.
  _, first, inverse = np.unique(np.round(points, 6), axis=0, return_index=True,
                                return_inverse=True)
  faces = inverse.reshape(-1)[np.concatenate(faces)]
  return points[first].astype(np.float32), faces.astype(np.int32)


def _cpu_feasible(res: int, faces: int, capacity: int) -> bool:
  return res * res * capacity <= _CPU_MAX_PIXEL_TESTS and faces <= _CPU_MAX_FACES


def run_raster(args) -> tuple[list[Row], dict[str, Any]]:
  """`jax3d bench render --raster`: mesh rasterizer throughput (module docstring)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax3d import cameras  # pylint: disable=g-import-not-at-top
  from jax3d.render import raster  # pylint: disable=g-import-not-at-top

  repeats = repeats_of(args)
  cases = RASTER_QUICK if args.quick else [(r, f) for f in RASTER_FACES for r in RASTER_SIZES]
  on_cpu = jax.devices()[0].platform == "cpu"
  rows: list[Row] = []
  skipped: list[str] = []
  meshes = {}
  for res, target in cases:
    if target not in meshes:
      v, f = sphere_mesh(target)
      meshes[target] = (jnp.asarray(v), jnp.asarray(f), jnp.asarray(0.5 + 0.5 * v))
    vertices, faces, colours = meshes[target]
    num_faces = int(faces.shape[0])
    cam = cameras.from_spherical(30.0, 15.0, 3.0, 40.0, res, res)
    counts = raster.tile_counts(raster.project(vertices, cam), faces, res, res,
                                tile_size=RASTER_TILE)
    capacity = max(8, 1 << (int(counts.max()) - 1).bit_length())
    label = f"{res}x{res}"
    if on_cpu and not _cpu_feasible(res, num_faces, capacity):
      skipped.append(f"{label}/{num_faces:,} faces (K={capacity})")
      continue
    neighbors = raster.edge_neighbors(faces)

    def forward(v, cam=cam, capacity=capacity, faces=faces, colours=colours,
                neighbors=neighbors):
      return raster.render_mesh(v, faces, colours, cam, jnp.ones(3), capacity=capacity,
                                tile_size=RASTER_TILE, neighbors=neighbors)

    fwd = lambda v, forward=forward: forward(v)["rgb"]
    fwd_bwd = jax.grad(lambda v, forward=forward: jnp.mean(forward(v)["rgb"]))
    overflow = int(forward(vertices)["overflow"])
    for pass_, fn in (("forward", fwd), ("forward+backward", fwd_bwd)):
      c, s = time_compiled(fn, (vertices,), repeats)
      rows.append({"case": "raster", "pass": pass_, "image": label, "faces": num_faces,
                   "tile": RASTER_TILE, "capacity": capacity, "overflow": overflow,
                   "compile_s": c, "time_ms": s * 1e3, "pixels_per_s": res * res / s,
                   "faces_per_s": num_faces / s})
      print(f"  raster {label} {num_faces} faces K={capacity} {pass_}: {s * 1e3:.1f} ms",
            file=sys.stderr, flush=True)
  if skipped:
    print(f"bench render --raster: skipped on CPU (minutes each; run on a GPU): "
          f"{', '.join(skipped)}", flush=True)
  settings = {"raster": True, "tile": RASTER_TILE, "skipped": skipped,
              "grid_label": (f"mesh rasterizer: geodesic sphere at distance 3, fov 40°, vertex "
                             f"colours, T={RASTER_TILE} tiles, K = largest tile count "
                             f"(rounded up to 2^k), analytic AA, no culling; median of "
                             f"{repeats} runs, compile excluded")}
  return rows, settings
