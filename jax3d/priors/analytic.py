"""The exact prior of a finite image set: a Gaussian mixture's closed-form score, no training.

For images {y_i} (in [-1, 1]) the noisy marginal at step t is the mixture
    p_t(x) = (1/N) Σ_i N(x; √ᾱ_t·y_i, (1−ᾱ_t)·I),
whose ε-prediction (Tweedie's formula, ε̂ = −√(1−ᾱ_t)·∇ log p_t) is
    ε̂(x_t, t) = (x_t − √ᾱ_t·E[y | x_t]) / √(1−ᾱ_t),
    E[y | x_t] = Σ_i w_i y_i,  w = softmax_i(−|x_t − √ᾱ_t·y_i|² / (2(1−ᾱ_t))).
Conditioning on a prompt restricts the mixture to that prompt's images. The conditioning
"embedding" of a prompt is a (1, N) {0, 1} mask over the set (all ones for the empty prompt), so
it is an array that flows through `jit` like a text embedding, and classifier-free guidance
works exactly as for a learned model. This is the reference for testing distillation math:
scores are exact, and DDIM samples converge onto the set's images.

The solids version (`solids_analytic_prior`) holds renders of every `a {colour} {solid}` object.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pathlib
import sys
from typing import Callable, Sequence
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from jax3d import cameras
from jax3d.errors import UserError
from jax3d.priors import base
from jax3d.solids import render as solids_render
from jax3d.solids import scenes

# Scale 1 is the exact conditional distribution of the set; CFG beyond it is extrapolation.
DEFAULT_GUIDANCE_SCALE = 1.0


def mixture_eps(images: jax.Array, alphas_cumprod: jax.Array, x: jax.Array, t: jax.Array,
                mask: jax.Array) -> jax.Array:
  """Exact ε̂ for x (B, h, w, c) at timesteps t (B,) under the mixture over `images` (N, h, w, c)
  restricted by mask (B, N) (nonzero = in the set). Squared distances are summed directly
  (not expanded into dot products) so float32 keeps its precision as 1−ᾱ_t -> 0."""
  b = x.shape[0]
  y = images.reshape(images.shape[0], -1).astype(jnp.float32)
  xf = x.reshape(b, -1).astype(jnp.float32)
  ac = alphas_cumprod[t].astype(jnp.float32)
  a, var = jnp.sqrt(ac)[:, None], (1.0 - ac)[:, None]
  d2 = jnp.sum(jnp.square(xf[:, None, :] - a[:, :, None] * y[None]), axis=-1)  # (B, N)
  logits = jnp.where(mask > 0, -d2 / (2.0 * var), -jnp.inf)
  w = jax.nn.softmax(logits, axis=-1)
  mean = jnp.einsum("bn,np->bp", w, y, precision=jax.lax.Precision.HIGHEST)
  return ((xf - a * mean) / jnp.sqrt(var)).reshape(x.shape)


def analytic_prior(images: np.ndarray | jax.Array, prompt_mask: Callable[[str], np.ndarray],
                   *, alphas_cumprod: np.ndarray | None = None, name: str = "analytic",
                   default_guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                   view_schemes: Sequence[str] = ("dreamfusion",)) -> base.Prior:
  """The exact prior of `images` (N, H, W, 3) in [0, 1], as a pixel-space `Prior` at H×W.

  Args:
    images: the set.
    prompt_mask: prompt -> (N,) bool, the images a (non-empty) prompt denotes; may raise
      UserError for prompts it does not know. The empty prompt is the whole set.
    alphas_cumprod: the schedule (default: Stable Diffusion's scaled-linear β 0.00085..0.012
      over 1000 steps).
    name, default_guidance_scale, view_schemes: as in `Prior`.
  """
  images = jnp.asarray(images, jnp.float32)
  n, h, w, c = images.shape
  if h != w:
    raise ValueError(f"the analytic prior needs square images, got {h}x{w}")
  ac = jnp.asarray(base.sd_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod,
                   jnp.float32)

  def text_fn(params, prompts: Sequence[str]) -> np.ndarray:
    del params
    masks = []
    for p in prompts:
      m = np.ones((n,), bool) if p == "" else np.asarray(prompt_mask(p), bool)
      if m.shape != (n,) or not m.any():
        raise UserError(f"the analytic prior has no images for the prompt {p!r}")
      masks.append(m)
    return np.stack(masks).astype(np.float32)[:, None, :]  # (N_prompts, L=1, D=N)

  def model_fn(params, x, t, context):
    return mixture_eps(params["images"], ac, x, t, context[:, 0, :])

  return base.Prior(
      name=name,
      params={"images": 2.0 * images - 1.0},
      alphas_cumprod=ac,
      resolution=h,
      latent_shape=(h, w, c),
      default_guidance_scale=default_guidance_scale,
      text_fn=text_fn,
      encode_fn=lambda params, imgs: base.pixel_encode(imgs, h),
      decode_fn=lambda params, x0: base.pixel_decode(x0),
      model_fn=model_fn,
      latent=False,
      render_resolution=h,
      view_schemes=tuple(view_schemes),
  )


@functools.partial(jax.jit, static_argnames=("n", "cfg"))
def _cameras_and_views(key: jax.Array, n: int, cfg: cameras.CameraConfig):
  """`n` cameras drawn from `cfg` and their view indices in the dreamfusion and azimuth
  schemes, as one compiled program."""
  cams = cameras.sample(key, n, cfg)
  azimuth, elevation, _ = cameras.to_spherical(cams)
  return (cams, cameras.view_index(azimuth, elevation),
          cameras.view_index(azimuth, elevation, "azimuth"))


def render_solids_set(key: jax.Array, views_per_object: int = 16, resolution: int = 32,
                      supersample: int = 2) -> dict[str, np.ndarray]:
  """Renders every `a {colour} {solid}` object from `views_per_object` random cameras.

  The cameras come from the shared defaults (`cameras.sample`), M per solid and shared by its
  six colours. One batched `render_batch` call renders each (solid, camera) once with a white
  albedo; the coloured images follow exactly because Lambertian shading over a background is
  affine in the albedo: I = albedo·S + BG·(1 − mask), and the white render gives S.

  Returns numpy arrays, solid-major then colour then view (N = 30·M): image (N, r, r, 3) in
  [0, 1], solid (N,), colour (N,) indices into scenes.SOLIDS / COLOURS, view (N,) index into
  cameras.VIEW_LABELS, sector (N,) index into cameras.AZIMUTH_LABELS.
  """
  m, ns, nc = views_per_object, len(scenes.SOLIDS), len(scenes.COLOURS)
  cams, view, sector = jax.tree.map(np.asarray, _cameras_and_views(
      key, ns * m, scenes.camera_config(resolution)))
  # One static solid per call: only its own SDF is traced (a traced index evaluates all five).
  outs = [solids_render.render_batch(
      name, np.ones((m, 3), np.float32), jax.tree.map(lambda a, i=i: a[i * m:(i + 1) * m], cams),
      supersample=supersample) for i, name in enumerate(scenes.SOLIDS)]
  white = np.stack([np.asarray(o["image"]) for o in outs]).reshape(
      ns, 1, m, resolution, resolution, 3)
  background = solids_render.BACKGROUND * (1.0 - np.stack(
      [np.asarray(o["mask"]) for o in outs])).reshape(ns, 1, m, resolution, resolution, 1)
  albedo = scenes.palette().reshape(1, nc, 1, 1, 1, 3)
  image = albedo * (white - background) + background
  view, sector = view.reshape(ns, 1, m), sector.reshape(ns, 1, m)
  grid = np.broadcast_to
  return {
      "image": image.reshape(-1, resolution, resolution, 3).astype(np.float32),
      "solid": grid(np.arange(ns)[:, None, None], (ns, nc, m)).reshape(-1),
      "colour": grid(np.arange(nc)[None, :, None], (ns, nc, m)).reshape(-1),
      "view": grid(view, (ns, nc, m)).reshape(-1),
      "sector": grid(sector, (ns, nc, m)).reshape(-1),
  }


def solids_prompt_mask(data: dict[str, np.ndarray], prompt: str) -> np.ndarray:
  """The images of `data` (from `render_solids_set`) a solids prompt denotes.

  'a {colour} {solid}' is that object; 'a {solid}' is the solid in every palette colour; a view
  suffix (', side view' or ', azimuth 30 view') keeps the images whose camera has that label
  in its scheme (`cameras.view_label`) — or, when
  the set has none (e.g. 'overhead' under the default elevations, which stop at 45°), ignores
  the suffix. Raises UserError (listing the accepted forms) for other prompts.
  """
  scene = scenes.parse_prompt(prompt)
  mask = data["solid"] == scene.solid_index
  if scene.colour is not None:
    mask &= data["colour"] == scenes.COLOURS.index(scene.colour)
  if scene.view in cameras.AZIMUTH_LABELS:
    in_view = mask & (data["sector"] == cameras.AZIMUTH_LABELS.index(scene.view))
    mask = in_view if in_view.any() else mask
  elif scene.view is not None:
    in_view = mask & (data["view"] == cameras.VIEW_LABELS.index(scene.view))
    mask = in_view if in_view.any() else mask
  return mask


def cached_solids_set(key: jax.Array, views_per_object: int, resolution: int = 32,
                      supersample: int = 2, cache: pathlib.Path | None = None
                      ) -> dict[str, np.ndarray]:
  """`render_solids_set`, kept as an .npz in the folder `cache` (the prior cache) when given.

  The file is named by a hash of the arguments, the key and the source of every module the
  renders depend on, so a changed renderer or camera distribution renders afresh. A cache that
  cannot be read or written is passed over: the set is then rendered as without one.
  """
  if cache is None:
    return render_solids_set(key, views_per_object, resolution, supersample)
  digest = hashlib.sha256(
      f"jax3d analytic solids set|{views_per_object}|{resolution}|{supersample}|".encode())
  digest.update(np.asarray(jax.random.key_data(key)).tobytes())
  for module in (solids_render, scenes, cameras, sys.modules[__name__]):
    digest.update(pathlib.Path(module.__file__).read_bytes())
  path = cache / f"analytic-solids-{digest.hexdigest()[:32]}.npz"
  try:
    with np.load(path) as f:
      return {name: f[name] for name in f.files}
  except (OSError, ValueError, zipfile.BadZipFile):
    pass
  data = render_solids_set(key, views_per_object, resolution, supersample)
  tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
  try:
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(tmp, **data)
    os.replace(tmp, path)  # Readers see the whole file or none.
  except OSError:
    with contextlib.suppress(OSError):
      tmp.unlink()
  return data


def solids_analytic_prior(key: jax.Array, views_per_object: int = 64, resolution: int = 32,
                          supersample: int = 2, cache: pathlib.Path | None = None,
                          **kwargs) -> base.Prior:
  """The exact prior over solids renders (see `render_solids_set`), for solids prompts only;
  the renders are kept in the folder `cache` when given (`cached_solids_set`)."""
  data = cached_solids_set(key, views_per_object, resolution, supersample, cache)
  return analytic_prior(data["image"], lambda p: solids_prompt_mask(data, p),
                        view_schemes=cameras.VIEW_SCHEMES, **kwargs)


__all__ = ["analytic_prior", "mixture_eps", "render_solids_set", "cached_solids_set",
           "solids_prompt_mask", "solids_analytic_prior"]
