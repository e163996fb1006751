"""The `jax3d` command: one entry point, one subcommand per job.

Every subcommand gets the same error contract for free: a `UserError` raised anywhere below
prints one line to stderr (what is wrong, how to fix it) and exits with code 2. Heavy
modules (jax, diffusers) are imported inside the handlers so `jax3d --help` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import signal
import sys
from typing import Callable, Sequence

from jax3d import compilation_cache
from jax3d.errors import Interrupted, UserError
from jax3d.systems import registry
from jax3d.train import distributed
from jax3d.train import supervisor

EXIT_USER_ERROR = 2
_METHOD_HELP = (f"distillation method, one of {', '.join(registry.SYSTEMS)} (default: the "
                f"config's `method`, else {registry.DEFAULT_METHOD}; it must agree with "
                f"--config)")


class _Parser(argparse.ArgumentParser):
  """argparse that reports mistakes as one-line `UserError`s instead of usage dumps."""

  def error(self, message):
    raise UserError(f"{message} (see `{self.prog} --help`)")


def _split_overrides(extra: Sequence[str]) -> list[str]:
  """Keeps `--config.key=value` (or `--config.key value`) items; anything else is an error."""
  overrides, i = [], 0
  extra = list(extra)
  while i < len(extra):
    item = extra[i]
    if not item.startswith("--config."):
      raise UserError(f"unrecognized argument {item!r} (see `jax3d --help`)")
    body = item[len("--config."):]
    if "=" not in body:
      if i + 1 >= len(extra):
        raise UserError(f"{item} needs a value: {item}=VALUE")
      body += "=" + extra[i + 1]
      i += 1
    overrides.append(body)
    i += 1
  return overrides


def _add_config_args(p: argparse.ArgumentParser, default: str) -> None:
  p.add_argument("--config", default=default,
                 help=f"config file and preset, PATH.py[:PRESET] or a shipped name "
                      f"(default {default}); override any key with --config.KEY=VALUE")


def _cmd_bench(args, overrides):
  if overrides and args.what not in ("solids", "step"):
    raise UserError(f"`jax3d bench {args.what}` takes no --config overrides")
  args.overrides = overrides
  if args.distributed and args.what != "step":
    raise UserError(f"--distributed is for `jax3d bench step`, not `bench {args.what}` (run "
                    f"`jax3d bench solids` prompts as separate `generate --distributed` runs)")
  if getattr(args, "raster", False) and args.what != "render":
    raise UserError(f"--raster is for `jax3d bench render`, not `bench {args.what}`")
  distributed.initialize(args)
  from jax3d import bench
  return bench.main(args)


def _cmd_sample(args, overrides):
  del overrides
  from jax3d.priors import sampling
  return sampling.sample_command(args)


def _cmd_train_prior(args, overrides):
  from jax3d import configuration
  from jax3d.train import prior
  cfg = configuration.apply_overrides(configuration.load(args.config, "default"), overrides)
  if args.stop_after is not None and args.stop_after < 1:
    raise UserError(f"--stop-after must be at least 1, got {args.stop_after}")
  distributed.initialize(args)
  summary = prior.train(args.workdir, cfg, stop_after=args.stop_after, export_to=args.export_to)
  if not distributed.is_main():
    print(f"process {distributed.process_index()}: done at step {summary['step']}",
          file=sys.stderr)
    return 0
  print(f"trained {summary['step']} steps in {summary['wall_time_s']:.0f} s "
        f"(loss {summary['final_loss']:.4f}); prior folder: {summary.get('exported', '-')}")
  return 0


def _cmd_generate(args, overrides):
  from jax3d.train import runner
  _, cfg = registry.resolve(args.method, args.config, overrides)
  if args.particles is not None:
    cfg.num_particles = args.particles
  if args.stop_after is not None and args.stop_after < 1:
    raise UserError(f"--stop-after must be at least 1, got {args.stop_after}")
  distributed.initialize(args)
  summary = runner.generate(args.prompt, args.workdir, cfg, args.prior,
                            overwrite=args.overwrite, dtype=args.dtype,
                            allow_pickle=args.allow_pickle, stop_after=args.stop_after)
  if not distributed.is_main():
    print(f"process {distributed.process_index()}: done at step {summary['steps']}",
          file=sys.stderr)
  elif "particles" in summary:
    print(f"done: {summary['steps']} steps in {summary['total_time_s']:.0f} s; results in "
          f"{args.workdir}/final")
  return 0


def _cmd_export(args, overrides):
  del overrides
  from jax3d.train import runner
  if args.level is not None and not math.isfinite(args.level):
    raise UserError(f"--level must be a finite density, got {args.level}; leave it out for "
                    f"the automatic rule")
  results = runner.export_command(args.workdir, level=args.level)
  for k, r in enumerate(results):
    print(f"particle {k}: {r['num_vertices']} vertices at density level {r['mesh_level']:.3g} "
          f"-> {os.path.dirname(r['paths']['glb'])}")
  return 0


def _cmd_eval(args, overrides):
  del overrides
  from jax3d import bench
  from jax3d.train import runner
  if not 16 <= args.resolution <= 512:
    raise UserError(f"--resolution must be in [16, 512], got {args.resolution}")
  summary = runner.eval_command(args.workdir, resolution=args.resolution)
  bench.print_table(summary["particles"], title=f"jax3d eval: {summary['prompt']!r}")
  if "diversity" in summary:
    d = summary["diversity"]
    print(f"diversity: hue spread {d['hue_spread']:.3f}, mean pairwise silhouette IoU "
          f"{d['mean_pairwise_silhouette_iou']:.3f}")
  print(f"wrote {os.path.join(args.workdir, 'eval.json')}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="jax3d", description="Text-to-3D by distilling 2D diffusion priors.")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
  sub.required = True

  p = sub.add_parser("bench", help="benchmarks: render speed, prior quality, solids quality")
  p.add_argument("what", choices=["render", "prior", "solids", "step"],
                 help="which benchmark to run")
  p.add_argument("--out", default=None, help="also write the results as JSON to this file")
  p.add_argument("--repeats", type=int, default=5, help="timed repetitions per row")
  p.add_argument("--quick", action="store_true", help="tiny sizes (for smoke tests)")
  p.add_argument("--grid", choices=["toy", "sd"], default="toy",
                 help="hash-grid scale for `bench render`")
  p.add_argument("--raster", action="store_true",
                 help="`bench render`: time the mesh rasterizer instead of the NeRF")
  p.add_argument("--prior", default=None,
                 help="`bench prior`: the prior to score (default solids); `solids`/`step`: "
                      "the prior to use (default: the config's `prior`)")
  p.add_argument("--samples-per-prompt", type=int, default=8, help="`bench prior`: samples")
  p.add_argument("--steps", type=int, default=50, help="`bench prior`: DDIM steps")
  p.add_argument("--guidance-scale", type=float, default=None,
                 help="`bench prior`: CFG scale (default: the prior's own)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--grid-out", default=None, help="`bench prior`: also write a sample grid PNG")
  p.add_argument("--method", default=None,
                 help=f"`bench solids`/`step`: {_METHOD_HELP}")
  p.add_argument("--prompts", default="all",
                 help="`bench solids`: 'all' (the 30 colour prompts), 'colourless' (the 5 "
                      "'a {solid}' prompts) or 'a red cube;a blue cone'")
  p.add_argument("--config", default=None,
                 help="`bench solids`/`step`: config PATH.py[:PRESET] (default: the method's); "
                      "override keys with --config.KEY=VALUE")
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                 help="`bench step`: the prior's parameter and compute dtype")
  p.add_argument("--sweep", default=None,
                 help="`bench step`: the values of the method's sweep to run, e.g. 4,8 (VSD's "
                      "particles; SJC's perturbations K)")
  p.add_argument("--workdir-root", default="runs/bench-solids",
                 help="`bench solids`: run folders go under ROOT/METHOD/PROMPT")
  distributed.add_flags(p)
  p.set_defaults(handler=_cmd_bench, takes_config=True)

  p = sub.add_parser("sample", help="draw images from a 2D prior with DDIM (a grid PNG)")
  p.add_argument("prompt", help="text prompt, e.g. 'a blue cone'")
  p.add_argument("--prior", default="solids",
                 help="'solids' (shipped), 'analytic' or 'analytic:N' (exact, from N renders "
                      "per object; solids prompts only) or a diffusers folder")
  p.add_argument("--num", type=int, default=8, help="number of images")
  p.add_argument("--steps", type=int, default=50, help="DDIM steps")
  p.add_argument("--guidance-scale", type=float, default=None,
                 help="classifier-free guidance scale (default: the prior's own)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument("--allow-pickle", action="store_true",
                 help="allow loading .bin/.ckpt weights (unpickling runs code: trusted files only)")
  p.add_argument("--out", default="samples.png", help="output grid PNG")
  p.set_defaults(handler=_cmd_sample)

  p = sub.add_parser("generate", help="text to 3D: train a field on a prompt and export it")
  p.add_argument("prompt", help="text prompt, e.g. 'a red cube'")
  p.add_argument("--workdir", required=True, help="run folder; rerun to resume")
  p.add_argument("--method", default=None, help=_METHOD_HELP)
  p.add_argument("--prior", default=None,
                 help="'solids' or 'solids-azimuth' (shipped), 'analytic' or 'analytic:N' "
                      "(exact, from N renders per object; solids prompts) or a diffusers "
                      "folder (default: the config's `prior`)")
  p.add_argument("--particles", type=int, default=None, help="number of particles P")
  p.add_argument("--config", default=None,
                 help="config PATH.py[:PRESET] or shipped name (default: the method's default "
                      "config); override keys with --config.KEY=VALUE")
  p.add_argument("--overwrite", action="store_true",
                 help="replace a different run found in --workdir")
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument("--allow-pickle", action="store_true",
                 help="allow loading .bin/.ckpt weights (unpickling runs code: trusted files only)")
  p.add_argument("--stop-after", type=int, default=None,
                 help="stop after this many steps of this call, with a checkpoint (rerun the "
                      "same command to go on)")
  distributed.add_flags(p)
  p.set_defaults(handler=_cmd_generate, takes_config=True)

  p = sub.add_parser("export", help="re-export mesh and turntable from the latest checkpoint")
  p.add_argument("workdir", help="a `jax3d generate` run folder")
  p.add_argument("--level", type=float, default=None,
                 help="density iso-level for the mesh (default: the automatic rule)")
  p.set_defaults(handler=_cmd_export)

  p = sub.add_parser("eval", help="score a run's final meshes against the solids truth")
  p.add_argument("workdir", help="a `jax3d generate` run folder")
  p.add_argument("--resolution", type=int, default=96, help="voxel grid for the metrics")
  p.set_defaults(handler=_cmd_eval)

  p = sub.add_parser("train-prior", help="train the solids prior (resumes from --workdir)")
  p.add_argument("--workdir", required=True, help="run folder (checkpoints, logs, samples)")
  _add_config_args(p, "solids_prior:default")
  p.add_argument("--export-to", default=None,
                 help="where to write the trained diffusers folder "
                      "(default WORKDIR/solids-prior)")
  p.add_argument("--stop-after", type=int, default=None,
                 help="stop (with a checkpoint) after this many steps of this call; "
                      "launch/export_prior_checkpoint.py exports such a run")
  distributed.add_flags(p)
  p.set_defaults(handler=_cmd_train_prior, takes_config=True)
  return parser


@contextlib.contextmanager
def _signals_raise():
  """SIGTERM raises `Interrupted` anywhere in the command (as SIGINT raises
  KeyboardInterrupt); the training loop swaps in its own handler to stop at a step boundary."""
  def handle(signum, frame):
    del frame
    raise Interrupted(signum=signum)
  try:
    old = signal.signal(signal.SIGTERM, handle)
  except ValueError:  # Not the main thread: leave signals alone.
    yield
    return
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, old)


def _error(lines: Sequence[str]) -> int:
  for line in lines:
    print(f"jax3d: error: {line}", file=sys.stderr)
  return EXIT_USER_ERROR


def main(argv: Sequence[str] | None = None) -> int:
  supervisor.adopt()
  with _signals_raise():
    try:
      return _main(argv)
    finally:
      distributed.finish()


def _main(argv: Sequence[str] | None) -> int:
  parser = build_parser()
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    args, extra = parser.parse_known_args(argv)
    args.argv = argv
    overrides = _split_overrides(extra)
    if overrides and not getattr(args, "takes_config", False):
      raise UserError(f"`jax3d {args.command}` takes no --config overrides "
                      f"(got --config.{overrides[0]})")
    if getattr(args, "distributed", False) and supervisor.wanted():
      distributed.validate(args)  # refused here in one line, before a child starts
      return supervisor.run(argv)
    if args.command != "bench" or args.what == "solids":
      # `bench step` and `bench render` report compile times: cold unless JAX has a cache.
      compilation_cache.enable()
    handler: Callable = args.handler
    code = handler(args, overrides)
  except UserError as e:
    return _error(getattr(e, "problems", None) or [str(e)])
  except Interrupted as e:
    print(f"jax3d: {e}", file=sys.stderr)
    return e.exit_code
  except KeyboardInterrupt:
    e = Interrupted(signum=signal.SIGINT)
    print(f"jax3d: {e}", file=sys.stderr)
    return e.exit_code
  except Exception as e:  # pylint: disable=broad-except
    distributed.exit_if_lost_peer(e)
    if not isinstance(e, OSError) or e.errno != errno.ENOSPC:
      raise
    return _error([f"no space left on device writing {e.filename or 'a file'}; free space "
                   f"and rerun the same command to resume (completed checkpoints are kept)"])
  return int(code or 0)


if __name__ == "__main__":
  sys.exit(main())
