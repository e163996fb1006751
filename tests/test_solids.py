"""Tests for jax3d.solids: prompts, SDFs and the sphere tracer against closed forms, and the
benchmark metrics against the exact solids (meshes, fields, rotations, images)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import mcubes
import numpy as np
import pytest
import trimesh

from jax3d import cameras
from jax3d.errors import UserError
from jax3d.solids import metrics
from jax3d.solids import render
from jax3d.solids import scenes

# Small but honest: 48^3 lattices, 48x48 held-out views, few rotations and scales.
CFG = metrics.MetricsConfig(resolution=48, image_size=48, rotation_step_deg=10.0,
                            refine_rounds=5, scales=(0.8, 0.9, 1.0, 1.1, 1.2),
                            classify_resolution=24)
_sdf = jax.jit(scenes.sdf, static_argnums=0)
SOLID_COLOUR = {"sphere": "red", "cube": "orange", "cylinder": "green", "cone": "blue",
                "torus": "purple"}


def inside_reference(solid: str, p: np.ndarray) -> np.ndarray:
  """Inside tests written from the spec, independent of scenes.sdf."""
  x, y, z = p[..., 0], p[..., 1], p[..., 2]
  rho = np.hypot(x, y)
  if solid == "sphere":
    return np.linalg.norm(p, axis=-1) < 0.5
  if solid == "cube":
    return np.abs(p).max(-1) < 0.4
  if solid == "cylinder":
    return (rho < 0.4) & (np.abs(z) < 0.45)
  if solid == "cone":
    return (np.abs(z) < 0.45) & (rho < 0.5 * (0.45 - z) / 0.9)
  if solid == "torus":
    return (rho - 0.35)**2 + z**2 < 0.15**2
  raise ValueError(solid)


def sdf_mesh(solid: str, colour: str | None = None, resolution: int = 96,
             bound: float = 0.75) -> trimesh.Trimesh:
  """Marching-cubes mesh of a solid's SDF with the colour's albedo as vertex colours."""
  axis = np.linspace(-bound, bound, resolution)
  grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
  d = np.asarray(_sdf(solid, jnp.asarray(grid, jnp.float32)))
  verts, faces = mcubes.marching_cubes(-d, 0.0)
  verts = -bound + verts * (axis[1] - axis[0])
  rgb = scenes.albedo(colour) if colour else np.full(3, 0.6)
  rgba = np.concatenate([np.rint(rgb * 255), [255]]).astype(np.uint8)
  return trimesh.Trimesh(verts, faces, vertex_colors=np.tile(rgba, (len(verts), 1)),
                         process=False)


def rotated(mesh: trimesh.Trimesh, deg: float) -> trimesh.Trimesh:
  out = mesh.copy()
  out.apply_transform(trimesh.transformations.rotation_matrix(np.deg2rad(deg), [0, 0, 1]))
  return out


# ----------------------------------------------------------------------------------------------
# scenes


@pytest.mark.parametrize("prompt, expected", [
    ("a red cube", scenes.Scene("cube", "red", None)),
    ("an orange cone", scenes.Scene("cone", "orange", None)),
    ("a torus", scenes.Scene("torus", None, None)),
    ("a red cube, side view", scenes.Scene("cube", "red", "side")),
    ("a red cube, azimuth 30 view", scenes.Scene("cube", "red", "azimuth 30")),
    ("a cone,  azimuth   330 view", scenes.Scene("cone", None, "azimuth 330")),
    ("A Blue Sphere", scenes.Scene("sphere", "blue", None)),
])
def test_parse_prompt_accepts(prompt, expected):
  assert scenes.parse_prompt(prompt) == expected


@pytest.mark.parametrize("prompt", [
    "", "   ", "a pink cube", "a red pyramid", "red cube", "a cube cube", "a red cube, top view",
    "a red cube, azimuth 45 view", "a red cube, azimuth 360 view", "a red cube, front 30 view",
    "a red cube and a sphere", "the red cube", "a big red cube",
])
def test_parse_prompt_rejects(prompt):
  with pytest.raises(UserError):
    scenes.parse_prompt(prompt)


def test_prompt_lists_round_trip():
  prompts = scenes.colour_prompts()
  assert len(set(prompts)) == len(scenes.SOLIDS) * len(scenes.COLOURS) == 30
  parsed = {(s.solid, s.colour) for s in map(scenes.parse_prompt, prompts)}
  assert parsed == {(s, c) for s in scenes.SOLIDS for c in scenes.COLOURS}
  assert [scenes.parse_prompt(p) for p in scenes.colourless_prompts()] == [
      scenes.Scene(s) for s in scenes.SOLIDS]
  assert "an orange cone" in prompts


def test_palette_hues_match_spec():
  hue, sat, _ = metrics.rgb_to_hsv(scenes.palette())
  np.testing.assert_allclose(hue, [scenes.HUES_DEG[c] for c in scenes.COLOURS], atol=0.5)
  assert (sat > 0.5).all()


@pytest.mark.parametrize("solid", scenes.SOLIDS)
def test_sdf_is_negative_exactly_inside(solid):
  key = jax.random.PRNGKey(scenes.SOLIDS.index(solid))
  p = jax.random.uniform(key, (400_000, 3), minval=-0.75, maxval=0.75)
  d = np.asarray(scenes.sdf(solid, p))
  p = np.asarray(p)
  ref = inside_reference(solid, p)
  clear = np.abs(d) > 1e-5  # Points on the surface may go either way in float32.
  np.testing.assert_array_equal((d < 0)[clear], ref[clear])
  estimate = (d < 0).mean() * 1.5**3
  sigma = 1.5**3 * math.sqrt(estimate / 1.5**3 / p.shape[0])
  assert abs(estimate - scenes.volume(solid)) < 4 * sigma + 1e-3, (estimate,
                                                                   scenes.volume(solid))
  # The traced-index path gives the same distances.
  np.testing.assert_allclose(np.asarray(scenes.sdf(scenes.SOLIDS.index(solid), p[:100])),
                             d[:100], atol=1e-6)


@pytest.mark.parametrize("solid", scenes.SOLIDS)
def test_sdf_has_unit_gradient_and_is_1_lipschitz(solid):
  key_a, key_b = jax.random.split(jax.random.PRNGKey(7))
  p = jax.random.uniform(key_a, (200_000, 3), minval=-0.75, maxval=0.75)
  d = scenes.sdf(solid, p)
  near = np.asarray(p)[np.abs(np.asarray(d)) < 0.05][:4000]
  eps = 1e-3
  offsets = eps * np.eye(3, dtype=np.float32)
  grad = np.stack([(np.asarray(scenes.sdf(solid, near + o)) -
                    np.asarray(scenes.sdf(solid, near - o))) / (2 * eps) for o in offsets], -1)
  norm = np.linalg.norm(grad, axis=-1)
  assert norm.max() < 1.0 + 2e-3
  # |grad| = 1 except where the stencil straddles an edge (the medial axis inside).
  assert np.mean(np.abs(norm - 1.0) < 1e-2) > 0.95, np.mean(np.abs(norm - 1.0) < 1e-2)
  q = p + 0.05 * jax.random.normal(key_b, p.shape)
  lip = np.abs(np.asarray(scenes.sdf(solid, q) - d)) / np.linalg.norm(np.asarray(q - p), axis=-1)
  assert lip.max() < 1.0 + 1e-3


def test_sdf_is_the_distance_outside_sphere_and_cube():
  p = np.asarray(jax.random.uniform(jax.random.PRNGKey(3), (1000, 3), minval=-1, maxval=1))
  np.testing.assert_allclose(scenes.sdf("sphere", p), np.linalg.norm(p, axis=-1) - 0.5,
                             atol=1e-6)
  # Distance to the box = distance to its clamped point, outside.
  out = np.abs(p).max(-1) > 0.4
  closest = np.clip(p, -0.4, 0.4)
  np.testing.assert_allclose(np.asarray(scenes.sdf("cube", p))[out],
                             np.linalg.norm(p - closest, axis=-1)[out], atol=1e-6)


# ----------------------------------------------------------------------------------------------
# render


@pytest.mark.parametrize("distance, elevation", [(2.0, 20.0), (1.5, -10.0)])
def test_sphere_renders_disc_of_tangent_cone_radius(distance, elevation):
  size = 64
  cam = cameras.from_spherical(30.0, elevation, distance, 40.0, size, size)
  out = render.render(0, scenes.albedo("red"), cam, supersample=4)
  area = float(np.asarray(out["mask"]).sum())
  focal = 0.5 * size / math.tan(math.radians(20.0))
  expected = focal * math.tan(math.asin(0.5 / distance))
  assert abs(math.sqrt(area / math.pi) - expected) < 0.005 * expected
  # The naive r / D would be off by more than the tolerance.
  assert abs(focal * 0.5 / distance - expected) > 0.02 * expected
  image = np.asarray(out["image"])
  assert image.min() >= 0 and image.max() <= 1
  np.testing.assert_allclose(image[0, 0], 1.0)  # white background


def test_depth_matches_ray_sphere_intersection():
  size, distance = 33, 2.0  # odd size: the centre pixel looks straight at the origin
  cam = cameras.from_spherical(-70.0, 35.0, distance, 40.0, size, size)
  cam = cameras.Camera(c2w=cam.c2w, fov_y=cam.fov_y, height=size, width=size)
  out = render.render(0, scenes.albedo("blue"), cam)
  depth, mask = np.asarray(out["depth"]), np.asarray(out["mask"])
  assert abs(depth[size // 2, size // 2] - (distance - 0.5)) < 2e-3
  origins, dirs = (np.asarray(a, np.float64) for a in cameras.rays(cam))
  b = (origins * dirs).sum(-1)
  disc = b * b - ((origins * origins).sum(-1) - 0.25)
  hit = disc > 1e-3  # away from grazing rays
  t = -b - np.sqrt(np.maximum(disc, 0))
  assert (mask[hit] == 1).all() and (mask[disc < -1e-3] == 0).all()
  np.testing.assert_allclose(depth[hit], t[hit], atol=2e-3)


def test_depth_of_cube_face_at_centre():
  size = 33
  cam = cameras.from_spherical(0.0, 0.0, 2.0, 40.0, size, size)
  cam = cameras.Camera(c2w=cam.c2w, fov_y=cam.fov_y, height=size, width=size)
  depth = np.asarray(render.render(1, scenes.albedo("green"), cam)["depth"])
  assert abs(depth[size // 2, size // 2] - 1.6) < 2e-3


@pytest.fixture(scope="module")
def heldout_masks():
  """Sphere-traced masks of every solid from the held-out views (5, 9, H, W)."""
  rig = metrics.heldout_cameras(CFG.image_size)
  n = rig.c2w.shape[0]
  out = {}
  for i, solid in enumerate(scenes.SOLIDS):
    r = render.render_batch(jnp.full((n,), i), jnp.ones((n, 3)), rig)
    out[solid] = np.asarray(r["mask"]) > 0.5
  return out


@pytest.mark.parametrize("solid", scenes.SOLIDS)
def test_silhouettes_agree_with_sphere_tracer(solid, heldout_masks):
  rig = metrics.heldout_cameras(CFG.image_size)
  reference = metrics.reference_silhouettes(solid, 0.0, CFG.image_size)
  assert metrics.mask_iou(reference, heldout_masks[solid]).min() > 0.995
  # Casting through a lattice rounds the edges by about a lattice step.
  cast = metrics.reference_silhouettes(solid, 0.0, CFG.image_size, (128, 1.0, 512))
  np.testing.assert_array_equal(
      cast, metrics.silhouettes(metrics.shape_from_sdf(solid, resolution=128), rig, 512))
  iou = metrics.mask_iou(cast, heldout_masks[solid])
  assert iou.min() > 0.97, iou


def test_rasterized_box_matches_traced_cube():
  """An exact 12-triangle cube, turned by 25°, against the traced cube turned alike."""
  box = rotated(trimesh.creation.box(extents=[0.8] * 3), 25.0)
  shape = metrics.shape_from_mesh(box, resolution=16)
  rig = metrics.heldout_cameras(CFG.image_size)
  raster = metrics.silhouettes(shape, rig)
  assert metrics.mask_iou(raster, metrics.reference_silhouettes("cube", 25.0,
                                                                CFG.image_size)).min() > 0.99
  assert metrics.mask_iou(raster, metrics.reference_silhouettes("cube", 0.0,
                                                                CFG.image_size)).min() < 0.97


# ----------------------------------------------------------------------------------------------
# metrics: shapes


@pytest.fixture(scope="module")
def meshes():
  return {s: sdf_mesh(s, SOLID_COLOUR[s]) for s in scenes.SOLIDS}


@pytest.fixture(scope="module")
def mesh_shapes(meshes):
  return {s: metrics.shape_from_mesh(m, resolution=CFG.resolution) for s, m in meshes.items()}


@pytest.mark.parametrize("solid", scenes.SOLIDS)
def test_mesh_voxelization_matches_exact_occupancy(solid, mesh_shapes):
  exact = metrics.shape_from_sdf(solid, resolution=CFG.resolution)
  pred = mesh_shapes[solid]
  # Disagreement only where the marching-cubes surface departs from the exact one.
  wrong = pred.occupancy != exact.occupancy
  assert np.all(np.abs(exact.values[wrong]) < 0.1), exact.values[wrong]
  if solid == "sphere":
    # Values are linear in the distance near a smooth surface: the zero level of their
    # interpolation along lattice edges sits on the mesh.
    radius = np.linalg.norm(metrics._crossings(pred.values, pred.bound), axis=-1)
    assert np.abs(radius - 0.5).max() < 0.05 * pred.spacing


def test_voxelization_of_large_triangles_and_lattice_vertices():
  """A 12-triangle box whose corners lie on lattice points, and a rotated one."""
  r, bound = 41, 1.0
  axis = metrics.lattice(bound, r)
  half = axis[30]  # corners exactly on lattice lines
  box = trimesh.creation.box(extents=[2 * half] * 3)
  grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
  got = metrics.shape_from_mesh(box, resolution=r, bound=bound)
  clear = np.abs(np.abs(grid).max(-1) - half) > 1e-9
  np.testing.assert_array_equal(got.occupancy[clear], (np.abs(grid).max(-1) < half)[clear])
  turned = rotated(box, 25.0)
  got = metrics.shape_from_mesh(turned, resolution=r, bound=bound)
  local = grid @ trimesh.transformations.rotation_matrix(np.deg2rad(25.0), [0, 0, 1])[:3, :3]
  dist = np.abs(local).max(-1) - half
  clear = np.abs(dist) > 1e-9
  np.testing.assert_array_equal(got.occupancy[clear], (dist < 0)[clear])
  assert got.hue_deg is None  # trimesh's default grey has no hue


@pytest.fixture(scope="module")
def mesh_results(mesh_shapes):
  return {s: metrics.evaluate(shape, scenes.prompt_for(s, SOLID_COLOUR[s]), CFG)
          for s, shape in mesh_shapes.items()}


@pytest.mark.parametrize("solid", scenes.SOLIDS)
def test_every_solid_scores_itself(solid, mesh_results):
  r = mesh_results[solid]
  assert r["silhouette_iou"] > 0.97 and r["occupancy_iou"] > 0.97, r
  assert r["predicted_solid"] == solid and r["shape_correct"], r
  assert r["predicted_colour"] == SOLID_COLOUR[solid] and r["colour_correct"], r
  assert metrics.hue_distance(r["hue_deg"], scenes.HUES_DEG[SOLID_COLOUR[solid]]) < 2.0
  # The competing solids fit clearly worse.
  others = [v for k, v in r["shape_scores"].items() if k != solid]
  assert max(others) < 0.85


def test_exact_shape_scores_one():
  r = metrics.evaluate(metrics.shape_from_sdf("torus", colour="yellow", resolution=48),
                       "a yellow torus", CFG)
  # Ground truth and prediction are cast through the same lattice: identical silhouettes.
  assert r["occupancy_iou"] == 1.0 and r["silhouette_iou"] == 1.0
  assert r["colour_correct"] and r["predicted_colour"] == "yellow"


def test_colourless_prompt_has_no_colour_verdict(mesh_shapes):
  r = metrics.evaluate(mesh_shapes["cone"], "a cone", CFG)
  assert r["colour_correct"] is None and r["predicted_colour"] == "blue"


def test_sphere_against_cube(mesh_shapes):
  r = metrics.evaluate(mesh_shapes["sphere"], "a red cube", CFG)
  assert r["silhouette_iou"] < 0.9 and r["occupancy_iou"] < 0.9, r
  assert r["predicted_solid"] == "sphere" and not r["shape_correct"]
  # Independent estimate of the occupancy IoU of a ball r=0.5 and a box of half-edge 0.4 on a
  # fine grid (the cube's best rotation is axis-aligned for this pair).
  axis = np.linspace(-0.6, 0.6, 121)
  g = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
  ball, box = np.linalg.norm(g, axis=-1) < 0.5, np.abs(g).max(-1) < 0.4
  assert abs(r["occupancy_iou"] - (ball & box).sum() / (ball | box).sum()) < 0.02


def test_circumscribed_cylinder_iou_closed_forms():
  """A cube fills (0.8³)/(π·(0.4√2)²·0.8) = 2/π of its circumscribed cylinder at any turn; the
  cylinder itself scores 1; only cube prompts report it."""
  for turn in (0.0, 30.0):  # At eval's lattice (R = 96) no cube face lies on a lattice plane.
    cube = metrics.shape_from_sdf("cube", rotation_deg=turn, resolution=96)
    assert abs(metrics.circumscribed_cylinder_iou(cube) - 2.0 / np.pi) < 0.01
  x = metrics.lattice(1.0, 64)
  r = np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + 0 * x[None, None, :])
  values = np.minimum(0.4 * np.sqrt(2.0) - r, 0.4 - np.abs(x[None, None, :]))
  cylinder = metrics.Shape(values=values.astype(np.float32), bound=1.0,
                           colours=np.zeros((0, 3), np.float32),
                           weights=np.zeros((0,), np.float32))
  assert metrics.circumscribed_cylinder_iou(cylinder) == 1.0
  cube = metrics.shape_from_sdf("cube", colour="red", resolution=48)
  assert metrics.evaluate(cube, "a red cube", CFG)["cylinder_iou"] < 0.7
  assert metrics.evaluate(cube, "a red sphere", CFG)["cylinder_iou"] is None


def test_scaled_solid_is_still_classified():
  shape = metrics.shape_from_sdf("cylinder", scale=0.85, rotation_deg=20.0,
                                 resolution=CFG.resolution)
  predicted, scores = metrics.classify_shape(shape, CFG)
  assert predicted == "cylinder" and scores["cylinder"] > 0.97
  iou, _ = metrics.occupancy_iou(shape, "cylinder", CFG)
  # Unscaled IoU of nested solids = volume ratio 0.85^3.
  assert abs(iou - 0.85**3) < 0.03


@pytest.mark.parametrize("solid", ["cube", "cone"])
def test_metrics_are_invariant_to_rotating_the_mesh(solid, meshes, mesh_results):
  shape = metrics.shape_from_mesh(rotated(meshes[solid], 37.0), resolution=CFG.resolution)
  r = metrics.evaluate(shape, scenes.prompt_for(solid, SOLID_COLOUR[solid]), CFG)
  base = mesh_results[solid]
  assert abs(r["silhouette_iou"] - base["silhouette_iou"]) < 0.01, (r, base)
  assert abs(r["occupancy_iou"] - base["occupancy_iou"]) < 0.01, (r, base)
  for k in ("predicted_solid", "predicted_colour", "colour_correct"):
    assert r[k] == base[k]
  if solid == "cube":  # the fit recovers the rotation (mod the cube's 90° symmetry)
    assert metrics.hue_distance(4 * r["rotation_deg"], 4 * 37.0) / 4 < 1.0, r["rotation_deg"]


def test_shape_from_field_and_exported_file(tmp_path):
  density = lambda p: 50.0 * jax.nn.sigmoid(-scenes.sdf("cone", p) / 0.01)
  colour = lambda p: jnp.broadcast_to(jnp.asarray(scenes.albedo("green")), p.shape)
  shape = metrics.shape_from_field(density, colour, level=25.0, bound=1.0,
                                   resolution=CFG.resolution)
  exact = metrics.shape_from_sdf("cone", resolution=CFG.resolution)
  r = metrics.evaluate(shape, "a green cone", CFG)
  assert r["occupancy_iou"] > 0.99 and r["silhouette_iou"] > 0.99, r
  assert r["shape_correct"] and r["colour_correct"], r
  assert metrics.nearest_colour(shape.hue_deg) == "green"
  assert shape.colours.shape[0] > 100
  np.testing.assert_array_equal(shape.occupancy, exact.occupancy)
  # The same field through the exporter's file, read back from disk.
  from jax3d.export import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.extract_mesh(density, colour, bound=1.0, resolution=64, level=25.0)
  path = mesh_lib.write_mesh(mesh, tmp_path / "cone.glb")["glb"]
  from_file = metrics.shape_from_mesh(path, resolution=CFG.resolution)
  r = metrics.evaluate(from_file, "a green cone", CFG)
  assert r["occupancy_iou"] > 0.97 and r["shape_correct"] and r["colour_correct"], r


def test_missing_mesh_file_is_a_user_error(tmp_path):
  with pytest.raises(UserError):
    metrics.shape_from_mesh(tmp_path / "nope.glb")


def test_diversity(mesh_shapes, meshes):
  cube = mesh_shapes["cube"]
  turned = metrics.shape_from_mesh(rotated(meshes["cube"], 37.0), resolution=CFG.resolution)
  same = metrics.diversity([cube, turned], CFG)
  assert same["mean_pairwise_occupancy_iou"] > 0.97
  assert same["mean_pairwise_silhouette_iou"] > 0.97
  assert same["hue_spread"] < 1e-6
  apart = metrics.diversity([mesh_shapes["sphere"], mesh_shapes["torus"]], CFG)
  assert apart["mean_pairwise_silhouette_iou"] < 0.7
  # Two opposite hues spread fully, identical ones not at all.
  assert metrics.hue_spread([30.0, 210.0]) == pytest.approx(1.0)
  assert metrics.hue_spread([scenes.HUES_DEG[c] for c in scenes.COLOURS]) > 0.5
  assert metrics.diversity([cube], CFG)["mean_pairwise_silhouette_iou"] is None


# ----------------------------------------------------------------------------------------------
# metrics: colours and images


def test_hsv_and_hue_distance():
  rng = np.random.default_rng(0)
  rgb = rng.uniform(size=(200, 3))
  import colorsys  # pylint: disable=g-import-not-at-top
  want = np.array([colorsys.rgb_to_hsv(*c) for c in rgb])
  hue, sat, val = metrics.rgb_to_hsv(rgb)
  np.testing.assert_allclose(metrics.hue_distance(hue, want[:, 0] * 360), 0, atol=1e-6)
  np.testing.assert_allclose(sat, want[:, 1], atol=1e-9)
  np.testing.assert_allclose(val, want[:, 2], atol=1e-9)
  assert metrics.hue_distance(350.0, 10.0) == 20.0
  assert metrics.nearest_colour(345.0) == "red" and metrics.nearest_colour(300.0) == "purple"
  for c in scenes.COLOURS:
    assert metrics.nearest_colour(scenes.HUES_DEG[c]) == c


def test_image_colour_ignores_shading_and_background():
  rgb = scenes.albedo("yellow")
  shade = np.linspace(0.35, 1.0, 16)[:, None, None] * np.ones((16, 16, 1))
  alpha = np.linspace(0.2, 1.0, 16)[None, :, None]
  image = np.pad(alpha * shade * rgb + (1 - alpha), ((2, 2), (2, 2), (0, 0)),
                 constant_values=1.0)  # framed by the white background
  name, hue = metrics.image_colour(image)
  assert name == "yellow" and metrics.hue_distance(hue, 55.0) < 1.0
  white = np.ones((8, 8, 3))
  assert not metrics.image_foreground(white).any()
  assert metrics.image_colour(white) == (None, None)
  assert metrics.image_shape(white) == (None, 0.0)


def test_foreground_is_measured_from_the_images_own_background():
  """A faint tint of the whole background (as generated samples have) is not foreground."""
  image = np.ones((16, 16, 3))
  image[5:11, 4:12] = scenes.albedo("blue")
  tinted = image * np.asarray([1.0, 0.88, 0.93])  # a pale pink cast over everything
  np.testing.assert_allclose(metrics.image_background(tinted), [1.0, 0.88, 0.93])
  want = np.zeros((16, 16), bool)
  want[5:11, 4:12] = True
  np.testing.assert_array_equal(metrics.image_foreground(image), want)
  np.testing.assert_array_equal(metrics.image_foreground(tinted), want)
  assert metrics.image_colour(tinted)[0] == "blue"


def test_images_of_every_solid_and_colour_are_classified():
  size = 32
  n = len(scenes.SOLIDS) * len(scenes.COLOURS)
  cam = cameras.sample(jax.random.PRNGKey(0), n, cameras.CameraConfig(height=size, width=size))
  solids = np.repeat(np.arange(len(scenes.SOLIDS)), len(scenes.COLOURS))
  colours = np.tile(np.arange(len(scenes.COLOURS)), len(scenes.SOLIDS))
  images = np.asarray(render.render_batch(solids, scenes.palette()[colours], cam,
                                          supersample=2)["image"])
  wrong = []
  for img, s, c in zip(images, solids, colours):
    solid, iou = metrics.image_shape(img)
    colour, _ = metrics.image_colour(img)
    if (solid, colour) != (scenes.SOLIDS[s], scenes.COLOURS[c]) or iou < 0.8:
      wrong.append((scenes.SOLIDS[s], scenes.COLOURS[c], solid, colour, iou))
  assert not wrong, wrong
