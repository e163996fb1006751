"""LoRA adapters over a diffusion UNet's attention projections, and a camera embedding.

LoRA (Hu et al. 2022, Eq. 3) adds a rank-r update to a projection: with Flax's kernel layout
(d_in, d_out), h = x W becomes h = x W + s (x A) B, A (d_in, r), B (r, d_out). As diffusers
does, A starts N(0, 1/r²) and B at zero, so an untrained adapter leaves the network exactly as
it was; s is the scale (α/r; 1 by default). Adapters sit on every attention layer's query,
key, value and output projections (self- and cross-attention: `attn1`, `attn2`) in the down,
mid and up blocks. The pretrained weights are never changed: the adapters are a separate
pytree, applied either *merged* (W + s A B, computed inside the jitted call) or *unmerged*
(the extra term added to each projection's output through `flax.linen.intercept_methods`).

ProlificDreamer conditions its LoRA UNet on the camera: the flattened 4×4 camera-to-world
matrix through Linear(16, d) – SiLU – Linear(d, d), d the time-embedding width, added to the
UNet's time embedding (`camera_embedding`; the adding is `priors.diffusers`' business).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from jax3d.errors import UserError

ATTENTIONS = ("attn1", "attn2")
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out_0")


def target_paths(unet_params: Any) -> list[tuple[str, ...]]:
  """The module paths (e.g. ('mid_block', ..., 'attn2', 'to_v')) of every attention
  projection kernel in a UNet's params, in sorted order."""
  flat = traverse_util.flatten_dict(unet_params)
  return sorted(path[:-1] for path in flat
                if path[-1] == "kernel" and len(path) >= 3 and path[-2] in PROJECTIONS
                and path[-3] in ATTENTIONS)


def init(key: jax.Array, unet_params: Any, rank: int) -> dict:
  """Adapters {module path...: {'a': (d_in, r), 'b': (r, d_out)}} as a nested dict that mirrors
  the UNet's params; A ~ N(0, 1/r²), B = 0."""
  if rank < 1:
    raise UserError(f"LoRA rank must be >= 1, got {rank}")
  paths = target_paths(unet_params)
  if not paths:
    raise UserError("this prior's network has no attention projections (attn1/attn2 to_q, "
                    "to_k, to_v, to_out_0) to attach LoRA adapters to; VSD needs a UNet prior "
                    "with attention layers")
  flat = traverse_util.flatten_dict(unet_params)
  out = {}
  for i, path in enumerate(paths):
    d_in, d_out = flat[path + ("kernel",)].shape
    a = jax.random.normal(jax.random.fold_in(key, i), (d_in, rank), jnp.float32) / rank
    out[path + ("a",)] = a
    out[path + ("b",)] = jnp.zeros((rank, d_out), jnp.float32)
  return traverse_util.unflatten_dict(out)


def merge(unet_params: Any, adapters: dict, scale: float = 1.0) -> Any:
  """The UNet's params with every adapted kernel replaced by W + s A B (a new tree)."""
  flat = dict(traverse_util.flatten_dict(unet_params))
  for path, ab in _adapters(adapters):
    w = flat[path + ("kernel",)]
    flat[path + ("kernel",)] = (w + scale * (ab["a"] @ ab["b"])).astype(w.dtype)
  return traverse_util.unflatten_dict(flat)


@contextlib.contextmanager
def unmerged(adapters: dict, scale: float = 1.0) -> Iterator[None]:
  """Inside, each adapted `nn.Dense` returns x W + b + s (x A) B (modules matched by their
  scope path below the model's root)."""
  by_path = dict(_adapters(adapters))

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, nn.Dense):
      return out
    ab = by_path.get(tuple(module.scope.path))
    if ab is None:
      return out
    x = args[0]
    return out + (scale * ((x @ ab["a"].astype(x.dtype)) @ ab["b"].astype(x.dtype)))
  with nn.intercept_methods(interceptor):
    yield


def _adapters(adapters: dict) -> list[tuple[tuple[str, ...], dict]]:
  flat = traverse_util.flatten_dict(adapters)
  return [(path[:-1], {"a": flat[path], "b": flat[path[:-1] + ("b",)]})
          for path in sorted(flat) if path[-1] == "a"]


def lora_eps(prior, params: Any, trained: dict, x_t: jax.Array, t: jax.Array,
             cond: jax.Array, c2w: jax.Array, scale: float = 1.0,
             merged: bool = True) -> jax.Array:
  """ε̂ of the LoRA network: the prior's UNet with `trained['lora']` adapters and
  camera_embedding(`trained['camera']`, c2w) added to its time embedding, conditional on
  `cond` (no CFG: ProlificDreamer evaluates this branch at scale 1). `params` are the
  prior's (pretrained) params; x_t (B, h, w, c), t (B,), cond (B, L, D), c2w (B, 4, 4)."""
  from jax3d.priors import diffusers as diffusers_prior  # pylint: disable=g-import-not-at-top
  offset = camera_embedding(trained["camera"], c2w)
  with diffusers_prior.time_embedding_offset(offset):
    if merged:
      adapted = dict(params, unet=merge(params["unet"], trained["lora"], scale))
      return prior.model_fn(adapted, x_t, t, cond)
    with unmerged(trained["lora"], scale):
      return prior.model_fn(params, x_t, t, cond)


def init_trained(key: jax.Array, prior, rank: int) -> dict:
  """{'lora': adapters, 'camera': camera MLP} for a diffusers UNet prior."""
  from jax3d.priors import diffusers as diffusers_prior  # pylint: disable=g-import-not-at-top
  unet = prior.params.get("unet") if isinstance(prior.params, dict) else None
  if unet is None:
    raise UserError(f"the {prior.name} prior has no UNet network to attach LoRA adapters to "
                    f"(VSD trains a LoRA copy of the prior's UNet); use a network prior such "
                    f"as 'solids' or a Stable Diffusion folder")
  k_lora, k_camera = jax.random.split(key)
  return {"lora": init(k_lora, unet, rank),
          "camera": camera_init(k_camera, diffusers_prior.time_embedding_width(unet))}


# ---- camera conditioning ----

def camera_init(key: jax.Array, width: int) -> dict:
  """Linear(16, d) – SiLU – Linear(d, d) params, d = `width` (PyTorch's default Linear init:
  U(±1/√fan_in) for kernel and bias)."""
  keys = jax.random.split(key, 4)

  def uniform(k, shape, fan_in):
    bound = 1.0 / jnp.sqrt(fan_in)
    return jax.random.uniform(k, shape, jnp.float32, -bound, bound)
  return {"linear_1": {"kernel": uniform(keys[0], (16, width), 16),
                       "bias": uniform(keys[1], (width,), 16)},
          "linear_2": {"kernel": uniform(keys[2], (width, width), width),
                       "bias": uniform(keys[3], (width,), width)}}


def camera_embedding(params: dict, c2w: jax.Array) -> jax.Array:
  """(B, 4, 4) camera-to-world matrices -> (B, d) embeddings."""
  x = c2w.reshape(c2w.shape[0], 16).astype(jnp.float32)
  h = jax.nn.silu(x @ params["linear_1"]["kernel"] + params["linear_1"]["bias"])
  return h @ params["linear_2"]["kernel"] + params["linear_2"]["bias"]


__all__ = ["target_paths", "init", "merge", "unmerged", "camera_init", "camera_embedding",
           "lora_eps", "init_trained", "ATTENTIONS", "PROJECTIONS"]
