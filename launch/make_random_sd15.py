"""Writes a Stable Diffusion v1.5-sized folder with random weights, saved by PyTorch diffusers
(`save_pretrained(safe_serialization=True)`): an 860 M-parameter UNet, the SD VAE, a 12-layer
CLIP ViT-L text encoder (4.1 GB in float32), for timing the loader without downloading
weights. Needs torch, diffusers and transformers<5 (not jax3d's dependencies).

    python launch/make_random_sd15.py OUT
"""

import json
import pathlib
import sys

import diffusers
import torch
import transformers

REPO = pathlib.Path(__file__).resolve().parents[1]


def main():
  out = pathlib.Path(sys.argv[1])
  torch.manual_seed(0)
  diffusers.UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8,
                                 sample_size=64).save_pretrained(out / "unet",
                                                                 safe_serialization=True)
  diffusers.AutoencoderKL(
      block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
      up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
      sample_size=512).save_pretrained(out / "vae", safe_serialization=True)
  transformers.CLIPTextModel(transformers.CLIPTextConfig(
      vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
      num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
      projection_dim=768)).save_pretrained(out / "text_encoder", safe_serialization=True)
  diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False,
                          steps_offset=1).save_pretrained(out / "scheduler")
  tokenizer = REPO / "tests" / "fixtures" / "sd-torch" / "sd1" / "tokenizer"  # a small vocab
  (out / "tokenizer").mkdir(parents=True, exist_ok=True)
  for f in tokenizer.iterdir():
    (out / "tokenizer" / f.name).write_bytes(f.read_bytes())
  (out / "model_index.json").write_text(json.dumps({
      "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
      "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
      "tokenizer": ["transformers", "CLIPTokenizer"],
      "scheduler": ["diffusers", "DDIMScheduler"]}, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
