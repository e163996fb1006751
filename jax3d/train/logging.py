"""What a user watches during training: a tqdm bar, TensorBoard scalars and images."""

from __future__ import annotations

import os
import sys
from typing import Mapping

import numpy as np
import tqdm
from tensorboardX import SummaryWriter


class Logger:
  """Progress bar + TensorBoard writer under `workdir/tensorboard`."""

  def __init__(self, workdir: str, total_steps: int, initial_step: int = 0,
               desc: str = "train", enable_bar: bool | None = None, write: bool = True):
    """`write` False (processes other than the main one): no TensorBoard files, no bar."""
    self.writer = SummaryWriter(os.path.join(workdir, "tensorboard")) if write else None
    if enable_bar is None:
      enable_bar = True
    enable_bar = enable_bar and write
    self.bar = tqdm.tqdm(total=total_steps, initial=initial_step, desc=desc, dynamic_ncols=True,
                         disable=not enable_bar, file=sys.stderr, unit="step",
                         mininterval=1.0)

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    if self.writer is None:
      return
    for k, v in values.items():
      self.writer.add_scalar(k, float(v), step)
    self.writer.flush()  # A killed process keeps every logged step.

  def image(self, step: int, tag: str, image: np.ndarray) -> None:
    """`image` (H, W, 3) uint8 or float in [0, 1]."""
    if self.writer is None:
      return
    image = np.asarray(image)
    if image.dtype != np.uint8:
      image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    self.writer.add_image(tag, image, step, dataformats="HWC")

  def advance(self, n: int = 1, **postfix) -> None:
    if postfix:
      self.bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v
                            for k, v in postfix.items()}, refresh=False)
    self.bar.update(n)

  def close(self) -> None:
    self.bar.close()
    if self.writer is not None:
      self.writer.flush()
      self.writer.close()
