"""Turntable renders and image files: frames -> .mp4 (H.264) / .gif, image grids, PNGs.

Images cross this module's boundary as numpy arrays: float in [0, 1] or uint8, (H, W, 3).
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import imageio.v2 as imageio
import jax
import numpy as np
from PIL import Image

from jax3d import cameras as cameras_lib

RenderFn = Callable[[cameras_lib.Camera], jax.Array]


def to_uint8(images) -> np.ndarray:
  """Float images in [0, 1] (clipped, NaN -> 0) or uint8 images -> uint8, same shape."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  images = np.nan_to_num(images.astype(np.float32), nan=0.0)
  return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def turntable_frames(render_fn: RenderFn, num_frames: int, elevation_deg: float = 15.0,
                     distance: float = 2.0, fov_deg: float = 40.0, height: int = 128,
                     width: int = 128, jit: bool = True) -> np.ndarray:
  """Renders `cameras.orbit` (azimuth i * 360 / N, i = 0..N-1); (N, H, W, 3) uint8.

  `render_fn(camera)` takes one `Camera` (c2w (4, 4), scalar fov_y) and returns an (H, W, 3)
  image in [0, 1]. With `jit`, it is compiled once (every frame has the same shapes).
  """
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  orbit = cameras_lib.orbit(num_frames, elevation_deg, distance, fov_deg, height, width)
  fn = jax.jit(render_fn) if jit else render_fn
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  for i in range(num_frames):
    camera = jax.tree.map(lambda x, i=i: x[i], orbit)
    image = np.asarray(fn(camera))
    if image.shape != (height, width, 3):
      raise ValueError(f"render_fn returned shape {image.shape}; want {(height, width, 3)}")
    frames[i] = to_uint8(image)
  return frames


def _pad_even(frames: np.ndarray) -> np.ndarray:
  """Edge-pads (N, H, W, 3) to even H and W (yuv420p subsamples chroma 2x2)."""
  _, h, w, _ = frames.shape
  return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_video(frames, directory: str | os.PathLike, stem: str = "turntable",
                fps: float = 24.0) -> dict[str, str]:
  """Writes frames (N, H, W, 3) as `{stem}.mp4` and `{stem}.gif`; returns {format: path}.

  The mp4 is H.264 / yuv420p (plays everywhere), odd sizes edge-padded to even. The gif loops
  forever with a per-frame adaptive palette; GIF stores delays in 1/100 s, and it merges runs
  of identical frames into one longer frame.
  """
  frames = to_uint8(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
    raise ValueError(f"frames must be (N, H, W, 3) with N >= 1, got {frames.shape}")
  os.makedirs(directory, exist_ok=True)
  paths = {"mp4": os.path.join(directory, f"{stem}.mp4"),
           "gif": os.path.join(directory, f"{stem}.gif")}
  with warnings.catch_warnings():
    # ffmpeg runs as a subprocess (fork + exec at once), which JAX's fork warning misreads.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
    writer = imageio.get_writer(paths["mp4"], format="FFMPEG", mode="I", fps=fps,
                                codec="libx264", pixelformat="yuv420p", quality=8,
                                macro_block_size=2, ffmpeg_log_level="error")
    try:
      for frame in _pad_even(frames):
        writer.append_data(frame)
    finally:
      writer.close()
  images = [Image.fromarray(f).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
            for f in frames]
  images[0].save(paths["gif"], save_all=True, append_images=images[1:], loop=0,
                 duration=max(int(round(1000.0 / fps)), 10), disposal=1)
  return paths


def image_grid(images, ncols: int, pad: int = 0, pad_value: int = 255) -> np.ndarray:
  """Tiles images (N, H, W, C) row-major into ncols columns; empty cells and `pad`-pixel
  gutters are `pad_value` (white, the renders' background). Returns uint8."""
  images = to_uint8(images)
  if images.ndim != 4:
    raise ValueError(f"images must be (N, H, W, C), got {images.shape}")
  if ncols < 1:
    raise ValueError(f"ncols must be >= 1, got {ncols}")
  n, h, w, c = images.shape
  ncols = min(ncols, max(n, 1))
  nrows = -(-n // ncols)
  grid = np.full((nrows * h + (nrows - 1) * pad, ncols * w + (ncols - 1) * pad, c),
                 pad_value, np.uint8)
  for k in range(n):
    r, q = divmod(k, ncols)
    grid[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = images[k]
  return grid


def write_png(path: str | os.PathLike, image) -> str:
  """Writes an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image as PNG; returns the path."""
  image = to_uint8(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
    raise ValueError(f"write_png wants (H, W[, 1|3|4]), got {image.shape}")
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(image).save(path, format="PNG")
  return path


__all__ = ["turntable_frames", "write_video", "image_grid", "write_png", "to_uint8"]
