"""Tests for jax3d.export: marching-cubes meshes against an analytic sphere, and video files."""

from __future__ import annotations

import math
import os

import imageio.v2 as imageio
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh

from jax3d import cameras
from jax3d.errors import UserError
from jax3d.export import mesh as mesh_lib
from jax3d.export import video
from jax3d.render import volume

BOUND = 1.0
RES = 32
CELL = 2 * BOUND / (RES - 1)
R0 = 0.5
WIDTH = 0.02
STEP = 2 * math.sqrt(3) * BOUND / 64  # A renderer with 64 samples across the box diagonal.
# Reading the mp4 back starts ffmpeg as a subprocess, which JAX's fork warning misreads.
pytestmark = pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called")

COLOR = np.array([0.2, 0.6, 0.9], np.float32)


def sphere_density(scale=100.0, r0=R0, center=(0.0, 0.0, 0.0)):
  c = jnp.asarray(center)
  return lambda p: scale * jax.nn.sigmoid((r0 - jnp.linalg.norm(p - c, axis=-1)) / WIDTH)


def sphere_radius_at(level, scale=100.0):
  """Closed form: where scale * sigmoid((r0 - r) / w) = level."""
  s = level / scale
  return R0 - WIDTH * math.log(s / (1 - s))


def constant_color(p):
  return jnp.broadcast_to(jnp.asarray(COLOR), p.shape)


def radii(m):
  return np.linalg.norm(m.vertices, axis=-1)


@pytest.fixture(scope="module")
def sphere():
  return mesh_lib.extract_mesh(sphere_density(), constant_color, BOUND, resolution=RES,
                               step_size=STEP)


def test_sample_density_matches_numpy_on_ragged_chunks():
  fn = lambda p: p[:, 0] + 2 * p[:, 1] ** 2 - 3 * p[:, 2] * p[:, 0] + 0.5 * p[:, 2]
  got = mesh_lib.sample_density(fn, 0.7, 7, chunk=50)  # 343 points, last chunk partial.
  axis = np.linspace(-0.7, 0.7, 7)
  x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
  np.testing.assert_allclose(got, x + 2 * y ** 2 - 3 * z * x + 0.5 * z, atol=1e-5)
  # Params bound through a Partial are jit arguments: new values, same compiled function.
  query = lambda coeffs, p: p @ coeffs
  for coeffs in ([1.0, 0.0, 0.0], [0.0, -2.0, 3.0]):
    got = mesh_lib.sample_density(jax.tree_util.Partial(query, jnp.array(coeffs)), 0.7, 7, 50)
    np.testing.assert_allclose(got, coeffs[0] * x + coeffs[1] * y + coeffs[2] * z, atol=1e-5)


def test_sphere_default_level_is_half_opacity_per_step(sphere):
  expected = math.log(2) / STEP
  assert sphere.level == pytest.approx(expected, rel=1e-6)
  assert 1 - math.exp(-sphere.level * STEP) == pytest.approx(0.5)
  assert sphere.level_rule.startswith("alpha=0.5")
  r = radii(sphere)
  assert np.all(np.abs(r - sphere_radius_at(expected)) < CELL)
  assert np.all(np.abs(r - R0) < CELL)
  assert sphere.vertices.dtype == np.float32 and sphere.faces.dtype == np.int32
  assert sphere.colors.shape == sphere.vertices.shape


def test_level_matching_renders_finds_the_level_of_a_cone_profile_ball():
  """σ = a·(R − r)+ : a ray at distance b from the centre has maximum density a·(R − b) and
  optical depth τ(b) = 2a∫₀^√(R²−b²) (R − √(b² + s²)) ds, so the renders' opacity > ½
  silhouette is b < b* with τ(b*) = ln 2, and the matching level is a·(R − b*) (b* solved
  here by quadrature and bisection)."""
  a, r0 = 20.0, 0.5
  density = jax.tree_util.Partial(lambda p: a * jnp.maximum(r0 - jnp.linalg.norm(p, axis=-1), 0))
  cfg = volume.RenderConfig(num_samples=256, bound=BOUND, stratified=False, min_near=0.0)

  def render_opacity(cam):
    field = lambda x, d: {"density": density(x.reshape(-1, 3)).reshape(x.shape[:-1])}
    return volume.render_image(field, cam, None, cfg)["opacity"]

  def tau(b):
    s = np.linspace(0.0, math.sqrt(r0**2 - b**2), 4001)
    return 2 * a * np.trapezoid(r0 - np.sqrt(b**2 + s**2), s)
  lo, hi = 0.0, r0
  for _ in range(60):
    lo, hi = ((lo + hi) / 2, hi) if tau((lo + hi) / 2) > math.log(2) else (lo, (lo + hi) / 2)
  level, iou = mesh_lib.level_matching_renders(render_opacity, density, BOUND, size=32)
  pixel = 2 * 2.0 * math.tan(math.radians(20)) / 32  # a pixel's width at the centre's distance
  assert abs(level - a * (r0 - lo)) < a * pixel / 2, (level, a * (r0 - lo))
  assert iou > 0.95


def test_sphere_is_closed_and_outward(sphere):
  tm = trimesh.Trimesh(sphere.vertices, sphere.faces, process=False)
  assert tm.is_watertight and tm.is_winding_consistent
  r = sphere_radius_at(sphere.level)
  assert tm.volume > 0
  assert tm.volume == pytest.approx(4 / 3 * math.pi * r ** 3, rel=0.08)
  # Outward: each face normal points away from the centre.
  tri = sphere.vertices[sphere.faces]
  normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  assert np.mean(np.sum(normals * tri.mean(1), -1) > 0) > 0.99


def test_files_round_trip_positions_and_colors(sphere, tmp_path):
  paths = mesh_lib.write_mesh(sphere, tmp_path)
  assert paths == {"glb": str(tmp_path / "mesh.glb"), "obj": str(tmp_path / "mesh.obj")}
  for kind, path in paths.items():
    tm = mesh_lib.load_mesh(path)
    np.testing.assert_allclose(tm.vertices, sphere.vertices, atol=1e-6, err_msg=kind)
    np.testing.assert_array_equal(tm.faces, sphere.faces, err_msg=kind)
    rgb = tm.visual.vertex_colors[:, :3] / 255.0
    np.testing.assert_allclose(rgb, np.broadcast_to(COLOR, rgb.shape), atol=0.5 / 255 + 1e-6,
                               err_msg=kind)
  with open(paths["obj"]) as f:
    v_lines = [line.split() for line in f if line.startswith("v ")]
  assert len(v_lines) == sphere.num_vertices
  np.testing.assert_allclose(np.array(v_lines[0][4:], float), COLOR, atol=0.5 / 255 + 1e-6)


def test_y_up_option_rotates_coordinates(sphere, tmp_path):
  path = mesh_lib.write_mesh(sphere, tmp_path / "up.glb", y_up=True)["glb"]
  v = mesh_lib.load_mesh(path).vertices
  x, y, z = sphere.vertices.T
  np.testing.assert_allclose(v, np.stack([x, z, -y], -1), atol=1e-6)


def test_level_override(sphere):
  m = mesh_lib.extract_mesh(sphere_density(), constant_color, BOUND, resolution=RES, level=50.0)
  assert m.level == 50.0 and m.level_rule.startswith("user")
  assert np.all(np.abs(radii(m) - R0) < 0.25 * CELL)  # sigmoid = 1/2 exactly at r0.
  assert np.mean(radii(m)) < np.mean(radii(sphere))  # a higher level is a tighter surface


def test_faint_field_falls_back_to_midrange():
  # Max density 5 < ln2 / STEP ~ 12.8: the alpha rule finds no surface.
  m = mesh_lib.extract_mesh(sphere_density(scale=5.0), constant_color, BOUND, resolution=RES,
                            step_size=STEP)
  assert m.level_rule.startswith("fallback")
  assert m.level == pytest.approx(2.5, abs=1e-3)
  assert np.all(np.abs(radii(m) - R0) < 0.25 * CELL)


@pytest.mark.parametrize("density, found", [
    (lambda p: jnp.zeros(p.shape[:1]), "ranges over [0, 0]"),
    # Varies, but a ray through the whole box at the maximum stays ~0.3% opaque.
    (lambda p: 1e-3 * (1 + p[:, 0]), "ranges over [0, 0.002]")])
def test_empty_field_raises_and_writes_nothing(density, found, tmp_path):
  with pytest.raises(UserError) as e:
    mesh_lib.write_mesh(
        mesh_lib.extract_mesh(density, constant_color, BOUND, resolution=8), tmp_path)
  message = str(e.value)
  assert "\n" not in message and "empty" in message and found in message
  assert os.listdir(tmp_path) == []
  if "0.002" in found:  # a varying field names the override
    assert "level=<a density strictly between 0 and 0.002>" in message


def test_level_outside_range_raises():
  with pytest.raises(UserError, match="no surface at level 1000"):
    mesh_lib.extract_mesh(sphere_density(), constant_color, BOUND, resolution=8, level=1000.0)


def test_write_empty_mesh_raises(tmp_path):
  empty = mesh_lib.MeshData(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32),
                            np.zeros((0, 3), np.float32), 1.0, "user")
  with pytest.raises(UserError):
    mesh_lib.write_mesh(empty, tmp_path)
  assert os.listdir(tmp_path) == []


def test_surface_reaching_the_bound_is_capped_and_closed():
  # A sphere of radius 1.2 in the box [-1, 1]^3: the mesh is the box cut by the sphere.
  m = mesh_lib.extract_mesh(sphere_density(r0=1.2), constant_color, BOUND, resolution=16,
                            level=50.0)
  assert np.abs(m.vertices).max() <= BOUND
  tm = trimesh.Trimesh(m.vertices, m.faces, process=False)
  assert tm.is_watertight and tm.volume > 0
  assert np.isclose(np.abs(m.vertices).max(-1), BOUND).mean() > 0.3  # caps on the faces


def test_floaters_removed_only_when_asked():
  big, small = sphere_density(), sphere_density(r0=0.12, center=(0.7, 0.7, 0.7))
  density = lambda p: big(p) + small(p)
  color = lambda p: jnp.clip(0.5 * (p + 1), 0, 1)  # colour from position
  kept = mesh_lib.extract_mesh(density, color, BOUND, resolution=RES, level=50.0)
  assert len(trimesh.Trimesh(kept.vertices, kept.faces, process=False).split(
      only_watertight=False)) == 2
  cleaned = mesh_lib.extract_mesh(density, color, BOUND, resolution=RES, level=50.0,
                                  min_component_fraction=0.5)
  assert cleaned.removed_components == 1 and kept.removed_components == 0
  assert np.all(np.abs(radii(cleaned) - R0) < CELL)
  assert cleaned.num_faces < kept.num_faces
  assert cleaned.faces.max() == cleaned.num_vertices - 1
  np.testing.assert_allclose(cleaned.colors, 0.5 * (cleaned.vertices + 1), atol=1e-6)


# Video.

def azimuth_render(camera: cameras.Camera) -> jax.Array:
  """A flat image whose colour encodes the camera's azimuth and elevation."""
  az, el, _ = cameras.to_spherical(camera)
  az = jnp.deg2rad(az)
  rgb = jnp.stack([0.5 + 0.5 * jnp.cos(az), 0.5 + 0.5 * jnp.sin(az), el / 90.0])
  return jnp.broadcast_to(rgb, (camera.height, camera.width, 3))


def test_turntable_frames_in_order():
  n, el = 8, 15.0
  frames = video.turntable_frames(azimuth_render, n, elevation_deg=el, height=6, width=10)
  assert frames.shape == (n, 6, 10, 3) and frames.dtype == np.uint8
  az = np.deg2rad(np.arange(n) * 360.0 / n)
  want = np.stack([0.5 + 0.5 * np.cos(az), 0.5 + 0.5 * np.sin(az),
                   np.full(n, el / 90.0)], -1) * 255
  np.testing.assert_allclose(frames[:, 3, 5].astype(float), want, atol=1.0)


def test_video_files_round_trip(tmp_path):
  n, h, w = 6, 30, 43  # odd width: padded to 44 in the mp4
  frames = video.turntable_frames(azimuth_render, n, height=h, width=w)
  paths = video.write_video(frames, tmp_path / "out", stem="spin", fps=12.0)  # export.video_fps
  assert paths == {"mp4": str(tmp_path / "out" / "spin.mp4"),
                   "gif": str(tmp_path / "out" / "spin.gif")}
  reader = imageio.get_reader(paths["mp4"], format="FFMPEG")
  mp4 = np.stack([frame for frame in reader.iter_data()])  # len(reader) is inf
  assert reader.get_meta_data()["fps"] == 12
  reader.close()
  assert mp4.shape == (n, h, w + 1, 3)
  np.testing.assert_allclose(mp4[:, :, :w].mean((1, 2)), frames.mean((1, 2)), atol=6)
  gif = np.stack(imageio.mimread(paths["gif"]))[..., :3]
  assert gif.shape == (n, h, w, 3)
  np.testing.assert_allclose(gif.astype(float), frames, atol=6)
  assert imageio.get_reader(paths["gif"]).get_meta_data()["loop"] == 0


def test_image_grid_layout():
  images = np.stack([np.full((2, 3, 3), k / 10.0) for k in range(5)])
  grid = video.image_grid(images, ncols=3, pad=1)
  assert grid.shape == (2 * 2 + 1, 3 * 3 + 2, 3) and grid.dtype == np.uint8
  for k in range(5):
    r, c = divmod(k, 3)
    assert np.all(grid[3 * r:3 * r + 2, 4 * c:4 * c + 3] == round(k / 10 * 255))
  assert np.all(grid[3:, 8:] == 255) and np.all(grid[2, :] == 255)  # empty cell, gutter


def test_write_png_round_trip(tmp_path):
  image = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
  path = video.write_png(tmp_path / "a" / "b.png", image)
  np.testing.assert_array_equal(imageio.imread(path), video.to_uint8(image))
