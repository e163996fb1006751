"""`jax3d bench step`: seconds per training step and its split into render, prior and rest.

Rows: the whole jitted train step (one particle, 'a red cube'); the render forward and
forward+backward of the step's views; the prior's guidance call alone on x0 (`StepParts`);
for RGB renders scored by a latent prior, the encoder's forward+backward on them; and `rest`
= step − render fwd+bwd − prior − encoder (the loss, the optimizer; near zero or slightly
negative where XLA fuses across parts), less any extra parts a method names (VSD: the LoRA
network's call and its update). A system with a
`step_sweep` (SJC: K = 1, 2, 4, 8 perturbations; VSD: P = 1, 2, 4, 8 particles on every
device) is measured at each value, with its ratio to the first; the render and call rows are
one particle's. Seconds are medians, compile excluded (first_step_s includes it).
step_mem_mib is XLA's memory analysis of the compiled step per device (arguments, outputs
not aliased, temporaries); peak_mem_mib the device allocator's peak on GPU/TPU. With
--distributed (every process runs the same command) only the whole step is timed, over every
process's devices, and process 0 reports.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from jax3d.bench.table import Row, repeats as repeats_of, time_compiled
from jax3d.errors import UserError

PROMPT = "a red cube"


def _time_steps(step, state, key, repeats: int) -> tuple[float, float, Any]:
  """(first-call seconds incl. compile, median seconds per later call, final state) of a
  state-threading step (the state may be donated, so each call takes the last output)."""
  import jax  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  state, metrics = step(state, key)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - t0
  times = []
  for i in range(max(2, repeats)):
    t0 = time.perf_counter()
    state, metrics = step(state, jax.random.fold_in(key, i))
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times), state


def run(args) -> tuple[list[Row], dict[str, Any]]:
  import jax  # pylint: disable=g-import-not-at-top
  from jax3d import configuration  # pylint: disable=g-import-not-at-top
  from jax3d.priors import registry as priors  # pylint: disable=g-import-not-at-top
  from jax3d.systems import registry  # pylint: disable=g-import-not-at-top
  from jax3d.train import runner  # pylint: disable=g-import-not-at-top

  method, cfg = registry.resolve(args.method, args.config, args.overrides)
  cfg.num_particles = 1
  spec = runner.resolve_prior(args.prior, cfg)
  t0 = time.perf_counter()
  dtype = args.dtype
  prior = priors.load_prior(spec, dtype=dtype)
  jax.block_until_ready(prior.params)
  load_s = time.perf_counter() - t0
  repeats = repeats_of(args)
  sweep = registry.system_class(method).step_sweep
  label, key, values = sweep if sweep else (None, None, (None,))
  if getattr(args, "sweep", None):
    if sweep is None:
      raise UserError(f"--sweep: `bench step --method {method}` has no sweep")
    try:
      values = tuple(type(values[0])(v) for v in args.sweep.split(","))
    except ValueError:
      raise UserError(f"--sweep must be comma-separated values of {key} like "
                      f"{','.join(map(str, values))}, got {args.sweep!r}") from None
  values = values[:2] if args.quick else values
  settings = {"method": method, "config": args.config or registry.entry(method).config,
              "overrides": list(args.overrides), **priors.describe(spec),
              "dtype": dtype, "prior_load_s": load_s, "prompt": PROMPT,
              "sweep": None if sweep is None else {"label": label, "key": key,
                                                   "values": list(values)},
              "grid_label": (f"one particle, {PROMPT!r}; median of {repeats} runs, compile "
                             f"excluded (first_step_s includes it); rest = step - render "
                             f"fwd+bwd - prior - the other timed parts")}
  rows, first_row = [], None
  for value in values:
    run_cfg = cfg if value is None else configuration.apply_overrides(cfg, [f"{key}={value}"])
    system = registry.make_system(method, PROMPT, run_cfg, prior)
    state = system.init(jax.random.key(0))
    first, step_s, state = _time_steps(system.train_step, state, jax.random.key(1), repeats)
    stats = jax.local_devices()[0].memory_stats() or {}  # GPU/TPU: the peak so far
    needed = system.compile_step()  # XLA's estimate for the step, per device
    row = {"method": method}
    if label is not None:
      row[label] = value
    row.update({"step_s": step_s, "steps_per_s": 1.0 / step_s, "first_step_s": first})
    if jax.process_count() == 1:  # the parts are one particle's, on this process's devices
      row.update(_parts(system, state, prior, step_s, repeats))
    row.update({"step_mem_mib": None if needed is None else needed / 2**20,
                "peak_mem_mib": (stats["peak_bytes_in_use"] / 2**20
                                 if "peak_bytes_in_use" in stats else None)})
    if label is not None:
      first_row = first_row or row
      row[f"step_vs_{label}{values[0]}"] = step_s / first_row["step_s"]
      if "prior_s" in row:
        row[f"prior_vs_{label}{values[0]}"] = row["prior_s"] / first_row["prior_s"]
    rows.append(row)
  return rows, settings


def _parts(system, state, prior, step_s: float, repeats: int) -> dict[str, Any]:
  """Seconds of the step's render (forward, forward+backward), prior call and extras."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  params = jax.tree.map(lambda x: x[0], state.particles["params"])  # on the mesh
  parts = system.step_parts(state, jax.random.key(2))
  _, render_s = time_compiled(parts.render, (params, jax.random.key(3)), repeats)
  _, render_bwd_s = time_compiled(jax.grad(lambda p, k: jnp.sum(parts.render(p, k))),
                                  (params, jax.random.key(3)), repeats)
  rendered = jax.eval_shape(parts.render, params, jax.random.key(3))
  views = rendered.shape[0]
  x0 = jnp.zeros((views,) + tuple(prior.latent_shape), jnp.float32)
  _, prior_s = time_compiled(parts.guidance, (system.inputs["prior"], x0, jax.random.key(4)),
                             repeats)
  extras = {name: time_compiled(fn, fn_args, repeats)[1] for name, fn, fn_args in parts.extras}
  if prior.latent and rendered.shape[-1] == 3:  # RGB renders reach a latent prior's encoder
    encode = jax.grad(lambda x, pp: jnp.sum(prior.encode(pp, x)))
    extras["encode_fwd_bwd_s"] = time_compiled(
        encode, (jnp.zeros(rendered.shape, jnp.float32), system.inputs["prior"]), repeats)[1]
  return {"views": views, "render_fwd_s": render_s, "render_fwd_bwd_s": render_bwd_s,
          "prior_s": prior_s, **extras,
          "rest_s": step_s - render_bwd_s - prior_s - sum(extras.values())}
