"""The solids prior's training set: rendered views of the 30 coloured solids and their captions.

Every image is one object (solid × colour) from a camera of the shared distribution. Its
caption is drawn per training step, inside the jitted step, from a small table of variants:
- `a {colour} {solid}` or the colourless `a {solid}` (which thereby covers every palette colour),
- with the view suffix of the image's own camera (DreamFusion's words, or the 30° azimuth
  sectors of `cameras.VIEW_SCHEMES`, chosen per training run), or without,
- with the right article ("an orange cone") or the other one ("a orange cone"),
- or the empty prompt (classifier-free guidance dropout).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jax3d import cameras
from jax3d.solids import render, scenes

NUM_OBJECTS = len(scenes.SOLIDS) * len(scenes.COLOURS)
# Bump when the cached .npz layout changes (old caches are then rebuilt).
_CACHE_FORMAT = 2


def num_views(scheme: str = "dreamfusion") -> int:
  """Caption view variants: none, or one of the scheme's labels."""
  return 1 + len(cameras.view_labels(scheme))


@dataclasses.dataclass(frozen=True)
class CaptionProbs:
  drop: float = 0.1  # empty prompt, for classifier-free guidance
  colourless: float = 0.3
  view_suffix: float = 0.5
  other_article: float = 0.2


def object_of(index: int) -> tuple[str, str]:
  """(solid, colour) of object `index` (solid-major order, as colour_prompts())."""
  return (scenes.SOLIDS[index // len(scenes.COLOURS)],
          scenes.COLOURS[index % len(scenes.COLOURS)])


def mirrored_views(view, scheme: str = "dreamfusion"):
  """The view label of each image's horizontal mirror image.

  Every solid is symmetric under y -> −y, so the mirror image of the view from azimuth φ is
  the view from −φ: azimuth sector k becomes sector −k; DreamFusion's words depend on |φ| only.
  """
  if scheme == "azimuth":
    n = len(cameras.AZIMUTH_LABELS)
    return (n - view) % n
  cameras.check_view_scheme(scheme)
  return view


def caption_texts(scheme: str = "dreamfusion") -> list[str]:
  """Every caption variant, indexed by `caption_index`, then the empty prompt last."""
  texts, labels = [], cameras.view_labels(scheme)
  for o in range(NUM_OBJECTS):
    solid, colour = object_of(o)
    for v in range(num_views(scheme)):
      view = None if v == 0 else labels[v - 1]
      for colourless in (0, 1):
        for other in (0, 1):
          c = None if colourless else colour
          noun = f"{c} {solid}" if c else solid
          right = "an" if noun[0] in "aeiou" else "a"
          article = ({"a": "an", "an": "a"}[right]) if other else right
          texts.append(scenes.prompt_for(solid, c, view, article))
  texts.append("")
  return texts


def caption_index(obj, view, colourless, other_article, scheme: str = "dreamfusion"):
  return ((obj * num_views(scheme) + view) * 2 + colourless) * 2 + other_article


def empty_caption_index(scheme: str = "dreamfusion") -> int:
  return NUM_OBJECTS * num_views(scheme) * 4


def sample_captions(key: jax.Array, obj: jax.Array, view_label: jax.Array,
                    probs: CaptionProbs = CaptionProbs(),
                    scheme: str = "dreamfusion") -> jax.Array:
  """Caption indices for a batch of images (objects and their cameras' view labels, indices
  into `cameras.view_labels(scheme)`)."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  shape = obj.shape
  with_view = jax.random.bernoulli(k1, probs.view_suffix, shape)
  colourless = jax.random.bernoulli(k2, probs.colourless, shape).astype(jnp.int32)
  other = jax.random.bernoulli(k3, probs.other_article, shape).astype(jnp.int32)
  drop = jax.random.bernoulli(k4, probs.drop, shape)
  view = jnp.where(with_view, view_label + 1, 0)
  idx = caption_index(obj, view, colourless, other, scheme)
  return jnp.where(drop, empty_caption_index(scheme), idx)


@dataclasses.dataclass(frozen=True)
class Dataset:
  images: np.ndarray  # (N, H, W, 3) float32 in [0, 1]
  objects: np.ndarray  # (N,) int32 object index
  azimuth: np.ndarray  # (N,) float32 camera azimuth, degrees
  elevation: np.ndarray  # (N,) float32 camera elevation, degrees

  def view_labels(self, scheme: str = "dreamfusion") -> np.ndarray:
    """(N,) int32 index of each image's camera into `cameras.view_labels(scheme)`."""
    return np.asarray(cameras.view_index(self.azimuth, self.elevation, scheme), np.int32)


def build(key: jax.Array, views_per_object: int, resolution: int = 32,
          supersample: int = 2, batch: int = 192, num_steps: int = 64) -> Dataset:
  """Renders every object from `views_per_object` random cameras of the shared distribution."""
  cam_cfg = scenes.camera_config(resolution)
  n = NUM_OBJECTS * views_per_object
  objects = np.repeat(np.arange(NUM_OBJECTS, dtype=np.int32), views_per_object)
  cams = cameras.sample(key, n, cam_cfg)
  solid = objects // len(scenes.COLOURS)
  rgb = scenes.palette()[objects % len(scenes.COLOURS)]
  images = []
  for s in range(0, n, batch):  # One solid per chunk: only its SDF is evaluated.
    sl = slice(s, min(s + batch, n))
    for solid_index in np.unique(solid[sl]):
      rows = np.arange(sl.start, sl.stop)[solid[sl] == solid_index]
      cam = cameras.Camera(c2w=cams.c2w[rows], fov_y=cams.fov_y[rows], height=resolution,
                           width=resolution)
      images.append(np.asarray(render.render_batch(
          scenes.SOLIDS[solid_index], rgb[rows], cam, supersample=supersample,
          num_steps=num_steps)["image"]))
  az, el, _ = cameras.to_spherical(cams)
  return Dataset(images=np.concatenate(images).astype(np.float32), objects=objects,
                 azimuth=np.asarray(az, np.float32), elevation=np.asarray(el, np.float32))


def build_cached(path: str, key: jax.Array, views_per_object: int, resolution: int = 32,
                 supersample: int = 2) -> Dataset:
  """`build`, memoized in an .npz file keyed by its arguments (resumed runs skip the render)."""
  import os  # pylint: disable=g-import-not-at-top
  signature = np.asarray([_CACHE_FORMAT, views_per_object, resolution, supersample,
                          *np.asarray(jax.random.key_data(key)).ravel()], np.int64)
  if os.path.exists(path):
    with np.load(path) as f:
      if np.array_equal(f["signature"], signature):
        return Dataset(images=f["images"], objects=f["objects"], azimuth=f["azimuth"],
                       elevation=f["elevation"])
  ds = build(key, views_per_object, resolution, supersample)
  tmp = path + ".tmp.npz"
  np.savez(tmp, signature=signature, images=ds.images, objects=ds.objects,
           azimuth=ds.azimuth, elevation=ds.elevation)
  os.replace(tmp, path)
  return ds
