"""Seconds to load a Stable Diffusion folder: jax3d (`load_diffusers_prior`, weights on the
device) beside PyTorch diffusers (`from_pretrained` of the UNet, VAE and text encoder) when
torch is importable, interleaved ROUNDS times. A dev tool (PyTorch is not a jax3d dependency).

    python launch/prior_load_time.py FOLDER [ROUNDS]            # jax3d only
    python launch/prior_load_time.py FOLDER [ROUNDS] --torch   # in an env with torch too

`launch/make_random_sd15.py OUT` (needs torch) writes an SD v1.5-sized folder with random
weights to time.
"""

import sys
import time


def jax3d_load(folder: str) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  from jax3d.priors import diffusers as loader  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  prior = loader.load_diffusers_prior(folder)
  jax.block_until_ready(prior.params)
  return time.perf_counter() - t0


def torch_load(folder: str) -> float:
  import diffusers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  diffusers.UNet2DConditionModel.from_pretrained(folder + "/unet")
  diffusers.AutoencoderKL.from_pretrained(folder + "/vae")
  transformers.CLIPTextModel.from_pretrained(folder + "/text_encoder")
  return time.perf_counter() - t0


def main():
  args = [a for a in sys.argv[1:] if not a.startswith("--")]
  folder, rounds = args[0], int(args[1]) if len(args) > 1 else 3
  fn = torch_load if "--torch" in sys.argv else jax3d_load
  for r in range(rounds):
    print(f"{fn.__name__} round {r}: {fn(folder):.2f} s", flush=True)


if __name__ == "__main__":
  main()
