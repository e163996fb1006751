"""The solids prior's networks: a small Flax UNet and CLIP text encoder, saved in diffusers layout.

Pixel-space ε-prediction at 32×32 RGB. The text encoder is trained jointly with the UNet
(it starts random: the solids vocabulary is tiny). The folder written by `save_folder` has
`model_index.json`, `unet/`, `text_encoder/`, `tokenizer/` and `scheduler/` and no `vae/`,
so `jax3d.priors.diffusers` loads it as a pixel-space prior with no special case.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp

from jax3d import cameras
from jax3d.priors import _quiet  # noqa: F401  (silences the Flax deprecation warnings)
from jax3d.priors import base
from jax3d.priors import tokenizer as tokenizer_lib
from jax3d.solids import scenes

import diffusers  # pylint: disable=g-import-not-at-top
import transformers  # pylint: disable=g-import-not-at-top

# A trained folder carries its own tokenizer, so extending this list leaves shipped priors
# alone (token ids shift: BOS and EOS come last). Numbers need no entry: CLIP's pre-tokenizer
# splits them into single digits, all in the vocabulary.
VOCAB_WORDS = (("a", "an", "view", ",") + scenes.SOLIDS + scenes.COLOURS +
               cameras.VIEW_LABELS + ("azimuth",))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The solids prior's networks (values: configs/solids_prior.py)."""
  resolution: int
  block_out_channels: tuple[int, ...]
  # Cross-attention only in the lowest-resolution block (and the mid block): attention at
  # full resolution dominates CPU step time (docs/architecture.md).
  down_block_types: tuple[str, ...]
  up_block_types: tuple[str, ...]
  layers_per_block: int
  attention_head_dim: int
  text_hidden: int
  text_layers: int
  text_heads: int
  max_length: int
  beta_schedule: str
  beta_start: float
  beta_end: float
  num_train_timesteps: int


def unet_config(cfg: ModelConfig) -> dict[str, Any]:
  return dict(sample_size=cfg.resolution, in_channels=3, out_channels=3,
              down_block_types=list(cfg.down_block_types),
              up_block_types=list(cfg.up_block_types),
              block_out_channels=list(cfg.block_out_channels),
              layers_per_block=cfg.layers_per_block,
              attention_head_dim=cfg.attention_head_dim,
              cross_attention_dim=cfg.text_hidden)


def text_config(cfg: ModelConfig) -> transformers.CLIPTextConfig:
  vocab = tokenizer_lib.build_vocab(VOCAB_WORDS)[0]
  return transformers.CLIPTextConfig(
      vocab_size=len(vocab), hidden_size=cfg.text_hidden, intermediate_size=2 * cfg.text_hidden,
      num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
      max_position_embeddings=cfg.max_length, bos_token_id=vocab[tokenizer_lib.BOS],
      eos_token_id=vocab[tokenizer_lib.EOS], pad_token_id=vocab[tokenizer_lib.EOS])


def scheduler_config(cfg: ModelConfig) -> dict[str, Any]:
  return dict(_class_name="FlaxDDIMScheduler", beta_start=cfg.beta_start,
              beta_end=cfg.beta_end, beta_schedule=cfg.beta_schedule,
              num_train_timesteps=cfg.num_train_timesteps, clip_sample=False,
              set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
              timestep_spacing="leading")


def alphas_cumprod(cfg: ModelConfig) -> jax.Array:
  """ᾱ_t of the model's DDPM schedule (diffusers' definitions, via priors.base)."""
  return jnp.asarray(base.alphas_cumprod_from_betas(base.betas_for_schedule(
      cfg.beta_schedule, cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)))


@dataclasses.dataclass(frozen=True)
class Networks:
  """The two Flax modules; their params live in a plain dict {'unet': ..., 'text': ...}."""
  unet: Any
  text: Any
  cfg: ModelConfig


def build(cfg: ModelConfig) -> Networks:
  unet = diffusers.FlaxUNet2DConditionModel(**unet_config(cfg))
  text = transformers.FlaxCLIPTextModel(text_config(cfg), _do_init=False)
  return Networks(unet=unet, text=text, cfg=cfg)


def init_params(nets: Networks, key: jax.Array) -> dict[str, Any]:
  """Freshly initialised UNet and text-encoder weights, as one compiled program (op by op,
  the initialisers compile hundreds of tiny programs: ~20 s on a 2-core CPU)."""
  def init(key):
    k_unet, k_text = jax.random.split(key)
    return {"unet": nets.unet.init_weights(k_unet),
            "text": nets.text.init_weights(k_text, (1, nets.cfg.max_length))}
  return jax.jit(init)(key)


def encode_text(nets: Networks, text_params, input_ids: jax.Array) -> jax.Array:
  """(B, L) token ids -> (B, L, D) last hidden states (the UNet's cross-attention context)."""
  return nets.text(input_ids, params=text_params, train=False)[0]


def predict_eps(nets: Networks, unet_params, x_t: jax.Array, t: jax.Array,
                context: jax.Array) -> jax.Array:
  """ε̂(x_t, t, context) with NHWC in and out (the diffusers UNet is NCHW)."""
  out = nets.unet.apply({"params": unet_params}, jnp.transpose(x_t, (0, 3, 1, 2)), t, context,
                        train=False).sample
  return jnp.transpose(out, (0, 2, 3, 1))


def count_params(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def save_folder(nets: Networks, params: dict[str, Any], folder: str,
                extra_files: dict[str, str] | None = None,
                guidance_scale: float = 3.0,
                view_schemes: tuple[str, ...] = ("dreamfusion",)) -> None:
  """Writes a diffusers-layout folder atomically (a temp folder renamed into place);
  `model_index.json` records the view-label schemes its captions used."""
  parent = os.path.dirname(os.path.abspath(folder)) or "."
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-prior-")
  try:
    host = jax.device_get(params)
    nets.unet.save_pretrained(os.path.join(tmp, "unet"), params=host["unet"])
    text_model = transformers.FlaxCLIPTextModel(nets.text.config, _do_init=False)
    text_model.save_pretrained(os.path.join(tmp, "text_encoder"), params=host["text"])
    tokenizer_lib.write_clip_tokenizer(os.path.join(tmp, "tokenizer"), VOCAB_WORDS,
                                       nets.cfg.max_length)
    os.makedirs(os.path.join(tmp, "scheduler"))
    with open(os.path.join(tmp, "scheduler", "scheduler_config.json"), "w") as f:
      json.dump(scheduler_config(nets.cfg), f, indent=2)
    with open(os.path.join(tmp, "model_index.json"), "w") as f:
      json.dump({"_class_name": "FlaxStableDiffusionPipeline",
                 "_diffusers_version": diffusers.__version__,
                 "unet": ["diffusers", "FlaxUNet2DConditionModel"],
                 "text_encoder": ["transformers", "FlaxCLIPTextModel"],
                 "tokenizer": ["transformers", "CLIPTokenizer"],
                 "scheduler": ["diffusers", "FlaxDDIMScheduler"],
                 "jax3d": {"resolution": nets.cfg.resolution, "pixel_space": True,
                           "default_guidance_scale": guidance_scale,
                           "view_schemes": list(view_schemes),
                           # trained with diffusers Flax's GELU and GroupNorm eps
                           "numerics": "flax"}},
                f, indent=2)
    for name, text in (extra_files or {}).items():
      with open(os.path.join(tmp, name), "w") as f:
        f.write(text)
    if os.path.exists(folder):
      shutil.rmtree(folder)
    os.replace(tmp, folder)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)
