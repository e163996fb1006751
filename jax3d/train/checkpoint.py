"""Orbax checkpoints: a pytree state plus a JSON `meta` dict, keep the newest few, resume.

Saving is synchronous from the caller's view (`wait_until_finished`) so that a checkpoint
on disk is complete before training continues; a killed process leaves the previous
checkpoint intact (orbax writes into a temporary folder and renames it). A save that cannot
fit on the disk is refused before it starts (free space below the size of the last
checkpoint) or, if the disk fills during it, its partial folder is removed; both raise
`DiskFull`, which names the last complete checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from jax3d.errors import UserError
from jax3d.train import distributed

_TMP = ".orbax-checkpoint-tmp"
_NO_SPACE = ("No space left on device", f"os_error_code='{errno.ENOSPC}'")


class DiskFull(UserError):
  """The disk filled up while (or before) writing a checkpoint."""


def is_disk_full(e: BaseException) -> bool:
  """Whether `e` (an OSError, or orbax/tensorstore's wrapped error) is ENOSPC."""
  if isinstance(e, OSError) and e.errno == errno.ENOSPC:
    return True
  return any(s in str(e) for s in _NO_SPACE)


def folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path)
             for f in files)


class _HoldLogs(logging.Handler):
  """Holds absl's log records during a save (orbax logs each failed write thread at ERROR):
  dropped when the failure is a full disk, which gets its own one-line error."""

  def __init__(self):
    super().__init__()
    self.records = []

  def emit(self, record):
    self.records.append(record)


@contextlib.contextmanager
def _held_absl_logs():
  logger = logging.getLogger("absl")
  hold, propagate = _HoldLogs(), logger.propagate
  saved = logger.handlers[:]
  logger.handlers, logger.propagate = [hold], False
  try:
    yield hold
  finally:
    logger.handlers, logger.propagate = saved, propagate


# Orbax saves a replicated array in one slice per replica, each copied to the host on its own.
# For the hundreds of small arrays of a network's optimizer state that is 4x the transfers on 4
# devices (a save of the tiny prior's training state: 5.8 s, 2.3 s with this threshold, on the
# 2-core CPU). Slices of 1 MiB and more still save in parallel across replicas.
def _register_array_handler() -> None:
  absl = logging.getLogger("absl")
  level = absl.level
  absl.setLevel(logging.ERROR)  # orbax warns that it replaces its default handler
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=1 << 20),
        override=True)
  finally:
    absl.setLevel(level)


_register_array_handler()


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with `state` (pytree) and `meta` (JSON) items."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                             create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def _needed_bytes(self) -> int:
    """The size of the last checkpoint (orbax compresses, so the state's size would
    overstate it); 0 before the first."""
    last = self.latest_step()
    return 0 if last is None else folder_bytes(os.path.join(self.directory, str(last)))

  def _refuse(self, step: int) -> DiskFull:
    last = self.latest_step()
    kept = (f"the last complete checkpoint is step {last}" if last is not None else
            "there is no complete checkpoint yet")
    return DiskFull(f"no space left on device writing checkpoint {step} in {self.directory}; "
                    f"{kept}; free space and rerun the same command to resume")

  def save(self, step: int, state: Any, meta: dict[str, Any] | None = None) -> None:
    low = shutil.disk_usage(self.directory).free < self._needed_bytes() + (1 << 20)
    if distributed.any_process(low):  # Every process refuses, or none: saving is collective.
      raise self._refuse(step)
    failure = None
    with _held_absl_logs() as held:
      try:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {})),
                           force=True)
        self._manager.wait_until_finished()
      except Exception as e:  # pylint: disable=broad-except  (orbax wraps the writer's OSError)
        failure = e
    if failure is not None and is_disk_full(failure):
      if distributed.is_main():
        self._remove_partial()
      raise self._refuse(step) from None
    for record in held.records:
      logging.getLogger("absl").handle(record)
    if failure is not None:
      raise failure

  def _remove_partial(self) -> None:
    for name in os.listdir(self.directory):
      if _TMP in name:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any], int]:
    """Restores (state, meta, step) with `like`'s structure, dtypes and shardings."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out["state"], dict(out["meta"] or {}), step

  def close(self) -> None:
    self._manager.close()


def has_checkpoint(directory: str) -> bool:
  """Whether `directory` holds a complete checkpoint (without creating anything)."""
  return os.path.isdir(directory) and any(
      name.isdigit() and os.path.isdir(os.path.join(directory, name))
      for name in os.listdir(directory))
