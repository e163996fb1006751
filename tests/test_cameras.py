"""Cameras: orbit geometry, the pinhole model against an independent numpy reference,
rays/project consistency, the sampling distribution and DreamFusion's view labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax3d import cameras
from jax3d import configuration
from jax3d.errors import UserError
from jax3d.solids import scenes

# (height, width): even, odd and mixed parity, square and not.
SIZES = [(8, 8), (7, 7), (6, 9)]


def _np_world_to_camera(eye, target=np.zeros(3), world_up=np.array([0.0, 0.0, 1.0])):
  """Rotation rows (right, up, -forward) and translation of an OpenGL look-at view matrix."""
  forward = target - eye
  forward = forward / np.linalg.norm(forward)
  right = np.cross(forward, world_up)
  right = right / np.linalg.norm(right)
  up = np.cross(right, forward)
  rot = np.stack([right, up, -forward])
  return rot, -rot @ eye


def _np_eye(azimuth_deg, elevation_deg, distance):
  az, el = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
  return distance * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])


def _np_project(eye, fov_deg, height, width, points):
  """Brute-force pinhole: camera frame x right, y up, looking down -z; image y points down."""
  rot, trans = _np_world_to_camera(eye)
  p_cam = points @ rot.T + trans
  focal = 0.5 * height / np.tan(0.5 * np.deg2rad(fov_deg))
  depth = -p_cam[:, 2]
  u = 0.5 * width + focal * p_cam[:, 0] / depth
  v = 0.5 * height - focal * p_cam[:, 1] / depth
  return np.stack([u, v], -1), depth


def _np_pixel_ray(eye, fov_deg, height, width, u, v):
  """World-space unit direction of the ray through image coordinates (u, v)."""
  rot, _ = _np_world_to_camera(eye)
  focal = 0.5 * height / np.tan(0.5 * np.deg2rad(fov_deg))
  d_cam = np.array([(u - 0.5 * width) / focal, -(v - 0.5 * height) / focal, -1.0])
  d = rot.T @ d_cam
  return d / np.linalg.norm(d)


def _distance_to_origin(origin, direction):
  """Distance from the world origin to the line origin + t * direction (unit direction)."""
  origin, direction = np.asarray(origin, np.float64), np.asarray(direction, np.float64)
  return np.linalg.norm(np.cross(origin, direction), axis=-1)


# A few cameras away from the poles, shared by the geometry tests.
AZIMUTHS = np.array([0.0, 37.0, -120.0, 179.0])
ELEVATIONS = np.array([0.0, 25.0, -10.0, 70.0])
DISTANCES = np.array([2.0, 2.5, 1.7, 3.0])
FOV_DEG = 40.0


def _cams(height, width):
  return cameras.from_spherical(AZIMUTHS, ELEVATIONS, DISTANCES, FOV_DEG, height, width)


@pytest.mark.parametrize("height,width", SIZES)
def test_origin_projects_to_the_image_centre(height, width):
  cam = _cams(height, width)
  xy, depth = cameras.project(cam, jnp.zeros((len(AZIMUTHS), 3)))
  np.testing.assert_allclose(xy, np.tile([[width / 2, height / 2]], (len(AZIMUTHS), 1)),
                             atol=1e-4)
  np.testing.assert_allclose(depth, DISTANCES, rtol=1e-5)


@pytest.mark.parametrize("height,width", SIZES)
def test_centre_ray_passes_through_origin(height, width):
  cam = _cams(height, width)
  origins, dirs = cameras.rays(cam)
  for k in range(len(AZIMUTHS)):
    eye = _np_eye(AZIMUTHS[k], ELEVATIONS[k], DISTANCES[k])
    np.testing.assert_allclose(origins[k, 0, 0], eye, atol=1e-5)
    # The pinhole ray through image coordinates (W/2, H/2) hits the origin...
    d = _np_pixel_ray(eye, FOV_DEG, height, width, width / 2, height / 2)
    assert _distance_to_origin(eye, d) < 1e-6
    # ...and `rays` agrees: for odd sizes that is the middle pixel's ray; in general the
    # (up to four) pixels around the centre are symmetric about it.
    rows = [height // 2] if height % 2 else [height // 2 - 1, height // 2]
    cols = [width // 2] if width % 2 else [width // 2 - 1, width // 2]
    middle = np.mean([dirs[k, i, j] for i in rows for j in cols], axis=0)
    middle /= np.linalg.norm(middle)
    assert _distance_to_origin(origins[k, 0, 0], middle) < 1e-5
    np.testing.assert_allclose(middle, d, atol=1e-6)
    if len(rows) == len(cols) == 1:
      assert _distance_to_origin(origins[k, 0, 0], dirs[k, rows[0], cols[0]]) < 1e-5


@pytest.mark.parametrize("height,width", SIZES)
def test_ray_directions_are_unit_and_match_the_pinhole_reference(height, width):
  cam = _cams(height, width)
  origins, dirs = cameras.rays(cam)
  assert dirs.shape == origins.shape == (len(AZIMUTHS), height, width, 3)
  np.testing.assert_allclose(np.linalg.norm(dirs, axis=-1), 1.0, atol=1e-6)
  for k in range(len(AZIMUTHS)):
    eye = _np_eye(AZIMUTHS[k], ELEVATIONS[k], DISTANCES[k])
    for i, j in [(0, 0), (height - 1, 0), (1, width - 1), (height - 1, width - 1)]:
      want = _np_pixel_ray(eye, FOV_DEG, height, width, j + 0.5, i + 0.5)
      np.testing.assert_allclose(dirs[k, i, j], want, atol=2e-6)


@pytest.mark.parametrize("height,width", SIZES)
def test_project_matches_brute_force_pinhole(height, width):
  points = np.random.default_rng(0).uniform(-0.7, 0.7, size=(64, 3))
  cam = _cams(height, width)
  for k in range(len(AZIMUTHS)):
    one = jax.tree.map(lambda x: x[k], cam)
    xy, depth = cameras.project(one, jnp.asarray(points, jnp.float32))
    eye = _np_eye(AZIMUTHS[k], ELEVATIONS[k], DISTANCES[k])
    want_xy, want_depth = _np_project(eye, FOV_DEG, height, width, points)
    np.testing.assert_allclose(xy, want_xy, atol=1e-4)
    np.testing.assert_allclose(depth, want_depth, atol=1e-5)


def test_image_axes_right_and_down():
  # Camera at azimuth 0 sits on +x looking at -x with z up, so +y is to its right and +z up;
  # image y points down.
  cam = cameras.from_spherical(0.0, 0.0, 2.0, 40.0, 8, 8)
  xy, _ = cameras.project(cam, jnp.array([[0.0, 0.3, 0.0], [0.0, 0.0, 0.3]]))
  assert xy[0, 0] > 4.5 and abs(xy[0, 1] - 4.0) < 1e-5
  assert xy[1, 1] < 3.5 and abs(xy[1, 0] - 4.0) < 1e-5
  # Field of view: a point on the top edge of the frustum lands on the image's top edge.
  half = np.deg2rad(20.0)
  xy, _ = cameras.project(cam, jnp.array([[0.0, 0.0, 2.0 * np.tan(half)]]))
  np.testing.assert_allclose(xy[0], [4.0, 0.0], atol=1e-4)


@pytest.mark.parametrize("height,width", SIZES)
def test_rays_and_project_are_consistent(height, width):
  cam = _cams(height, width)
  origins, dirs = cameras.rays(cam)
  t = np.random.default_rng(1).uniform(0.5, 4.0, size=(height, width))
  jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5, indexing="xy")
  for k in range(len(AZIMUTHS)):
    one = jax.tree.map(lambda x: x[k], cam)
    points = origins[k] + t[..., None] * dirs[k]
    xy, depth = cameras.project(one, points)
    np.testing.assert_allclose(xy[..., 0], jj, atol=2e-4)
    np.testing.assert_allclose(xy[..., 1], ii, atol=2e-4)
    # Depth is along the optical axis (-back), not along the ray.
    back = np.asarray(one.c2w[:3, 2])
    np.testing.assert_allclose(depth, t * (np.asarray(dirs[k]) @ -back), rtol=1e-5)


def _assert_rotations(c2w):
  rot = np.asarray(c2w[..., :3, :3], np.float64)
  assert np.all(np.isfinite(np.asarray(c2w)))
  eye = np.broadcast_to(np.eye(3), rot.shape)
  np.testing.assert_allclose(np.swapaxes(rot, -1, -2) @ rot, eye, atol=1e-5)
  np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(c2w[..., 3, :]),
                                np.broadcast_to([0.0, 0.0, 0.0, 1.0], c2w.shape[:-2] + (4,)))


def test_z_is_up():
  az, el = np.meshgrid(np.linspace(-180, 180, 9), np.array([-89.0, -60.0, 0.0, 45.0, 89.0]))
  cam = cameras.from_spherical(az.ravel(), el.ravel(), 2.0, 40.0, 8, 8)
  _assert_rotations(cam.c2w)
  up = np.asarray(cam.c2w[:, :3, 1])
  assert np.all(up[:, 2] > 0), up[up[:, 2] <= 0]
  # The camera looks at the origin: its backward axis is its normalised position.
  pos = np.asarray(cam.position)
  np.testing.assert_allclose(cam.c2w[:, :3, 2], pos / np.linalg.norm(pos, axis=-1,
                                                                     keepdims=True), atol=1e-6)
  # Its right axis is horizontal (no roll).
  np.testing.assert_allclose(cam.c2w[:, 2, 0], 0.0, atol=1e-6)


@pytest.mark.parametrize("elevation", [90.0, -90.0])
def test_look_at_straight_down_or_up_is_a_rotation(elevation):
  cam = cameras.from_spherical(np.array([0.0, 30.0, -135.0]), np.full(3, elevation), 2.0, 40.0,
                               5, 5)
  _assert_rotations(cam.c2w)
  np.testing.assert_allclose(cam.c2w[:, :3, 2],
                             np.tile([0.0, 0.0, np.sign(elevation)], (3, 1)), atol=1e-5)
  origins, dirs = cameras.rays(cam)
  assert _distance_to_origin(origins[:, 2, 2], dirs[:, 2, 2]).max() < 1e-5
  # Exactly on the axis (no float fuzz from cos(90°)).
  c2w = cameras.look_at(jnp.array([[0.0, 0.0, 2.0], [0.0, 0.0, -3.0]]))
  _assert_rotations(c2w)
  np.testing.assert_allclose(c2w[:, :3, 3], [[0.0, 0.0, 2.0], [0.0, 0.0, -3.0]])


def test_from_spherical_broadcasts_scalars():
  cam = cameras.from_spherical(np.array([0.0, 90.0]), 30.0, 2.0, 40.0, 4, 4)
  want = cameras.from_spherical(np.array([0.0, 90.0]), np.full(2, 30.0), np.full(2, 2.0),
                                40.0, 4, 4)
  np.testing.assert_allclose(cam.c2w, want.c2w, atol=1e-6)


def test_sample_respects_ranges():
  cfg = cameras.CameraConfig(height=6, width=10, distance=3.0, distance_jitter=0.25,
                             fov_deg=50.0, fov_jitter_deg=5.0, elevation_range=(10.0, 30.0),
                             azimuth_range=(-60.0, 20.0))
  cam = cameras.sample(jax.random.key(0), 2000, cfg)
  assert cam.c2w.shape == (2000, 4, 4) and (cam.height, cam.width) == (6, 10)
  cameras.check_camera(cam)
  az, el, dist = (np.asarray(x) for x in cameras.to_spherical(cam))
  tol = 1e-3
  for values, (lo, hi) in [(az, cfg.azimuth_range), (el, cfg.elevation_range),
                           (dist, (2.75, 3.25)), (np.rad2deg(np.asarray(cam.fov_y)), (45.0, 55.0))]:
    assert values.min() >= lo - tol and values.max() <= hi + tol
    # Uniform over the whole range: both ends reached, mean in the middle.
    span = hi - lo
    assert values.min() < lo + 0.01 * span and values.max() > hi - 0.01 * span
    assert abs(values.mean() - 0.5 * (lo + hi)) < 0.03 * span
  _assert_rotations(cam.c2w)
  # Every sampled camera looks at the origin.
  xy, _ = cameras.project(cam, jnp.zeros((2000, 3)))
  np.testing.assert_allclose(xy, np.tile([[5.0, 3.0]], (2000, 1)), atol=1e-3)
  # Different keys, different cameras; same key, same cameras.
  np.testing.assert_array_equal(cam.c2w, cameras.sample(jax.random.key(0), 2000, cfg).c2w)
  assert not np.allclose(cam.c2w, cameras.sample(jax.random.key(1), 2000, cfg).c2w)


def test_sample_without_jitter_is_exact():
  cfg = cameras.CameraConfig(height=32, width=32, distance=2.0, distance_jitter=0.0,
                             fov_deg=40.0, fov_jitter_deg=0.0, elevation_range=(20.0, 20.0),
                             azimuth_range=(-180.0, 180.0))
  cam = cameras.sample(jax.random.key(3), 16, cfg)
  _, el, dist = cameras.to_spherical(cam)
  np.testing.assert_allclose(dist, 2.0, rtol=1e-6)
  np.testing.assert_allclose(el, 20.0, atol=1e-3)
  np.testing.assert_allclose(cam.fov_y, np.deg2rad(40.0), rtol=1e-6)


def test_camera_config_typed_roundtrip():
  preset = configuration.load("dreamfusion:toy").camera
  cfg = configuration.typed(cameras.CameraConfig, preset, "camera")
  assert cfg == scenes.camera_config(32)
  hash(cfg)  # usable as a static jit argument
  given = dict(preset.to_dict(), elevation_range=[0, 30], height=16)
  cfg = configuration.typed(cameras.CameraConfig, given, "camera")
  assert cfg.elevation_range == (0.0, 30.0) and cfg.height == 16
  assert all(isinstance(v, float) for v in cfg.elevation_range)
  with pytest.raises(UserError, match="camera.elevation_rang"):
    configuration.typed(cameras.CameraConfig, dict(given, elevation_rang=(0, 1)), "camera")
  del given["fov_deg"]
  with pytest.raises(UserError, match="camera.fov_deg.*missing"):
    configuration.typed(cameras.CameraConfig, given, "camera")


@pytest.mark.parametrize("n,elevation", [(4, 15.0), (7, -5.0), (12, 45.0)])
def test_orbit_is_equally_spaced(n, elevation):
  cam = cameras.orbit(n, elevation_deg=elevation, distance=2.5, fov_deg=30.0, height=6, width=6)
  az, el, dist = (np.asarray(x, np.float64) for x in cameras.to_spherical(cam))
  np.testing.assert_allclose(el, elevation, atol=1e-3)
  np.testing.assert_allclose(dist, 2.5, rtol=1e-6)
  np.testing.assert_allclose(cam.fov_y, np.deg2rad(30.0), rtol=1e-6)
  steps = (np.diff(np.concatenate([az, az[:1]])) % 360.0)
  np.testing.assert_allclose(steps, 360.0 / n, atol=1e-3)
  assert abs(az[0]) < 1e-4  # starts from the front (azimuth 0)


@pytest.mark.parametrize("azimuth,elevation,label", [
    (0.0, 0.0, "front"), (44.9, 10.0, "front"), (-44.9, 10.0, "front"),
    (45.0, 0.0, "side"), (-45.0, 0.0, "side"), (90.0, 0.0, "side"), (-90.0, 30.0, "side"),
    (135.0, 0.0, "side"), (-135.0, 0.0, "side"),
    (135.1, 0.0, "back"), (-135.1, 0.0, "back"), (180.0, 0.0, "back"), (-180.0, 0.0, "back"),
    # Wrap-around.
    (350.0, 0.0, "front"), (-350.0, 0.0, "front"), (360.0, 0.0, "front"), (405.0, 0.0, "side"),
    (-170.0, 0.0, "back"), (190.0, 0.0, "back"), (540.0, 0.0, "back"), (-315.0, 0.0, "side"),
    # Overhead wins over the azimuth above 60°, not at 60°.
    (0.0, 60.0, "front"), (180.0, 60.0, "back"), (0.0, 60.1, "overhead"),
    (180.0, 75.0, "overhead"), (90.0, 90.0, "overhead"), (0.0, -70.0, "front"),
])
def test_view_label_thresholds(azimuth, elevation, label):
  assert cameras.view_label(azimuth, elevation) == label
  assert cameras.view_suffix(label) == f", {label} view"


@pytest.mark.parametrize("azimuth, label", [
    (0.0, "azimuth 0"), (14.9, "azimuth 0"), (15.1, "azimuth 30"), (-14.9, "azimuth 0"),
    (-15.1, "azimuth 330"), (359.0, "azimuth 0"), (90.0, "azimuth 90"), (181.0, "azimuth 180"),
    (-90.0, "azimuth 270"), (400.0, "azimuth 30"), (-720.0, "azimuth 0"),
])
def test_azimuth_view_labels_are_the_nearest_sector_centre(azimuth, label):
  for elevation in (-10.0, 45.0, 80.0):  # the azimuth scheme ignores elevation
    assert cameras.view_label(azimuth, elevation, "azimuth") == label


def test_azimuth_sectors_brute_force():
  """Every azimuth gets the label whose centre is circularly nearest (brute force)."""
  az = np.linspace(-400.0, 400.0, 3201) + 1e-3  # off the sector edges
  centres = np.array([float(l.split()[1]) for l in cameras.view_labels("azimuth")])
  dist = np.abs((az[:, None] - centres[None] + 180.0) % 360.0 - 180.0)
  np.testing.assert_array_equal(cameras.view_index(az, 0.0, "azimuth"), dist.argmin(-1))
  with pytest.raises(UserError, match="view labels"):
    cameras.view_index(0.0, 0.0, "octant")


def test_view_index_vectorised_and_jittable():
  az = jnp.array([0.0, 90.0, 180.0, 350.0, -170.0, 10.0])
  el = jnp.array([0.0, 0.0, 0.0, 0.0, 0.0, 80.0])
  want = [cameras.VIEW_LABELS.index(l) for l in
          ("front", "side", "back", "front", "back", "overhead")]
  np.testing.assert_array_equal(cameras.view_index(az, el), want)
  np.testing.assert_array_equal(jax.jit(cameras.view_index)(az, el), want)
