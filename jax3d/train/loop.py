"""The one training loop: pure step in, everything impure around it.

`run` drives `step_fn(state, key) -> (state, metrics)` from the last checkpoint (or the given
initial state) to `num_steps`. Step `i` always uses `fold_in(seed_key, i)`, so a resumed run
replays exactly the keys an uninterrupted run would (bit-identical on CPU). A non-finite
metric stops the run before it can reach a checkpoint. SIGINT/SIGTERM save a checkpoint at
the next step boundary and exit.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np

from jax3d.errors import Interrupted, UserError
from jax3d.train import distributed
from jax3d.train.checkpoint import Checkpointer
from jax3d.train.logging import Logger


class NonFiniteError(UserError):
  """A loss or gradient became NaN/inf; the run stops without checkpointing it."""


@dataclasses.dataclass(frozen=True)
class Schedule:
  num_steps: int
  log_every: int = 50
  checkpoint_every: int = 500
  preview_every: int = 0  # 0 = never


@dataclasses.dataclass
class Result:
  state: Any
  step: int
  metrics: dict[str, float]
  wall_time: float
  compile_time: float
  resumed_from: int | None


class _SignalFlag:
  """Records SIGINT/SIGTERM instead of dying mid-step; restores handlers on exit."""

  def __init__(self):
    self.received = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: leave signals alone.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signum

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


def _to_host(metrics: Mapping[str, Any]) -> dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in jax.device_get(dict(metrics)).items()}


def run(step_fn: Callable[[Any, jax.Array], tuple[Any, Mapping[str, jax.Array]]],
        init_state: Any, seed_key: jax.Array, schedule: Schedule,
        checkpointer: Checkpointer, logger: Logger | None = None,
        preview_fn: Callable[[int, Any], None] | None = None,
        meta: dict[str, Any] | None = None, bar_keys: tuple[str, ...] = ("loss",),
        stop_after: int | None = None,
        on_checkpoint: Callable[[int], None] | None = None) -> Result:
  """Runs (or resumes) training to `schedule.num_steps`; returns the final state and the
  last step's metrics (kept in each checkpoint, so a resumed run that has no step left still
  returns them).

  `stop_after` ends the run early after that many steps of this call, checkpointing first
  (used by tests to simulate an interruption). `on_checkpoint(step)` runs after each save.
  """
  state, resumed_from, start = init_state, None, 0
  metrics: dict[str, float] = {}
  if checkpointer.latest_step() is not None:
    state, saved, start = checkpointer.restore(init_state)
    resumed_from = start
    metrics = dict(saved.get("metrics", {}))
  if logger is not None:
    logger.bar.reset(total=schedule.num_steps)
    logger.bar.update(start)
  t_start = time.perf_counter()
  compile_time = 0.0
  steps_this_call = 0
  step = start
  with _SignalFlag() as flag:
    while step < schedule.num_steps:
      t0 = time.perf_counter()
      state, step_metrics = step_fn(state, jax.random.fold_in(seed_key, step))
      metrics = _to_host(step_metrics)
      if steps_this_call == 0:
        compile_time = time.perf_counter() - t0
      step += 1
      steps_this_call += 1
      bad = [k for k, v in metrics.items() if not math.isfinite(v)]
      if bad:
        raise NonFiniteError(
            f"non-finite {', '.join(bad)} at step {step}; the run stopped without saving it "
            f"(last good checkpoint: step {checkpointer.latest_step()}); try a lower learning "
            f"rate or guidance scale")
      if logger is not None:
        logger.advance(1, **{k: metrics[k] for k in bar_keys if k in metrics})
        if step % schedule.log_every == 0 or step == schedule.num_steps:
          logger.scalars(step, metrics)
      if preview_fn is not None and schedule.preview_every and (
          step % schedule.preview_every == 0 or step == schedule.num_steps):
        preview_fn(step, state)
      # In a multi-process run a signal to any process stops them all at the same step (the
      # checkpoint below is a collective).
      signalled = distributed.any_process(flag.received is not None)
      stopping = signalled or (stop_after is not None and steps_this_call >= stop_after)
      if step % schedule.checkpoint_every == 0 or step == schedule.num_steps or stopping:
        checkpointer.save(step, state, {**(meta or {}), "metrics": metrics})
        if on_checkpoint is not None:
          on_checkpoint(step)
      if signalled:
        raise Interrupted(step, signum=flag.received or signal.SIGTERM)
      if stopping:
        break
  return Result(state=state, step=step, metrics=metrics,
                wall_time=time.perf_counter() - t_start, compile_time=compile_time,
                resumed_from=resumed_from)
