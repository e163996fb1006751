"""Tiny random Stable-Diffusion-layout pipelines for tests (a few hundred KB, built in seconds).

    tiny = make_tiny_models(latent=True, seed=0)       # diffusers Flax modules + random params
    save_tiny_pipeline(tiny, folder, weights="msgpack")  # or "safetensors" (PyTorch layout)
    # or both at once:
    tiny = write_tiny_pipeline(folder, latent=False)

`latent=True` writes unet/ (4 channels, 8×8), vae/ (×2, so the prior scores 16×16 images),
text_encoder/ (CLIP, hidden 32, 2 layers), tokenizer/, scheduler/ and model_index.json;
`latent=False` leaves out vae/ (a pixel-space prior at 16×16, like the shipped solids prior).
Params are drawn with numpy from the `jax.eval_shape` tree (model.init_weights is slow on CPU).

`pytorch_state_dict` writes the PyTorch names and layouts of a Flax param tree without torch —
the inverse of the diffusers/transformers PyTorch->Flax conversion — so the tests check the
safetensors path against independently produced files.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any, Sequence

import jax
import numpy as np
import safetensors.numpy
from flax import traverse_util

from jax3d.priors import _quiet  # noqa: F401  (before diffusers/transformers)
from jax3d.priors import tokenizer as tokenizer_lib

import diffusers  # pylint: disable=g-import-not-at-top,g-bad-import-order
import transformers  # pylint: disable=g-import-not-at-top

WORDS = ("a", "an", "red", "blue", "green", "cube", "sphere", "cone", "view", "side", "front",
         ",")
MAX_LENGTH = 8
HIDDEN = 32
SCHEDULER = dict(_class_name="FlaxDDIMScheduler", beta_start=0.00085, beta_end=0.012,
                 beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False,
                 set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


@dataclasses.dataclass
class TinyPipeline:
  """The diffusers/transformers Flax models of a tiny pipeline and their (numpy) params."""
  unet: Any
  unet_params: Any
  text_encoder: Any
  text_params: Any
  vae: Any | None = None
  vae_params: Any | None = None
  words: tuple[str, ...] = WORDS
  max_length: int = MAX_LENGTH
  folder: pathlib.Path | None = None  # Set by write_tiny_pipeline.

  @property
  def latent(self) -> bool:
    return self.vae is not None

  @property
  def resolution(self) -> int:
    size = self.unet.config.sample_size
    return size * 2**(len(self.vae.config.block_out_channels) - 1) if self.latent else size


def unet_kwargs(in_channels: int, sample_size: int) -> dict[str, Any]:
  return dict(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
              block_out_channels=(32, 32), layers_per_block=1, cross_attention_dim=HIDDEN,
              attention_head_dim=4)


def vae_kwargs(sample_size: int) -> dict[str, Any]:
  return dict(in_channels=3, out_channels=3, latent_channels=4,
              down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32),
              layers_per_block=1, norm_num_groups=32, sample_size=sample_size,
              scaling_factor=0.5)


def text_config(words: Sequence[str] = WORDS,
                max_length: int = MAX_LENGTH) -> transformers.CLIPTextConfig:
  vocab = tokenizer_lib.build_vocab(words)[0]
  eos = vocab[tokenizer_lib.EOS]
  return transformers.CLIPTextConfig(
      vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=2,
      num_attention_heads=4, max_position_embeddings=max_length,
      bos_token_id=vocab[tokenizer_lib.BOS], eos_token_id=eos, pad_token_id=eos)


def random_params(shapes: Any, seed: int) -> Any:
  """Numpy params for a `jax.eval_shape` tree: fan-in-scaled kernels, norm scales near 1."""
  rng = np.random.default_rng(seed)
  out = {}
  for path, spec in traverse_util.flatten_dict(shapes).items():
    shape, leaf = tuple(spec.shape), path[-1]
    n = rng.standard_normal(shape).astype(np.float32)
    if leaf == "scale":
      out[path] = 1.0 + 0.1 * n
    elif leaf == "bias":
      out[path] = 0.1 * n
    elif leaf == "kernel":
      out[path] = n / np.sqrt(float(np.prod(shape[:-1])))
    else:  # embeddings
      out[path] = 0.5 * n
  return traverse_util.unflatten_dict({k: v.astype(np.float32) for k, v in out.items()})


def make_tiny_models(latent: bool = True, seed: int = 0, words: Sequence[str] = WORDS,
                     max_length: int = MAX_LENGTH) -> TinyPipeline:
  """Builds the three tiny models (in-memory) with random params."""
  key = jax.random.PRNGKey(0)
  unet = diffusers.FlaxUNet2DConditionModel(**unet_kwargs(4 if latent else 3,
                                                          8 if latent else 16))
  unet_params = random_params(jax.eval_shape(unet.init_weights, key), seed)
  text = transformers.FlaxCLIPTextModel(text_config(words, max_length), _do_init=False)
  text_params = random_params(text.params_shape_tree, seed + 1)
  vae = vae_params = None
  if latent:
    vae = diffusers.FlaxAutoencoderKL(**vae_kwargs(16))
    vae_params = random_params(jax.eval_shape(vae.init_weights, key), seed + 2)
  return TinyPipeline(unet=unet, unet_params=unet_params, text_encoder=text,
                      text_params=text_params, vae=vae, vae_params=vae_params,
                      words=tuple(words), max_length=max_length)


# PyTorch ModuleList attributes in diffusers models: Flax flattens `down_blocks.0` to
# `down_blocks_0`; every other underscore-digit name (`linear_1`, `conv_1`) is a real name.
_MODULE_LISTS = ("down_blocks", "up_blocks", "resnets", "attentions", "downsamplers",
                 "upsamplers", "transformer_blocks", "to_out", "net")
_LIST_RE = re.compile(rf"^({'|'.join(_MODULE_LISTS)})_(\d+)$")
# The VAE's Flax attention block keeps the old names; current PyTorch checkpoints use these.
_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def pytorch_state_dict(params: Any, library: str = "diffusers") -> dict[str, np.ndarray]:
  """PyTorch names and layouts for a Flax param tree ('diffusers' UNet/VAE or 'transformers'
  CLIP): dense kernels (in, out) -> weight (out, in); conv kernels HWIO -> OIHW; norm 'scale'
  and 'embedding' -> 'weight'; `name_N` list entries -> `name.N`."""
  out = {}
  for path, value in traverse_util.flatten_dict(params).items():
    *mods, leaf = path
    arr = np.asarray(value)
    if library == "diffusers":
      mods = [_LIST_RE.sub(r"\1.\2", m) for m in mods]
      if mods and mods[-1] in _VAE_ATTENTION:
        mods[-1] = _VAE_ATTENTION[mods[-1]]
    if leaf == "kernel":
      arr = arr.transpose(3, 2, 0, 1) if arr.ndim == 4 else arr.T
      leaf = "weight"
    elif leaf in ("scale", "embedding"):
      leaf = "weight"
    out[".".join(mods + [leaf])] = np.ascontiguousarray(arr)
  return out


def save_tiny_pipeline(tiny: TinyPipeline, folder: str | pathlib.Path,
                       weights: str = "msgpack") -> pathlib.Path:
  """Writes `tiny` in diffusers layout; `weights` is 'msgpack' (Flax `save_pretrained`) or
  'safetensors' (PyTorch names and layouts, as a PyTorch `save_pretrained` would)."""
  if weights not in ("msgpack", "safetensors"):
    raise ValueError(weights)
  root = pathlib.Path(folder)
  root.mkdir(parents=True, exist_ok=True)
  components = [("unet", tiny.unet, tiny.unet_params)]
  if tiny.latent:
    components.append(("vae", tiny.vae, tiny.vae_params))
  for sub, model, params in components:
    if weights == "msgpack":
      model.save_pretrained(str(root / sub), params=params)
    else:
      model.save_config(str(root / sub))
      safetensors.numpy.save_file(pytorch_state_dict(params, "diffusers"),
                                  str(root / sub / "diffusion_pytorch_model.safetensors"),
                                  metadata={"format": "pt"})
  text_dir = root / "text_encoder"
  if weights == "msgpack":
    tiny.text_encoder.save_pretrained(str(text_dir), params=tiny.text_params)
  else:
    tiny.text_encoder.config.save_pretrained(str(text_dir))
    state = pytorch_state_dict(tiny.text_params, "transformers")
    # A buffer real CLIP checkpoints carry; the loader must ignore it.
    state["text_model.embeddings.position_ids"] = np.arange(tiny.max_length,
                                                            dtype=np.int64)[None]
    safetensors.numpy.save_file(state, str(text_dir / "model.safetensors"),
                                metadata={"format": "pt"})
  tokenizer_lib.write_clip_tokenizer(str(root / "tokenizer"), tiny.words, tiny.max_length)
  (root / "scheduler").mkdir(exist_ok=True)
  (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
  index = {"_class_name": "FlaxStableDiffusionPipeline",
           "_diffusers_version": diffusers.__version__,
           "unet": ["diffusers", "FlaxUNet2DConditionModel"],
           "text_encoder": ["transformers", "FlaxCLIPTextModel"],
           "tokenizer": ["transformers", "CLIPTokenizer"],
           "scheduler": ["diffusers", "FlaxDDIMScheduler"],
           "safety_checker": [None, None], "feature_extractor": [None, None]}
  if tiny.latent:
    index["vae"] = ["diffusers", "FlaxAutoencoderKL"]
  (root / "model_index.json").write_text(json.dumps(index, indent=2))
  return root


def write_tiny_pipeline(folder: str | pathlib.Path, *, latent: bool = True,
                        weights: str = "msgpack", seed: int = 0) -> TinyPipeline:
  """make_tiny_models + save_tiny_pipeline; the result's `folder` is set."""
  tiny = make_tiny_models(latent=latent, seed=seed)
  tiny.folder = save_tiny_pipeline(tiny, folder, weights)
  return tiny


def tokenize(folder: str | pathlib.Path, prompts: Sequence[str],
             max_length: int = MAX_LENGTH) -> np.ndarray:
  """Token ids (N, max_length) as a pipeline folder's tokenizer/ produces them."""
  tok = transformers.CLIPTokenizer.from_pretrained(str(pathlib.Path(folder) / "tokenizer"))
  return tok(list(prompts), padding="max_length", max_length=max_length, truncation=True,
             return_tensors="np").input_ids.astype(np.int32)
