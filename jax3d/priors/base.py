"""The Prior interface: a frozen pytree of weights plus pure functions over it.

Every 2D diffusion prior in jax3d (Stable Diffusion from a diffusers folder, the shipped solids
prior, the exact analytic prior) is a `Prior`. Its weights live in `prior.params` and are passed
*explicitly* to the pure functions `encode`, `decode` and `eps`, so a system can `jit` them with
the params as arguments (and shard or replicate them). Only `embed` reads `prior.params` itself:
it runs on the host, once per distinct prompt string, and memoizes the result.

Conventions: images are NHWC in [0, 1]; the diffusion variable x_t is NHWC with shape
`(B,) + latent_shape`; timesteps are integers in [0, num_train_timesteps); the forward process is
x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε with ᾱ = `alphas_cumprod` (methods never assume a schedule).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

Params = Any
# (params, x (B,h,w,c), t (B,) int, context (B,L,D)) -> ε̂ (B,h,w,c): one unguided model call.
ModelFn = Callable[[Params, jax.Array, jax.Array, jax.Array], jax.Array]
# (params, prompts) -> (N, L, D) conditioning, computed on the host.
TextFn = Callable[[Params, Sequence[str]], Any]
# (params, images (B,H,W,3) in [0,1]) -> x0 (B,h,w,c), and the inverse.
CodecFn = Callable[[Params, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class Prior:
  """A text-conditioned ε-prediction diffusion model behind one interface.

  Instances hash by identity, so a prior can be a static argument of `jax.jit`; its arrays are
  only ever read through the `params` argument of the pure functions (never closed over), except
  `alphas_cumprod`, a small constant.

  Attributes:
    name: a short name for logs ('solids', 'analytic', a folder name).
    params: pytree of all weights (e.g. {'unet', 'text_encoder', 'vae'} for Stable Diffusion).
    alphas_cumprod: (num_train_timesteps,) float32 ᾱ_t.
    resolution: the pixel image size the prior scores (512 for SD 1.x, 32 for the solids prior);
      `encode` resizes its input to this size.
    latent_shape: (h, w, c) of x_t.
    default_guidance_scale: the classifier-free guidance scale to use when none is given.
    latent: whether x_t lives in a VAE latent space (False: pixels in [-1, 1]).
    render_resolution: the image size a renderer should produce for this prior (64 for SD, as
      DreamFusion-SD implementations render 64×64 and upsample; `resolution` for pixel priors).
    text_fn, encode_fn, decode_fn, model_fn: the implementation (see the methods).
  """
  name: str
  params: Params = dataclasses.field(repr=False)
  alphas_cumprod: jax.Array = dataclasses.field(repr=False)
  resolution: int
  latent_shape: tuple[int, int, int]
  default_guidance_scale: float
  text_fn: TextFn = dataclasses.field(repr=False)
  encode_fn: CodecFn = dataclasses.field(repr=False)
  decode_fn: CodecFn = dataclasses.field(repr=False)
  model_fn: ModelFn = dataclasses.field(repr=False)
  latent: bool = False
  render_resolution: int | None = None
  # The view-label schemes (cameras.VIEW_SCHEMES) its text conditioning was trained with; a
  # system refuses view-dependent prompts in any other (they would be out of distribution).
  view_schemes: tuple[str, ...] = ("dreamfusion",)
  # What the network outputs ("epsilon" or "v_prediction"); `model_fn` returns ε̂ either way.
  prediction: str = "epsilon"
  _cache: dict[str, jax.Array] = dataclasses.field(default_factory=dict, init=False,
                                                   repr=False)

  @property
  def num_train_timesteps(self) -> int:
    return int(self.alphas_cumprod.shape[0])

  @property
  def channels(self) -> int:
    return int(self.latent_shape[-1])

  def embed(self, prompts: Sequence[str]) -> jax.Array:
    """(N, L, D) text conditioning of `prompts`; "" is the unconditional embedding.

    Each distinct string (view-suffixed variants like "a red cube, side view" are distinct
    strings) is computed once and memoized on this object: a host-side cache of a deterministic
    function of `self.params`, not state.
    """
    if isinstance(prompts, str):
      raise TypeError("embed takes a sequence of prompts, not one string")
    missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
    if missing:
      new = self.text_fn(self.params, missing)
      for p, e in zip(missing, new):
        self._cache[p] = jnp.asarray(e)
    return jnp.stack([self._cache[p] for p in prompts])

  def uncond(self, n: int) -> jax.Array:
    """(n, L, D): the unconditional (empty prompt) embedding, repeated."""
    e = self.embed([""])
    return jnp.broadcast_to(e, (n,) + e.shape[1:])

  def encode(self, params: Params, images: jax.Array) -> jax.Array:
    """Images (B, H, W, 3) in [0, 1], any H, W -> x0 (B,) + latent_shape; differentiable."""
    chex.assert_rank(images, 4)
    return self.encode_fn(params, images)

  def decode(self, params: Params, x0: jax.Array) -> jax.Array:
    """x0 (B,) + latent_shape -> images (B, resolution, resolution, 3) in [0, 1]."""
    chex.assert_rank(x0, 4)
    return self.decode_fn(params, x0)

  def eps(self, params: Params, x_t: jax.Array, t: jax.Array, cond: jax.Array,
          uncond: jax.Array, guidance_scale: float | jax.Array,
          plain: jax.Array | None = None,
          view_scale: float | None = None) -> jax.Array:
    """Classifier-free-guided noise prediction ε̂ (B, h, w, c).

    ε̂ = ε(x_t, ∅) + s·(ε(x_t, c) − ε(x_t, ∅)), the diffusers convention (Ho & Salimans 2022
    write the same with w = s − 1): s = 1 is the conditional prediction, s = 0 the
    unconditional one. Both are one batched model call on [uncond; cond]. `cond` and `uncond`
    are (B, L, D) or (1, L, D) (broadcast over the batch); `t` is (B,) integer timesteps.

    View guidance (with `plain`, the prompt without its view words, and `view_scale` s_v):
    ε̂ = ε(∅) + s·(ε(plain) − ε(∅)) + s_v·(ε(c) − ε(plain)), nested guidance with a scale per
    condition (InstructPix2Pix, Brooks et al. 2023, Eq. 3) that scales the view words' own
    direction by s_v; one batched call on [uncond; plain; cond]. s_v = s is plain CFG on c.
    s_v 0 or None (a Python number, not traced) turns it off: `plain` is then ignored.
    """
    b = x_t.shape[0]
    chex.assert_shape(x_t, (b,) + tuple(self.latent_shape))
    t = jnp.broadcast_to(jnp.asarray(t), (b,))
    if not view_scale:
      plain = None
    rows = [uncond, cond] if plain is None else [uncond, plain, cond]
    rows = [jnp.broadcast_to(r, (b,) + r.shape[1:]) for r in rows]
    n = len(rows)
    out = self.model_fn(params, jnp.concatenate([x_t] * n), jnp.concatenate([t] * n),
                        jnp.concatenate(rows))
    out = out.astype(x_t.dtype)
    e_uncond, e_cond = out[:b], out[(n - 1) * b:]
    if plain is None:
      return e_uncond + guidance_scale * (e_cond - e_uncond)
    e_plain = out[b:2 * b]
    return (e_uncond + guidance_scale * (e_plain - e_uncond)
            + view_scale * (e_cond - e_plain))


def pixel_encode(images: jax.Array, resolution: int) -> jax.Array:
  """Identity-with-resize for pixel-space priors: [0, 1] at any size -> [-1, 1] at resolution."""
  images = resize(images, resolution)
  return 2.0 * images - 1.0


def pixel_decode(x0: jax.Array) -> jax.Array:
  """[-1, 1] -> [0, 1], clipped (previews)."""
  return jnp.clip(0.5 * (x0 + 1.0), 0.0, 1.0)


def resize(images: jax.Array, resolution: int) -> jax.Array:
  """Bilinear resize of (B, H, W, C) to (B, resolution, resolution, C); a no-op at that size."""
  b, h, w, c = images.shape
  if (h, w) == (resolution, resolution):
    return images
  return jax.image.resize(images, (b, resolution, resolution, c), method="bilinear")


def alphas_cumprod_from_betas(betas: np.ndarray) -> np.ndarray:
  """ᾱ_t = Π_{s≤t} (1 − β_s), in float64, returned as float32."""
  return np.cumprod(1.0 - np.asarray(betas, np.float64)).astype(np.float32)


def betas_for_schedule(schedule: str, num_train_timesteps: int, beta_start: float = 0.00085,
                       beta_end: float = 0.012) -> np.ndarray:
  """The β_t of diffusers' named schedules ('linear', 'scaled_linear', 'squaredcos_cap_v2')."""
  n = num_train_timesteps
  if schedule == "linear":
    return np.linspace(beta_start, beta_end, n, dtype=np.float64)
  if schedule == "scaled_linear":
    return np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64)**2
  if schedule == "squaredcos_cap_v2":
    # Nichol & Dhariwal 2021, Eq. 17: ᾱ(t) = cos²((t/T + 0.008)/1.008 · π/2), β capped at 0.999.
    alpha_bar = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2)**2
    i = np.arange(n, dtype=np.float64)
    return np.minimum(1.0 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999)
  raise ValueError(f"unknown beta schedule {schedule!r}")


def sd_alphas_cumprod(num_train_timesteps: int = 1000) -> np.ndarray:
  """Stable Diffusion's schedule: scaled-linear β from 0.00085 to 0.012 over 1000 steps."""
  return alphas_cumprod_from_betas(
      betas_for_schedule("scaled_linear", num_train_timesteps, 0.00085, 0.012))


__all__ = ["Prior", "pixel_encode", "pixel_decode", "resize", "alphas_cumprod_from_betas",
           "betas_for_schedule", "sd_alphas_cumprod"]
