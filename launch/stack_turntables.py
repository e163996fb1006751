"""Turntables side by side in one GIF (e.g. a Magic3D run's coarse and fine stages):

    python launch/stack_turntables.py OUT.gif RUN/coarse/turntable.gif RUN/final/turntable.gif
"""

import sys

import imageio.v2 as imageio
import numpy as np

from jax3d.export import video


def main():
  out, inputs = sys.argv[1], sys.argv[2:]
  clips = [np.asarray(imageio.mimread(path))[..., :3] for path in inputs]
  frames = min(len(c) for c in clips)
  grid = np.stack([video.image_grid(np.stack([c[i] for c in clips]), len(clips), pad=2)
                   for i in range(frames)])
  imageio.mimsave(out, list(grid), duration=1000 / 12, loop=0)
  print(f"wrote {out}: {frames} frames of {grid.shape[2]}x{grid.shape[1]}")


if __name__ == "__main__":
  main()
