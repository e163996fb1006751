"""Stable Diffusion (and the shipped solids prior) from a local folder in diffusers layout.

The folder holds `model_index.json`, `unet/`, `text_encoder/`, `tokenizer/`, `scheduler/` and,
for latent models, `vae/`; a folder without `vae/` is a pixel-space prior (x_t is the RGB image
in [-1, 1]) — the shipped solids prior is one, loaded by this same code. Weights are read from
Flax `*.msgpack` or PyTorch-layout `*.safetensors` and converted without torch: the model's
parameter shapes come from `jax.eval_shape` of its initializer, the arrays from disk, and the
key/shape check is strict (a config that does not match its weights is an error, never a silent
random init). Pickle files (`.bin`, `.ckpt`, `.pt`) can run code when loaded, so they are
refused unless the caller passes `allow_pickle=True` (and then need torch).

Latent models: `encode` resizes its input (any H, W) bilinearly to `resolution` (512 for SD 1.x)
and encodes with the VAE, using the posterior *mean* times the VAE's scaling factor (no key
needed, so `encode` stays a pure function of the image). Renderers should produce
`prior.render_resolution` images: 64×64 for latent models, upsampled to 512 inside `encode`, as
the DreamFusion-SD implementations (stable-dreamfusion, threestudio) do — rendering at 512 costs
64× more rays and the VAE sees no more detail than a 64-pixel NeRF render holds anyway.

All diffusers/transformers imports of jax3d live in `jax3d.priors`.
"""

from __future__ import annotations

from concurrent import futures
import contextlib
import hashlib
import json
import os
import pathlib
import re
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from flax import traverse_util

from jax3d import cache_paths
from jax3d import cameras
from jax3d.errors import UserError
from jax3d.priors import _quiet  # noqa: F401  (silences the Flax deprecation notices; first)
from jax3d.priors import base

# pylint: disable=g-import-not-at-top,g-bad-import-order
import diffusers
from diffusers.models import attention_flax
import transformers
# pylint: enable=g-import-not-at-top,g-bad-import-order

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
SD_RENDER_RESOLUTION = 64
DEFAULT_GUIDANCE_SCALE = 7.5
DEFAULT_VAE_SCALING_FACTOR = 0.18215
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
# File names diffusers and transformers write; preferred when a folder holds several files.
CANONICAL_WEIGHTS = ("diffusion_flax_model.msgpack", "flax_model.msgpack",
                     "diffusion_pytorch_model.safetensors", "model.safetensors",
                     "diffusion_pytorch_model.bin", "pytorch_model.bin")
# Buffers PyTorch checkpoints carry that are not parameters of the Flax models.
IGNORED_KEYS = ("position_ids",)
_REQUIRED = ("unet", "text_encoder", "tokenizer", "scheduler")
# How a UNet computes: as PyTorch diffusers (exact GELU, eps 1e-6 in Transformer2D) or as the
# diffusers Flax classes; model_index.json's jax3d.numerics, else by the weights' format.
NUMERICS = ("pytorch", "flax")
# Where converted weights are kept (Flax names and layout, memory-mapped on later loads):
# $JAX3D_PRIOR_CACHE, else $XDG_CACHE_HOME/jax3d/priors (~/.cache/jax3d/priors); "off": none.
CACHE_ENV = cache_paths.PRIOR_ENV
CACHE_OFF = cache_paths.OFF
CACHE_FORMAT = 1
# Byte alignment of the arrays in cache files (XLA:CPU's for using host memory in place).
ALIGNMENT = 64
# Host-to-device copies run on this many threads: the transposing copy releases the GIL, and
# an SD v1.5 UNet's goes from 3.3 s to 2.0 s on 2 cores (docs/results.md, "Loading").
TRANSFER_THREADS = 2
TORCH_TRANSFORMER_NORM_EPS = 1e-6


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  text = text if len(text) < 300 else text[:297] + "..."
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  if not path.is_file():
    raise UserError(f"{path} is missing")
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path}: {_one_line(e)}") from None
  if not isinstance(data, dict):
    raise UserError(f"{path} is not a JSON object")
  return data


def resolve_dtype(dtype: str | Any) -> Any:
  """'float32' | 'bfloat16' (or the jnp dtype) -> the jnp dtype."""
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
    raise UserError(f"unsupported dtype {dtype}; use float32 or bfloat16")
  return dtype


def _cast(x: Any, dtype: Any) -> np.ndarray:
  x = np.asarray(x)
  if np.issubdtype(x.dtype, np.floating) or x.dtype == jnp.bfloat16:
    return x.astype(dtype, copy=False)
  return x


def cast_floating(tree: Any, dtype: Any) -> Any:
  """Every floating-point leaf of a pytree cast to `dtype` (diffusers' `to_bf16` is broken on
  jax 0.10), integer leaves left alone, in NumPy, then put on the default device in one
  `device_put` (a per-leaf `jnp.asarray` costs a dispatch per array)."""
  return jax.device_put(jax.tree.map(lambda x: _cast(x, dtype), tree))


def put_async(pool: futures.Executor, tree: Any, dtype: Any) -> Callable[[], Any]:
  """Starts `cast_floating(tree, dtype)` as `TRANSFER_THREADS` interleaved shares of the
  leaves on `pool`; returns the function that waits for it and gives the tree."""
  leaves, treedef = jax.tree.flatten(tree)
  parts = [pool.submit(cast_floating, leaves[i::TRANSFER_THREADS], dtype)
           for i in range(TRANSFER_THREADS)]

  def result():
    shares = [part.result() for part in parts]
    out = [None] * len(leaves)
    for i, share in enumerate(shares):
      out[i::TRANSFER_THREADS] = share
    return jax.tree.unflatten(treedef, out)
  return result


# ---------------------------------------------------------------------------------------------
# Weight files.


def find_weight_files(folder: pathlib.Path, allow_pickle: bool = False) -> list[pathlib.Path]:
  """The weight file(s) of one component folder: msgpack, else safetensors, else (only with
  `allow_pickle`) a pickle. Several candidates resolve to the canonical diffusers/transformers
  name, or to the shards an `*.index.json` lists."""
  files = sorted(p for p in folder.iterdir() if p.is_file())
  groups = ([p for p in files if p.suffix == ".msgpack"],
            [p for p in files if p.suffix == ".safetensors"])
  pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
  for group in groups:
    if group:
      return _pick(folder, group)
  if pickles:
    if not allow_pickle:
      raise UserError(
          f"{folder} has only pickle weights ({', '.join(p.name for p in pickles)}), which can "
          f"run code when loaded; convert them to .safetensors, or pass --allow-pickle "
          f"(allow_pickle=True) if you trust the files")
    return _pick(folder, pickles)
  raise UserError(f"{folder} has no weights (*.safetensors or *.msgpack)")


def _pick(folder: pathlib.Path, group: list[pathlib.Path]) -> list[pathlib.Path]:
  if len(group) == 1:
    return group
  for name in CANONICAL_WEIGHTS:
    if (folder / name).is_file() and folder / name in group:
      return [folder / name]
  suffix = group[0].suffix
  for index in sorted(folder.glob(f"*{suffix}.index.json")):
    weight_map = _read_json(index).get("weight_map", {})
    shards = sorted({folder / str(v) for v in weight_map.values()})
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
      raise UserError(f"{index} lists shard(s) that are missing: {', '.join(missing)}")
    if shards:
      return shards
  raise UserError(f"{folder} has several weight files ({', '.join(p.name for p in group)}) and "
                  f"none is the canonical one; keep one")


# safetensors' dtype names (https://huggingface.co/docs/safetensors, "Format").
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "BF16": jnp.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
                       "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _read_safetensors(path: pathlib.Path) -> tuple[dict[str, np.ndarray], str]:
  """(name -> array, the file's `format` metadata) with every array a view of the file mapped
  copy-on-write: nothing is read until used, and nothing written reaches the file (an aligned
  view put on a CPU device is used in place, and XLA may write into buffers it is given).

  The layout: an 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape,
  data_offsets: [begin, end]}, "__metadata__": {...}}, then the data, offsets relative to it.
  """
  def bad(why: str) -> UserError:
    return UserError(f"cannot read {path}: the file is corrupted or truncated ({why})")
  size = path.stat().st_size
  try:
    with open(path, "rb") as f:
      n = int.from_bytes(f.read(8), "little")
      if size < 8 or not 2 <= n <= size - 8:
        raise bad(f"header length {n} in a file of {size} bytes")
      header = json.loads(f.read(n))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise bad(_one_line(e)) from None
  if not isinstance(header, dict):
    raise bad("the header is not a JSON object")
  meta = header.pop("__metadata__", None) or {}
  data_size = size - 8 - n
  data = np.memmap(path, dtype=np.uint8, mode="c", offset=8 + n) if data_size else None
  arrays = {}
  for name, info in header.items():
    try:
      dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
      shape = tuple(int(d) for d in info["shape"])
      begin, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
      raise bad(f"entry {name!r} is not a known dtype, shape and offsets") from None
    count = int(np.prod(shape, dtype=np.int64))
    if not 0 <= begin <= end <= data_size or end - begin != count * dtype.itemsize:
      raise bad(f"{name!r} needs bytes {begin}..{end} of {data_size}")
    arrays[name] = (np.frombuffer(data, dtype, count, begin).reshape(shape) if count else
                    np.zeros(shape, dtype))
  return arrays, (meta.get("format", "pt") if isinstance(meta, dict) else "pt")


def _read_msgpack(path: pathlib.Path) -> dict[tuple[str, ...], Any]:
  try:
    with open(path, "rb") as f:
      state = serialization.msgpack_restore(f.read())
  except Exception as e:  # pylint: disable=broad-except  (msgpack raises many types)
    raise UserError(f"cannot read {path}: the file is corrupted or truncated "
                    f"({_one_line(e)})") from None
  if not isinstance(state, dict):
    raise UserError(f"cannot read {path}: it does not hold a tree of named arrays")
  return traverse_util.flatten_dict(state)


def _read_pickle(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(f"loading the pickle weights {path} needs torch, which is not installed; "
                    f"convert them to .safetensors instead") from None
  try:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"cannot read {path}: {_one_line(e)}") from None
  state = state.get("state_dict", state) if isinstance(state, dict) else state
  if not isinstance(state, dict):
    raise UserError(f"cannot read {path}: it does not hold a state dict")
  return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy()
          for k, v in state.items() if hasattr(v, "numpy")}


# diffusers' Flax modules name list items `blocks_0` where PyTorch writes `blocks.0`.
_LIST_ITEM = re.compile(r"(\w+)\.(\d+)")
# The Flax VAE's attention names its projections as the old PyTorch VAE did.
_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out_0": "proj_attn"}


def pytorch_to_flax(pt: dict[str, np.ndarray], flat_shapes: dict[tuple[str, ...], Any],
                    library: str, prefix: str = "") -> dict[tuple[str, ...], np.ndarray]:
  """A PyTorch state dict as the flat Flax param dict `flat_shapes` describes, in NumPy.

  Names: diffusers writes list items `down_blocks_0` (PyTorch: `down_blocks.0`) and the VAE's
  attention projections `query`, `key`, `value`, `proj_attn`; transformers keeps `layers/0`
  and adds or drops its model `prefix` to match. Arrays: Linear weights
  transposed, Conv weights OIHW -> HWIO, norm weights -> `scale`, embedding tables ->
  `embedding`, biases as they are (the rules of the diffusers and transformers converters,
  without a per-array device round trip; transposes stay NumPy views). Names with no place in
  `flat_shapes` are kept as they are, for the strict check to report.
  """
  def placed(key):
    if key in flat_shapes:
      return key
    if prefix and (prefix,) + key in flat_shapes:
      return (prefix,) + key
    if prefix and key[:1] == (prefix,) and key[1:] in flat_shapes:
      return key[1:]
    return None

  flat = {}
  for name, array in pt.items():
    key = tuple((_LIST_ITEM.sub(r"\1_\2", name) if library == "diffusers" else name).split("."))
    base, last = key[:-1], key[-1]
    target, value = key, array
    attention = _ATTENTION_NAMES.get(base[-1]) if base else None
    if attention and placed(base[:-1] + (attention, "kernel" if last == "weight" else last)):
      target = base[:-1] + (attention, "kernel" if last == "weight" else last)
      value = array.T
    elif last in ("weight", "gamma"):
      if array.ndim == 1 and placed(base + ("scale",)):
        target = base + ("scale",)
      elif placed(base + ("embedding",)):
        target = base + ("embedding",)
      else:
        target = base + ("kernel",)
        if array.ndim == 4:
          value = array.transpose(2, 3, 1, 0)
        elif array.ndim == 2:
          value = array.T
    elif last in ("bias", "beta"):
      target = base + ("bias",)
    flat[placed(target) or target] = value
  return flat


def load_state(folder: pathlib.Path, shapes: Any, library: str, allow_pickle: bool = False,
               base_model_prefix: str = "") -> dict[str, Any]:
  """Reads a component's weights and checks them against the `shapes` tree of its config
  (or a function that returns it).

  `library` is 'diffusers' (UNet, VAE) or 'transformers' (CLIP): how `pytorch_to_flax` names
  PyTorch weights. Returns the nested param dict with NumPy leaves in their stored dtype.
  """
  return _load_state(folder, shapes, library, allow_pickle, base_model_prefix)[0]


def _load_state(folder, shapes, library, allow_pickle=False, base_model_prefix=""):
  """`load_state`, and the cache file to write (None when read from it or caching is off)."""
  paths = find_weight_files(folder, allow_pickle)
  # Flax msgpack weights are stored as they are used: nothing to convert, nothing to cache.
  cached = None if paths[0].suffix == ".msgpack" else cache_file(folder, paths)
  if cached is not None and cached.is_file():
    try:
      arrays, _ = _read_safetensors(cached)
      return traverse_util.unflatten_dict(
          {tuple(k.split(".")): v for k, v in arrays.items()}), None
    except UserError:
      pass  # a damaged cache entry is rewritten below
  flat_shapes = traverse_util.flatten_dict(shapes() if callable(shapes) else shapes)
  if paths[0].suffix == ".msgpack":
    if len(paths) > 1:
      raise UserError(f"{folder}: sharded msgpack weights are not supported")
    flat = _read_msgpack(paths[0])
  else:
    pt: dict[str, np.ndarray] = {}
    fmt = "pt"
    for path in paths:
      if path.suffix == ".safetensors":
        arrays, fmt = _read_safetensors(path)
      else:
        arrays = _read_pickle(path)
      pt.update(arrays)
    if not pt:
      raise UserError(f"{paths[0]} holds no arrays")
    if fmt == "flax":  # A Flax model saved as safetensors: keys are the flattened Flax paths.
      flat = {tuple(k.split(".")): v for k, v in pt.items()}
    else:
      flat = pytorch_to_flax(pt, flat_shapes, library, base_model_prefix)
  _check_state(folder, flat, flat_shapes)
  return traverse_util.unflatten_dict({k: flat[k] for k in flat_shapes}), cached


def cache_dir() -> pathlib.Path | None:
  """The prior cache's folder: $JAX3D_PRIOR_CACHE, else $XDG_CACHE_HOME/jax3d/priors (default
  ~/.cache/jax3d/priors); None when $JAX3D_PRIOR_CACHE is "off"."""
  return cache_paths.prior_folder()


def cache_file(folder: pathlib.Path, weight_files: Sequence[pathlib.Path]
               ) -> pathlib.Path | None:
  """Where the prior cache keeps this component's weights in Flax names and layout (None when
  it is off): keyed by its config.json and its weight files' paths, sizes and modification
  times, so an edited folder misses. A hit is read memory-mapped with no conversion and no
  shape check (it was checked when written)."""
  root = cache_dir()
  if root is None:
    return None
  digest = hashlib.sha256(f"jax3d prior cache {CACHE_FORMAT}\n".encode())
  digest.update((folder / "config.json").read_bytes())
  for path in weight_files:
    st = path.stat()
    digest.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
  return root / f"{digest.hexdigest()[:40]}.safetensors"


def write_safetensors(path: pathlib.Path, arrays: dict[str, Any],
                      metadata: dict[str, str] | None = None) -> None:
  """`arrays` as a safetensors file (the layout `_read_safetensors` reads), written array by
  array from their own buffers: no second copy of the whole file in memory.

  The data starts on a multiple of ALIGNMENT bytes and arrays whose sizes are multiples of it
  come first (the format allows no gaps), so those (every large SD array) stay aligned in a
  memory map, which lets XLA:CPU use them in place: `device_put` of an aligned, memory-mapped
  array copies nothing.
  """
  names = {v: k for k, v in _SAFETENSORS_DTYPES.items()}
  header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
  contiguous = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
  order = sorted(contiguous, key=lambda name: contiguous[name].nbytes % ALIGNMENT != 0)
  offset = 0
  for name in order:
    a = contiguous[name]
    header[name] = {"dtype": names[a.dtype.type], "shape": list(a.shape),
                    "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-(8 + len(text)) % ALIGNMENT)
  with open(path, "wb") as f:
    f.write(len(text).to_bytes(8, "little"))
    f.write(text)
    for name in order:
      f.write(memoryview(contiguous[name].reshape(-1).view(np.uint8)))


def _write_cache(path: pathlib.Path, tree: Any) -> None:
  """`tree` (on device) as a Flax-layout safetensors file at `path`, atomically; skipped
  quietly when the disk refuses (the cache is an optimisation)."""
  flat = {".".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}
  tmp = path.with_name(path.name + f".tmp{os.getpid()}")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(tmp, flat, {"format": "flax"})
    os.replace(tmp, path)
  except OSError:
    tmp.unlink(missing_ok=True)


def _check_state(folder: pathlib.Path, flat: dict, flat_shapes: dict) -> None:
  missing = sorted(k for k in flat_shapes if k not in flat)
  unexpected = sorted(k for k in flat if k not in flat_shapes and k[-1] not in IGNORED_KEYS)
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"{len(missing)} array(s) missing, e.g. {'.'.join(missing[0])}")
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected, e.g. {'.'.join(map(str, unexpected[0]))}")
    raise UserError(f"the weights in {folder} do not match its config.json: "
                    f"{'; '.join(parts)}")
  for k, spec in flat_shapes.items():
    shape = tuple(getattr(flat[k], "shape", ()))
    if shape != tuple(spec.shape):
      raise UserError(f"the weights in {folder} do not match its config.json: "
                      f"{'.'.join(k)} has shape {shape}, the config implies {tuple(spec.shape)}")


def random_params(shapes: Any, seed: int, dtype) -> Any:
  """Seeded weights for a param shape tree, made on the default device in `dtype` by one jitted
  function: kernels uniform with variance 1/fan_in (fan_in = every axis but the last: HWI of
  an HWIO kernel; PyTorch's default initialisers are uniform too), embedding tables with
  standard deviation 0.02, norm scales 1, biases 0. One uniform draw of every kernel's entries
  together, from the 'rbg' generator: on a 2-core CPU, threefry normals per leaf took ~90 s
  for SD v1.5, one rbg normal draw 14 s for the UNet, a uniform one 5.5 s. For timing and
  memory: the values mean nothing."""
  flat = traverse_util.flatten_dict(shapes)
  drawn = [p for p, spec in flat.items() if jnp.issubdtype(spec.dtype, jnp.floating) and
           p[-1] not in ("scale", "bias") and len(spec.shape) >= 2]
  sizes = [int(np.prod(flat[p].shape)) for p in drawn]

  def make(key):
    noise = jax.random.uniform(key, (sum(sizes),), jnp.float32, -3.0**0.5, 3.0**0.5)
    out, offset = {}, 0
    for path, size in zip(drawn, sizes):
      shape = tuple(flat[path].shape)
      std = 0.02 if path[-1] == "embedding" else float(np.prod(shape[:-1])) ** -0.5
      out[path] = (std * noise[offset:offset + size].reshape(shape)).astype(dtype)
      offset += size
    for path, spec in flat.items():
      if path not in out:
        fill = jnp.ones if path[-1] == "scale" else jnp.zeros
        out[path] = fill(spec.shape, dtype if jnp.issubdtype(spec.dtype, jnp.floating)
                         else spec.dtype)
    return out
  return traverse_util.unflatten_dict(jax.jit(make)(jax.random.key(seed, impl="rbg")))


# ---------------------------------------------------------------------------------------------
# Components.


def _component_config(folder: pathlib.Path) -> dict[str, Any]:
  return _read_json(folder / "config.json")


# Settings of PyTorch diffusers' (0.39.0) UNet2DConditionModel and AutoencoderKL that the Flax
# classes do not have, at PyTorch's defaults: a folder may carry them only at these values,
# since the Flax model would silently compute something else.
TORCH_ONLY_DEFAULTS = {
    "FlaxUNet2DConditionModel": {
        "center_input_sample": False, "downsample_padding": 1, "mid_block_scale_factor": 1,
        "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
        "reverse_transformer_layers_per_block": None, "encoder_hid_dim": None,
        "encoder_hid_dim_type": None, "dual_cross_attention": False, "class_embed_type": None,
        "num_class_embeds": None, "resnet_time_scale_shift": "default",
        "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
        "time_embedding_type": "positional", "time_embedding_dim": None,
        "time_embedding_act_fn": None, "timestep_post_act": None, "time_cond_proj_dim": None,
        "conv_in_kernel": 3, "conv_out_kernel": 3, "attention_type": "default",
        "class_embeddings_concat": False, "mid_block_only_cross_attention": None,
        "cross_attention_norm": None},
    "FlaxAutoencoderKL": {
        "shift_factor": None, "latents_mean": None, "latents_std": None,
        "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True},
}
# Flags that change only PyTorch's float16 arithmetic (they upcast to float32), not a float32
# result: accepted at any value.
PRECISION_ONLY = ("upcast_attention", "force_upcast")
# Block types the Flax classes build; any other name would silently become a plain block.
SUPPORTED_BLOCKS = {
    "FlaxUNet2DConditionModel": {
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "mid_block_type": ("UNetMidBlock2DCrossAttn", None)},
    "FlaxAutoencoderKL": {
        "down_block_types": ("DownEncoderBlock2D",), "up_block_types": ("UpDecoderBlock2D",)},
}


def supported_config(cls, config: dict[str, Any], where: pathlib.Path) -> dict[str, Any]:
  """The keys of `config` that the Flax class `cls` takes; raises a one-line `UserError` for a
  setting it would ignore at a value other than PyTorch's default, or a block it lacks."""
  fields = set(cls.__dataclass_fields__) - {"parent", "name"}
  defaults = TORCH_ONLY_DEFAULTS.get(cls.__name__, {})
  kind = config.get("_class_name", cls.__name__)
  if kind not in (cls.__name__, cls.__name__[4:]):
    raise UserError(f"{where}: a {kind} is not supported here (only {cls.__name__[4:]})")
  for key, value in config.items():
    if key in fields or key.startswith("_") or key in PRECISION_ONLY:
      continue
    if key in defaults and value != defaults[key]:
      raise UserError(f"{where}: {key} = {value!r} is not supported (jax3d's diffusers Flax "
                      f"{cls.__name__[4:]} computes it as {defaults[key]!r}); this checkpoint "
                      f"cannot be loaded exactly")
  for key, allowed in SUPPORTED_BLOCKS.get(cls.__name__, {}).items():
    values = config.get(key, ())
    for value in (values if isinstance(values, (list, tuple)) else [values]):
      if value not in allowed:
        raise UserError(f"{where}: {key} {value!r} is not supported (only "
                        f"{', '.join(str(a) for a in allowed)})")
  return {k: v for k, v in config.items() if k in fields}


def _build_diffusers_model(cls, folder: pathlib.Path, dtype) -> tuple[Any, Callable[[], Any]]:
  """A diffusers Flax model from its config.json, and a function giving its param shapes
  (`jax.eval_shape` of its initializer: seconds for SD, skipped on a cache hit)."""
  config = supported_config(cls, _component_config(folder), folder / "config.json")

  def invalid(e: Exception) -> UserError:
    return UserError(f"{folder / 'config.json'} does not describe a valid {cls.__name__}: "
                     f"{_one_line(e)}")
  try:
    model = cls.from_config(config, dtype=dtype)
  except Exception as e:  # pylint: disable=broad-except  (any bad config value)
    raise invalid(e) from None

  def shapes():
    try:
      return jax.eval_shape(model.init_weights, jax.random.PRNGKey(0))
    except Exception as e:  # pylint: disable=broad-except
      raise invalid(e) from None
  return model, shapes


def _build_text_encoder(folder: pathlib.Path, dtype):
  raw = _component_config(folder)
  if raw.get("model_type", "clip_text_model") not in ("clip_text_model", "clip"):
    raise UserError(f"{folder}: only CLIP text encoders are supported, not "
                    f"{raw.get('model_type')!r}")
  try:
    config = transformers.CLIPTextConfig.from_pretrained(str(folder))
    model = transformers.FlaxCLIPTextModel(config, dtype=dtype, _do_init=False)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"{folder / 'config.json'} does not describe a valid CLIP text encoder: "
                    f"{_one_line(e)}") from None
  return model, lambda: model.params_shape_tree


def _load_tokenizer(folder: pathlib.Path):
  try:
    return transformers.CLIPTokenizer.from_pretrained(str(folder))
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"cannot load the tokenizer in {folder}: {_one_line(e)}") from None


def scheduler_alphas_cumprod(config: dict[str, Any], where: str = "scheduler") -> np.ndarray:
  """ᾱ_t from a diffusers scheduler config (beta_start, beta_end, beta_schedule,
  num_train_timesteps or trained_betas), computed in float64 as diffusers defines it."""
  try:
    if config.get("trained_betas") is not None:
      betas = np.asarray(config["trained_betas"], np.float64)
    else:
      betas = base.betas_for_schedule(
          str(config.get("beta_schedule", "linear")),
          int(config.get("num_train_timesteps", 1000)),
          float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02)))
  except (ValueError, TypeError) as e:
    raise UserError(f"{where}: bad noise schedule: {_one_line(e)}") from None
  if betas.ndim != 1 or betas.size < 2 or not np.all((betas > 0) & (betas < 1)):
    raise UserError(f"{where}: the noise schedule's betas must lie in (0, 1)")
  return base.alphas_cumprod_from_betas(betas)


def _listed_components(index: dict[str, Any]) -> set[str]:
  return {k for k, v in index.items()
          if not k.startswith("_") and isinstance(v, (list, tuple)) and v and v[0] is not None}


def load_diffusers_prior(folder: str | os.PathLike, dtype: str | Any = "float32",
                         allow_pickle: bool = False, *, name: str | None = None,
                         render_resolution: int | None = None,
                         guidance_scale: float | None = None,
                         random_seed: int | None = None) -> base.Prior:
  """Loads a diffusers-layout folder as a `Prior` (latent if it has `vae/`, else pixel-space).

  Args:
    folder: the pipeline folder.
    dtype: 'float32' or 'bfloat16': the UNet, VAE and text encoder params are cast to it and
      the modules compute in it (ε̂ and images come back as float32).
    allow_pickle: allow `.bin`/`.ckpt`/`.pt` weights (needs torch; unpickling runs code).
    name: the prior's name (default: the folder's name).
    render_resolution: the image size renderers should produce (default 64 for latent models,
      or `resolution` if smaller; `resolution` for pixel models).
    guidance_scale: default CFG scale (default: model_index.json's jax3d.default_guidance_scale,
      else 7.5).
    random_seed: build the folder's architecture with seeded random weights (`random_params`)
      instead of reading weight files (the folder needs none): for benchmarks.

  Raises:
    UserError: (one line) for a missing folder or subfolder, missing/ambiguous/pickle-only
      weights, a corrupted or truncated file, weights that do not match the config.
  """
  root = pathlib.Path(folder).expanduser()
  if not root.exists():
    raise UserError(f"prior folder {root} does not exist")
  if not root.is_dir():
    raise UserError(f"prior {root} is not a folder (expected a diffusers-layout folder)")
  jdtype = resolve_dtype(dtype)
  if not (root / "model_index.json").is_file():
    raise UserError(f"{root} is not a diffusers pipeline folder: model_index.json is missing")
  index = _read_json(root / "model_index.json")
  listed = _listed_components(index)
  latent = (root / "vae").is_dir()
  for sub in _REQUIRED + tuple(sorted(listed - set(_REQUIRED))):
    if sub in ("safety_checker", "feature_extractor", "image_encoder"):
      continue  # Not needed for scoring (and not loaded).
    if not (root / sub).is_dir():
      raise UserError(f"{root} has no {sub}/ subfolder" +
                      (" (model_index.json lists it)" if sub in listed else ""))
  # Locate every weight file first: cheap, and refuses pickle-only folders before any work.
  unet_format = None  # random weights: no files, so PyTorch numerics unless model_index says
  if random_seed is None:
    for sub in ("unet", "text_encoder") + (("vae",) if latent else ()):
      weights = find_weight_files(root / sub, allow_pickle)
      if sub == "unet":
        unet_format = weights[0].suffix
  extra = index.get("jax3d") if isinstance(index.get("jax3d"), dict) else {}
  # Flax msgpack weights (the shipped solids priors) were trained with diffusers Flax's own
  # numerics; PyTorch-layout weights with PyTorch's.
  numerics = extra.get("numerics") or ("flax" if unet_format == ".msgpack" else "pytorch")
  if numerics not in NUMERICS:
    raise UserError(f"{root}/model_index.json: jax3d.numerics must be one of "
                    f"{', '.join(NUMERICS)}, got {numerics!r}")

  sched = _read_json(root / "scheduler" / "scheduler_config.json")
  alphas_cumprod = scheduler_alphas_cumprod(sched, str(root / "scheduler"))
  prediction = sched.get("prediction_type", "epsilon")
  if prediction not in ("epsilon", "v_prediction"):
    raise UserError(f"{root / 'scheduler'}: prediction_type {prediction!r} is not supported "
                    f"(epsilon or v_prediction)")

  unet, unet_shapes = _build_diffusers_model(diffusers.FlaxUNet2DConditionModel, root / "unet",
                                             jdtype)
  ucfg = unet.config
  if ucfg.get("addition_embed_type"):
    raise UserError(f"{root / 'unet'}: UNets with addition_embed_type "
                    f"{ucfg['addition_embed_type']!r} (SDXL) are not supported")
  if ucfg.in_channels != ucfg.out_channels:
    raise UserError(f"{root / 'unet'}: in_channels {ucfg.in_channels} != out_channels "
                    f"{ucfg.out_channels}; an ε-prediction UNet maps x_t to a same-shape ε̂")
  text_model, text_shapes = _build_text_encoder(root / "text_encoder", jdtype)
  tcfg = text_model.config
  if ucfg.cross_attention_dim != tcfg.hidden_size:
    raise UserError(f"{root}: the UNet's cross_attention_dim {ucfg.cross_attention_dim} != the "
                    f"text encoder's hidden_size {tcfg.hidden_size}")
  tokenizer = _load_tokenizer(root / "tokenizer")
  if len(tokenizer) > tcfg.vocab_size:
    raise UserError(f"{root}: the tokenizer has {len(tokenizer)} tokens but the text encoder's "
                    f"vocab_size is {tcfg.vocab_size}")
  max_length = int(min(tokenizer.model_max_length, tcfg.max_position_embeddings))

  components = ("unet", "text_encoder", "vae")

  # Each component's host-to-device copy runs on `pool` while the next one's initializer is
  # traced for its shapes.
  pool = futures.ThreadPoolExecutor(TRANSFER_THREADS)
  try:  # the pool's threads end however loading ends (a bad component raises mid-way)
    stored = set()

    def state(component, shapes, library, prefix=""):
      if random_seed is not None:  # a seed of its own per component
        seed = len(components) * random_seed + components.index(component)
        return random_params(shapes(), seed, jdtype), None
      tree, cached = _load_state(root / component, shapes, library, allow_pickle, prefix)
      stored.update(np.asarray(x).dtype for x in jax.tree.leaves(tree))
      return put_async(pool, tree, jdtype), cached

    params, to_cache = {}, {}
    params["unet"], to_cache["unet"] = state("unet", unet_shapes, "diffusers")
    params["text_encoder"], to_cache["text_encoder"] = state(
        "text_encoder", text_shapes, "transformers", text_model.base_model_prefix)
    if latent:
      vae, vae_shapes = _build_diffusers_model(diffusers.FlaxAutoencoderKL, root / "vae", jdtype)
      vcfg = vae.config
      if vcfg.latent_channels != ucfg.in_channels:
        raise UserError(f"{root}: the VAE's latent_channels {vcfg.latent_channels} != the UNet's "
                        f"in_channels {ucfg.in_channels}")
      params["vae"], to_cache["vae"] = state("vae", vae_shapes, "diffusers")
      factor = 2**(len(vcfg.block_out_channels) - 1)
      resolution = int(ucfg.sample_size) * factor
      scaling = float(_component_config(root / "vae").get("scaling_factor") or
                      DEFAULT_VAE_SCALING_FACTOR)
    else:
      if ucfg.in_channels != 3:
        raise UserError(f"{root}: a pixel-space prior (no vae/) needs a UNet with 3 in_channels, "
                        f"not {ucfg.in_channels}")
      vae, resolution, scaling = None, int(ucfg.sample_size), 1.0
    if random_seed is None:
      params = {component: result() for component, result in params.items()}
  finally:
    pool.shutdown(cancel_futures=True)
  if stored <= {np.dtype(jdtype), np.dtype(np.int32), np.dtype(np.int64)}:
    for component, path in to_cache.items():  # from the device: laid out, no host transposes
      if path is not None:
        _write_cache(path, params[component])
  latent_shape = (int(ucfg.sample_size), int(ucfg.sample_size), int(ucfg.in_channels))

  if guidance_scale is None:
    guidance_scale = float(extra.get("default_guidance_scale", DEFAULT_GUIDANCE_SCALE))
  if render_resolution is None:
    render_resolution = int(extra.get(
        "render_resolution", min(SD_RENDER_RESOLUTION, resolution) if latent else resolution))
  ac = jnp.asarray(alphas_cumprod)
  schemes = extra.get("view_schemes", ["dreamfusion"])
  if (not isinstance(schemes, list) or not schemes or
      any(s not in cameras.VIEW_SCHEMES for s in schemes)):
    raise UserError(f"{root}/model_index.json: jax3d.view_schemes must be a non-empty list of "
                    f"{', '.join(cameras.VIEW_SCHEMES)}, got {schemes!r}")

  return base.Prior(
      name=name or root.resolve().name,
      params=params,
      alphas_cumprod=ac,
      resolution=resolution,
      latent_shape=latent_shape,
      default_guidance_scale=guidance_scale,
      text_fn=_text_fn(text_model, tokenizer, max_length),
      encode_fn=(_latent_encode_fn(vae, resolution, scaling) if latent else
                 lambda params, images: base.pixel_encode(images, resolution)),
      decode_fn=(_latent_decode_fn(vae, scaling) if latent else
                 lambda params, x0: base.pixel_decode(x0)),
      model_fn=_unet_model_fn(unet, ac, prediction, numerics == "pytorch"),
      latent=latent,
      render_resolution=render_resolution,
      view_schemes=tuple(schemes),
      prediction=prediction,
  )


def _text_fn(text_model, tokenizer, max_length: int):
  """Host-side prompts -> (N, L, D) float32 CLIP last hidden states (the SD conditioning)."""
  encode_ids = jax.jit(lambda p, ids: text_model(ids, params=p, train=False)[0])

  def text_fn(params, prompts: Sequence[str]) -> jax.Array:
    ids = tokenizer(list(prompts), padding="max_length", max_length=max_length,
                    truncation=True, return_tensors="np").input_ids.astype(np.int32)
    # One prompt per call keeps one compiled shape; each distinct prompt is embedded once.
    out = [encode_ids(params["text_encoder"], ids[i:i + 1])[0] for i in range(len(ids))]
    return jnp.stack(out).astype(jnp.float32)
  return text_fn


@contextlib.contextmanager
def pytorch_numerics() -> Iterator[None]:
  """Inside, diffusers' Flax UNet computes what PyTorch diffusers' does: GEGLU with the exact
  GELU (the Flax class uses the tanh approximation), the Transformer2D input GroupNorm with
  eps 1e-6 (the Flax class: 1e-5), and every GroupNorm's variance in two passes as PyTorch's
  (Flax: E[x²] − E[x]²). Against PyTorch in float64 this takes ε from ~6e-5 to ~6e-7
  relative (tests/test_sd_fidelity.py). Trace-time only; no cost in the compiled step."""
  def interceptor(next_fun, args, kwargs, context):
    m = context.module
    if context.method_name == "__call__":
      if isinstance(m, attention_flax.FlaxGEGLU):
        hidden, gate = jnp.split(m.proj(args[0]), 2, axis=-1)
        return hidden * nn.gelu(gate, approximate=False)
      if isinstance(m, nn.GroupNorm):
        in_transformer = isinstance(m.parent, attention_flax.FlaxTransformer2DModel)
        return _group_norm(m, args[0], TORCH_TRANSFORMER_NORM_EPS if in_transformer else
                           m.epsilon)
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(interceptor):
    yield


def _group_norm(module: nn.GroupNorm, x: jax.Array, eps: float) -> jax.Array:
  """`module`'s GroupNorm of channels-last `x` with epsilon `eps` (statistics in float32)."""
  scale = module.get_variable("params", "scale")
  bias = module.get_variable("params", "bias")
  g = module.num_groups
  xg = x.astype(jnp.float32).reshape(x.shape[0], -1, g, x.shape[-1] // g)
  mean = jnp.mean(xg, axis=(1, 3), keepdims=True)
  var = jnp.mean(jnp.square(xg - mean), axis=(1, 3), keepdims=True)
  y = ((xg - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)
  return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def _unet_model_fn(unet, alphas_cumprod: jax.Array, prediction: str, torch_numerics: bool):
  """(params, x NHWC, t, context) -> ε̂ NHWC (the diffusers Flax UNet is NCHW)."""

  def model_fn(params, x, t, context):
    with pytorch_numerics() if torch_numerics else contextlib.nullcontext():
      out = unet.apply({"params": params["unet"]}, jnp.transpose(x, (0, 3, 1, 2)), t,
                       context, train=False).sample
    out = jnp.transpose(out, (0, 2, 3, 1)).astype(jnp.float32)
    if prediction == "v_prediction":  # v = √ᾱ·ε − √(1−ᾱ)·x0  =>  ε = √ᾱ·v + √(1−ᾱ)·x_t.
      a = alphas_cumprod[t][:, None, None, None]
      out = jnp.sqrt(a) * out + jnp.sqrt(1.0 - a) * x.astype(jnp.float32)
    return out
  return model_fn


def _latent_encode_fn(vae, resolution: int, scaling: float):
  def encode_fn(params, images):
    x = 2.0 * base.resize(images, resolution) - 1.0
    posterior = vae.apply({"params": params["vae"]}, jnp.transpose(x, (0, 3, 1, 2)),
                          method=vae.encode).latent_dist
    return posterior.mean.astype(jnp.float32) * scaling  # NHWC already.
  return encode_fn


def _latent_decode_fn(vae, scaling: float):
  def decode_fn(params, x0):
    # NHWC input: the Flax VAE's decode recognizes channels-last by the latent channel count.
    out = vae.apply({"params": params["vae"]}, x0 / scaling, method=vae.decode).sample
    return base.pixel_decode(jnp.transpose(out, (0, 2, 3, 1)).astype(jnp.float32))
  return decode_fn


@contextlib.contextmanager
def time_embedding_offset(offset: jax.Array) -> Iterator[None]:
  """Inside, the UNet's time embedding (the output of its `FlaxTimestepEmbedding`, (B, d))
  has `offset` ((B, d) or (d,)) added: how VSD's LoRA network sees the camera (the diffusers
  Flax UNet has no class-embedding input). Works under jit and grad; the pretrained weights
  are untouched."""
  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if (context.method_name == "__call__" and
        isinstance(context.module, diffusers.models.embeddings_flax.FlaxTimestepEmbedding)):
      out = out + offset.astype(out.dtype)
    return out
  with nn.intercept_methods(interceptor):
    yield


def time_embedding_width(unet_params: Any) -> int:
  """d, the width of a diffusers UNet's time embedding (what the camera embedding adds to)."""
  try:
    return int(unet_params["time_embedding"]["linear_2"]["kernel"].shape[1])
  except (KeyError, TypeError):
    raise UserError("this prior's network has no diffusers time embedding to condition on "
                    "the camera; VSD needs a diffusers UNet prior") from None


__all__ = ["load_diffusers_prior", "load_state", "find_weight_files", "cast_floating",
           "resolve_dtype", "scheduler_alphas_cumprod", "time_embedding_offset",
           "pytorch_numerics", "supported_config", "NUMERICS",
           "time_embedding_width", "DTYPES"]
