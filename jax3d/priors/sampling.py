"""DDIM sampling from any Prior, and the `jax3d sample` command.

DDIM with η = 0 (Song et al. 2021, Eq. 12): from the guided ε̂ at step t,
    x̂_0 = (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t,    x_{t'} = √ᾱ_{t'}·x̂_0 + √(1−ᾱ_{t'})·ε̂,
over timesteps spaced like diffusers' "leading" spacing (t_k = k·⌊T/S⌋ + offset, descending);
after the last step ᾱ_{t'} = 1, so the result is x̂_0. The loop is one `lax.scan` inside `jit`.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from jax3d import files
from jax3d.errors import UserError
from jax3d.export import video
from jax3d.priors import base


def leading_timesteps(num_train_timesteps: int, num_steps: int,
                      steps_offset: int = 0) -> np.ndarray:
  """Descending timesteps k·⌊T/S⌋ + offset, k = S−1 … 0 (diffusers' "leading" spacing)."""
  if not 1 <= num_steps <= num_train_timesteps:
    raise UserError(f"the number of sampling steps must be in 1..{num_train_timesteps}, "
                    f"not {num_steps}")
  ratio = num_train_timesteps // num_steps
  return (np.arange(num_steps)[::-1] * ratio + steps_offset).astype(np.int32)


def ddim_loop(eps_fn, noise: jax.Array, alphas_cumprod: jax.Array, num_steps: int,
              steps_offset: int = 0, clip_sample: bool = False) -> jax.Array:
  """x̂_0 from x_T = `noise` by DDIM over any guided `eps_fn(x_t, t (B,)) -> ε̂` (traceable)."""
  num_train = alphas_cumprod.shape[0]
  ts = leading_timesteps(num_train, num_steps, steps_offset)
  prev = ts - num_train // num_steps
  b = noise.shape[0]

  def step(x, tt):
    t, t_prev = tt
    e = eps_fn(x, jnp.full((b,), t)).astype(jnp.float32)
    a_t = alphas_cumprod[t]
    a_prev = jnp.where(t_prev >= 0, alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0)
    x0 = (x - jnp.sqrt(1.0 - a_t) * e) / jnp.sqrt(a_t)
    if clip_sample:
      x0 = jnp.clip(x0, -1.0, 1.0)
      e = (x - jnp.sqrt(a_t) * x0) / jnp.sqrt(1.0 - a_t)
    return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * e, None

  x, _ = jax.lax.scan(step, noise, (jnp.asarray(ts), jnp.asarray(prev)))
  return x


@functools.partial(jax.jit, static_argnames=("prior", "num_steps", "steps_offset",
                                             "clip_sample"))
def _ddim(prior: base.Prior, params, noise, cond, uncond, guidance_scale, num_steps: int,
          steps_offset: int, clip_sample: bool):
  eps_fn = lambda x, t: prior.eps(params, x, t, cond, uncond, guidance_scale)
  return ddim_loop(eps_fn, noise, prior.alphas_cumprod, num_steps, steps_offset, clip_sample)


def ddim_sample(prior: base.Prior, params, key: jax.Array, cond: jax.Array,
                uncond: jax.Array | None = None, num_steps: int = 50,
                guidance_scale: float | None = None, *, steps_offset: int = 0,
                clip_sample: bool | None = None, decode: bool = True) -> jax.Array:
  """Draws cond.shape[0] samples with deterministic DDIM and classifier-free guidance.

  Args:
    prior, params: the prior and its params (`prior.params` or a transformed copy).
    key: PRNG key of the initial noise x_T ~ N(0, I).
    cond: (N, L, D) conditioning, one row per sample (e.g. `prior.embed([prompt] * n)`).
    uncond: (N or 1, L, D); default `prior.uncond(1)`.
    num_steps: DDIM steps.
    guidance_scale: CFG scale s in ε_u + s·(ε_c − ε_u); default the prior's own.
    steps_offset: added to every timestep (diffusers' scheduler option; SD configs use 1).
    clip_sample: clip x̂_0 to [-1, 1] each step; default on for pixel priors, off for latent.
    decode: return images in [0, 1] (default) rather than x_0.

  Returns:
    (N, resolution, resolution, 3) images in [0, 1] (or x_0 (N,) + latent_shape).
  """
  if uncond is None:
    uncond = prior.uncond(1)
  if guidance_scale is None:
    guidance_scale = prior.default_guidance_scale
  if clip_sample is None:
    clip_sample = not prior.latent
  leading_timesteps(prior.num_train_timesteps, num_steps, steps_offset)  # Validates.
  n = cond.shape[0]
  noise = jax.random.normal(key, (n,) + tuple(prior.latent_shape), jnp.float32)
  x0 = _ddim(prior, params, noise, cond, uncond, jnp.float32(guidance_scale),
             num_steps=num_steps, steps_offset=steps_offset, clip_sample=bool(clip_sample))
  return _decode(prior, params, x0) if decode else x0


@functools.partial(jax.jit, static_argnames=("prior",))
def _decode(prior: base.Prior, params, x0):
  return prior.decode(params, x0)


def sample_command(args) -> int:
  """`jax3d sample PROMPT --prior … --num N --steps S --guidance-scale G --seed S --dtype D
  [--allow-pickle] --out grid.png`: draws N images with DDIM and writes a grid PNG."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from jax3d.priors import registry  # pylint: disable=g-import-not-at-top
  from jax3d.solids import scenes  # pylint: disable=g-import-not-at-top

  if args.num < 1:
    raise UserError(f"--num must be at least 1, not {args.num}")
  if args.steps < 1:
    raise UserError(f"--steps must be at least 1, not {args.steps}")
  out = os.path.abspath(args.out)
  if os.path.isdir(out):
    raise UserError(f"--out {args.out} is a folder; give the path of a .png file")
  if not os.path.isdir(os.path.dirname(out)):
    raise UserError(f"the folder of --out {args.out} does not exist")
  if not args.prompt.strip():
    raise UserError("the prompt is empty; give a text prompt such as 'a red cube'")
  if registry.is_solids_prior(args.prior):
    scenes.parse_prompt(args.prompt)  # The solids priors know solids prompts only.
  prior = registry.load_prior(args.prior, dtype=args.dtype, allow_pickle=args.allow_pickle)
  if args.steps > prior.num_train_timesteps:
    raise UserError(f"--steps must be at most {prior.num_train_timesteps}, not {args.steps}")
  cond = prior.embed([args.prompt] * args.num)
  gs = prior.default_guidance_scale if args.guidance_scale is None else args.guidance_scale
  images = ddim_sample(prior, prior.params, jax.random.key(args.seed), cond, prior.uncond(1),
                       num_steps=args.steps, guidance_scale=gs)
  n = images.shape[0]
  grid = video.image_grid(np.asarray(images), ncols=int(math.ceil(math.sqrt(n))), pad=2)
  with files.atomic_file(out, "wb") as f:
    Image.fromarray(grid).save(f, format="PNG")
  print(f"wrote {args.num} sample(s) of {args.prompt!r} from the {prior.name} prior to "
        f"{args.out}")
  return 0


__all__ = ["ddim_sample", "ddim_loop", "leading_timesteps", "sample_command"]
