"""`jax3d bench prior`: how well a solids prior draws its prompts.

Per prompt (30 colour prompts and 5 colourless ones), DDIM samples scored by non-learned image
checks (`solids.images.image_colour`, `image_shape`); the last row is the total.
"""

from __future__ import annotations

import time

from typing import Any

from jax3d.bench.table import Row

BARS = ("bars: colour_correct >= 0.9 (colour prompts), shape_correct >= 0.8, "
        "distinct_colours >= 4 per colourless prompt (ALL row: the minimum)")


def run(args) -> tuple[list[Row], dict[str, Any]]:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax3d.priors import registry, sampling  # pylint: disable=g-import-not-at-top
  from jax3d.solids import images as checks, scenes  # pylint: disable=g-import-not-at-top

  spec = args.prior or registry.SOLIDS
  t0 = time.perf_counter()
  prior = registry.load_prior(spec)
  jax.block_until_ready(prior.params)
  load_s = time.perf_counter() - t0
  n = 2 if args.quick else args.samples_per_prompt
  steps = 5 if args.quick else args.steps
  scale = prior.default_guidance_scale if args.guidance_scale is None else args.guidance_scale
  settings = {**registry.describe(spec), "prior_load_s": load_s, "samples_per_prompt": n,
              "ddim_steps": steps,
              "guidance_scale": scale, "seed": args.seed, "grid_label": BARS}
  prompts = scenes.colour_prompts() + scenes.colourless_prompts()
  if args.quick:
    prompts = prompts[:2] + prompts[-1:]
  rows, images_by_prompt = [], {}
  for i, prompt in enumerate(prompts):
    images = sampling.ddim_sample(prior, prior.params, jax.random.key(args.seed * 1000 + i),
                                  prior.embed([prompt] * n), prior.uncond(1), steps, scale)
    images_by_prompt[prompt] = np.asarray(images)
  for prompt, images in images_by_prompt.items():
    scene = scenes.parse_prompt(prompt)
    colours = [checks.image_colour(im)[0] for im in images]
    shapes = [checks.image_shape(im) for im in images]
    rows.append({"prompt": prompt, "samples": len(images),
                 "shape_correct": float(np.mean([s == scene.solid for s, _ in shapes])),
                 "shape_iou": float(np.mean([iou for _, iou in shapes])),
                 "colour_correct": (float(np.mean([c == scene.colour for c in colours]))
                                    if scene.colour else None),
                 "distinct_colours": len({c for c in colours if c})})
  coloured = [r for r in rows if r["colour_correct"] is not None]
  colourless = [r for r in rows if r["colour_correct"] is None]
  rows.append({"prompt": "ALL", "samples": sum(r["samples"] for r in rows),
               "shape_correct": float(np.mean([r["shape_correct"] for r in rows])),
               "shape_iou": float(np.mean([r["shape_iou"] for r in rows])),
               "colour_correct": (float(np.mean([r["colour_correct"] for r in coloured]))
                                  if coloured else None),
               "distinct_colours": min((r["distinct_colours"] for r in colourless),
                                       default=None)})
  if args.grid_out:
    from jax3d.export import video  # pylint: disable=g-import-not-at-top
    grid = np.concatenate([video.image_grid(im, ncols=n, pad=1)
                           for im in images_by_prompt.values()], axis=0)
    video.write_png(args.grid_out, grid)
  return rows, settings
