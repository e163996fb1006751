"""Random-weight priors of the real Stable Diffusion architectures (`--prior random:sd15`,
`random:sd21`): the published parameter counts, ε of the right shape, seeded weights of the
intended scale, and a folder with no weight files that loads and scores."""

import pathlib

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_pipeline as tp
from jax3d.priors import diffusers as loader
from jax3d.priors import registry

# Published sizes: SD v1.5 (CompVis model card, diffusers' counts) and SD v2.1; the text
# encoders are CLIP ViT-L/14's (123.06 M) and OpenCLIP ViT-H/14's text tower (340.39 M).
COUNTS = {"random:sd15": {"unet": 859_520_964, "vae": 83_653_863, "text": 123_060_480},
          "random:sd21": {"unet": 865_910_724, "vae": 83_653_863, "text": 340_387_840}}


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("spec", sorted(COUNTS))
def test_parameter_counts_are_the_published_ones_and_eps_has_the_latent_shape(spec):
  root = registry.prior_folder(spec)
  unet, unet_shapes = loader._build_diffusers_model(diffusers.FlaxUNet2DConditionModel,
                                                    root / "unet", jnp.float32)
  _, vae_shapes = loader._build_diffusers_model(diffusers.FlaxAutoencoderKL, root / "vae",
                                                jnp.float32)
  text, text_shapes = loader._build_text_encoder(root / "text_encoder", jnp.float32)
  shapes = unet_shapes()
  assert {"unet": _count(shapes), "vae": _count(vae_shapes()),
          "text": _count(text_shapes())} == COUNTS[spec]
  # ε for a CFG batch of 2 at SD's 64x64x4 latent, cross-attending to 77 text tokens.
  eps = jax.eval_shape(
      lambda p, x, t, c: unet.apply({"params": p}, x, t, c).sample, shapes,
      jax.ShapeDtypeStruct((2, 4, 64, 64), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.int32),
      jax.ShapeDtypeStruct((2, 77, text.config.hidden_size), jnp.float32))
  assert eps.shape == (2, 4, 64, 64)
  assert registry.describe(spec) == {"prior": spec, "weights_sha256": None,
                                     "random_seed": registry.RANDOM_SEED}


def test_random_params_are_seeded_and_scaled_by_fan_in():
  shapes = {"conv": {"kernel": jax.ShapeDtypeStruct((3, 3, 64, 32), jnp.float32),
                     "bias": jax.ShapeDtypeStruct((32,), jnp.float32)},
            "norm": {"scale": jax.ShapeDtypeStruct((32,), jnp.float32)},
            "tok": {"embedding": jax.ShapeDtypeStruct((1000, 16), jnp.float32)},
            "ids": jax.ShapeDtypeStruct((4,), jnp.int32)}
  a, b = loader.random_params(shapes, 0, jnp.float32), loader.random_params(shapes, 0,
                                                                             jnp.float32)
  c = loader.random_params(shapes, 1, jnp.bfloat16)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  kernel = np.asarray(a["conv"]["kernel"])
  assert not np.array_equal(kernel, np.asarray(c["conv"]["kernel"], np.float32))
  assert abs(kernel.std() * np.sqrt(3 * 3 * 64) - 1.0) < 0.03  # variance 1 / fan_in
  assert np.abs(kernel).max() <= np.sqrt(3.0 / (3 * 3 * 64)) + 1e-6  # uniform
  assert abs(np.asarray(a["tok"]["embedding"]).std() - 0.02) < 0.002
  assert np.all(np.asarray(a["conv"]["bias"]) == 0) and np.all(np.asarray(a["norm"]["scale"]) == 1)
  assert a["ids"].dtype == jnp.int32 and c["conv"]["kernel"].dtype == jnp.bfloat16


def test_a_folder_without_weights_loads_with_random_weights_and_scores(tmp_path):
  folder = pathlib.Path(tp.write_tiny_pipeline(tmp_path / "tiny", latent=True).folder)
  for path in folder.rglob("*"):
    if path.suffix in (".msgpack", ".safetensors"):
      path.unlink()
  prior = loader.load_diffusers_prior(folder, random_seed=0)
  again = loader.load_diffusers_prior(folder, random_seed=0)
  for x, y in zip(jax.tree.leaves(prior.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(x, y)
  x = jnp.zeros((2,) + prior.latent_shape, jnp.float32)
  cond = prior.embed(["a red cube", ""])
  eps = prior.model_fn(prior.params, x, jnp.array([10, 500]), cond)
  assert eps.shape == x.shape and bool(jnp.all(jnp.isfinite(eps)))
  with pytest.raises(Exception, match="weight"):  # without random_seed the files are needed
    loader.load_diffusers_prior(folder)
