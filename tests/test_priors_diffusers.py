"""Loading diffusers-layout folders: msgpack and PyTorch-layout safetensors, latent and pixel
space, bf16, classifier-free guidance, and every user mistake as a one-line UserError."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import shutil
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import tiny_pipeline as tp
from jax3d.errors import UserError
from jax3d.priors import diffusers as sd
from jax3d.priors import registry

PROMPTS = ["a red cube", "a blue sphere, side view"]


@pytest.fixture(scope="module")
def latent_tiny():
  return tp.make_tiny_models(latent=True, seed=0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, latent_tiny):
  root = tmp_path_factory.mktemp("pipelines")
  return {
      "msgpack": tp.save_tiny_pipeline(latent_tiny, root / "latent_msgpack", "msgpack"),
      "safetensors": tp.save_tiny_pipeline(latent_tiny, root / "latent_st", "safetensors"),
      "pixel": tp.save_tiny_pipeline(tp.make_tiny_models(latent=False, seed=3), root / "pixel",
                                     "safetensors"),
  }


@pytest.fixture(scope="module")
def prior(folders):
  return sd.load_diffusers_prior(folders["msgpack"])


@pytest.fixture(scope="module")
def eps_fn(prior):
  return jax.jit(prior.eps)


@pytest.fixture(scope="module")
def inputs(prior):
  key = jax.random.key(0)
  x = jax.random.normal(key, (2,) + prior.latent_shape)
  t = jnp.array([17, 640], jnp.int32)
  return x, t, prior.embed(PROMPTS), prior.uncond(2)


def _one_line_error(excinfo) -> str:
  message = str(excinfo.value)
  assert "\n" not in message and message
  return message


def test_pytorch_layout_uses_real_checkpoint_names(latent_tiny):
  """The test's PyTorch-layout writer (the inverse conversion) produces the names real SD 1.x
  checkpoints use, so the safetensors path is tested against the real layout."""
  unet = tp.pytorch_state_dict(latent_tiny.unet_params, "diffusers")
  for name in ("conv_in.weight", "time_embedding.linear_1.weight", "conv_norm_out.weight",
               "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
               "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0.weight",
               "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
               "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight",
               "down_blocks.0.attentions.0.proj_in.weight", "down_blocks.0.resnets.0.norm1.weight",
               "down_blocks.0.downsamplers.0.conv.weight", "up_blocks.0.upsamplers.0.conv.weight",
               "mid_block.attentions.0.transformer_blocks.0.norm1.bias"):
    assert name in unet, name
  # PyTorch layouts: conv OIHW, linear (out, in).
  assert unet["conv_in.weight"].shape == (32, 4, 3, 3)
  assert unet["time_embedding.linear_1.weight"].shape == (128, 32)
  vae = tp.pytorch_state_dict(latent_tiny.vae_params, "diffusers")
  for name in ("encoder.conv_in.weight", "encoder.mid_block.attentions.0.to_q.weight",
               "encoder.mid_block.attentions.0.group_norm.weight",
               "decoder.mid_block.attentions.0.to_out.0.weight", "quant_conv.weight",
               "post_quant_conv.weight", "encoder.down_blocks.0.downsamplers.0.conv.weight",
               "decoder.up_blocks.0.upsamplers.0.conv.weight"):
    assert name in vae, name
  clip = tp.pytorch_state_dict(latent_tiny.text_params, "transformers")
  for name in ("text_model.embeddings.token_embedding.weight",
               "text_model.embeddings.position_embedding.weight",
               "text_model.encoder.layers.0.self_attn.q_proj.weight",
               "text_model.encoder.layers.1.mlp.fc1.weight", "text_model.final_layer_norm.weight"):
    assert name in clip, name


def test_safetensors_converts_to_identical_params(folders, prior, latent_tiny):
  st = sd.load_diffusers_prior(folders["safetensors"])
  expected = {"unet": latent_tiny.unet_params, "vae": latent_tiny.vae_params,
              "text_encoder": latent_tiny.text_params}
  for loaded in (prior.params, st.params):
    flat = traverse_util.flatten_dict(loaded)
    ref = traverse_util.flatten_dict(expected)
    assert set(flat) == set(ref)
    for k, v in ref.items():
      assert flat[k].dtype == jnp.float32
      np.testing.assert_array_equal(np.asarray(flat[k]), v, err_msg=str(k))
  assert st.latent_shape == prior.latent_shape == (8, 8, 4)
  assert st.resolution == prior.resolution == 16
  assert prior.latent and prior.channels == 4 and prior.num_train_timesteps == 1000


def test_alphas_cumprod_matches_diffusers_definition(prior):
  betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64)**2
  np.testing.assert_allclose(prior.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-6)
  assert prior.alphas_cumprod.dtype == jnp.float32


@pytest.fixture(scope="module")
def reference_unet(latent_tiny):
  """The diffusers UNet called directly (NCHW), jitted once."""
  tiny = latent_tiny
  fn = jax.jit(lambda x, t, c: tiny.unet.apply({"params": tiny.unet_params}, x, t, c).sample)
  return lambda x, t, c: jnp.transpose(fn(jnp.transpose(x, (0, 3, 1, 2)), t, c), (0, 2, 3, 1))


def test_embeddings_match_the_clip_model(folders, prior, inputs, latent_tiny):
  _, _, cond, uncond = inputs
  ids = tp.tokenize(folders["msgpack"], PROMPTS + [""])
  ref = latent_tiny.text_encoder(ids, params=latent_tiny.text_params)[0]
  assert cond.shape == (2, tp.MAX_LENGTH, tp.HIDDEN) and cond.dtype == jnp.float32
  np.testing.assert_allclose(cond, ref[:2], atol=1e-5)
  np.testing.assert_allclose(uncond, jnp.broadcast_to(ref[2:], uncond.shape), atol=1e-5)
  # Memoized per distinct prompt string.
  assert set(PROMPTS + [""]) <= set(prior._cache)
  np.testing.assert_array_equal(prior.embed(PROMPTS[1:]), cond[1:])


def test_eps_and_guidance_match_the_diffusers_unet(prior, eps_fn, inputs, reference_unet):
  x, t, cond, uncond = inputs
  e_c, e_u = reference_unet(x, t, cond), reference_unet(x, t, uncond)
  assert np.abs(e_c - e_u).mean() > 1e-2  # Conditioning matters, so the identities bite.
  # Scale 1 is the conditional prediction, 0 the unconditional; ε_u + s(ε_c − ε_u) between.
  np.testing.assert_allclose(eps_fn(prior.params, x, t, cond, uncond, 1.0), e_c, atol=2e-5)
  np.testing.assert_allclose(eps_fn(prior.params, x, t, cond, uncond, 0.0), e_u, atol=2e-5)
  np.testing.assert_allclose(eps_fn(prior.params, x, t, cond, uncond, 7.5),
                             e_u + 7.5 * (e_c - e_u), atol=2e-4)


def test_encode_decode_match_the_diffusers_vae(prior, latent_tiny):
  tiny = latent_tiny
  # encode: resize to 16, [0,1] -> [-1,1], VAE posterior mean × scaling factor (0.5 here).
  images = jax.random.uniform(jax.random.key(1), (2, 12, 12, 3))
  z = jax.jit(prior.encode)(prior.params, images)
  big = jax.image.resize(images, (2, 16, 16, 3), "bilinear")
  enc = jax.jit(lambda x: tiny.vae.apply({"params": tiny.vae_params}, x,
                                         method=tiny.vae.encode).latent_dist.mean)
  mean = enc(jnp.transpose(2 * big - 1, (0, 3, 1, 2)))
  assert z.shape == (2,) + prior.latent_shape
  np.testing.assert_allclose(z, 0.5 * mean, atol=2e-5)
  out = jax.jit(prior.decode)(prior.params, z)
  dec = jax.jit(lambda z: tiny.vae.apply({"params": tiny.vae_params}, z,
                                         method=tiny.vae.decode).sample)
  ref = np.clip((np.transpose(dec(jnp.transpose(mean, (0, 3, 1, 2))), (0, 2, 3, 1)) + 1) / 2,
                0, 1)
  np.testing.assert_allclose(out, ref, atol=2e-5)
  # encode is differentiable (SDS backpropagates through it).
  g = jax.jit(jax.grad(lambda im: jnp.sum(prior.encode(prior.params, im)**2)))(images[:1])
  assert g.shape == (1, 12, 12, 3) and np.isfinite(g).all() and np.abs(g).max() > 0


def test_bfloat16_stays_close_to_float32(folders, eps_fn, prior, inputs):
  bf = sd.load_diffusers_prior(folders["safetensors"], dtype="bfloat16")
  leaves = jax.tree.leaves(bf.params)
  assert all(l.dtype == jnp.bfloat16 for l in leaves if jnp.issubdtype(l.dtype, jnp.floating))
  x, t, _, _ = inputs
  cond, uncond = bf.embed(PROMPTS), bf.uncond(2)
  assert cond.dtype == jnp.float32
  got = jax.jit(bf.eps)(bf.params, x, t, cond, uncond, 3.0)
  want = eps_fn(prior.params, x, t, prior.embed(PROMPTS), prior.uncond(2), 3.0)
  assert got.dtype == jnp.float32
  rel = float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
  assert rel < 0.05, rel


def test_pixel_space_folder(folders):
  pixel = sd.load_diffusers_prior(folders["pixel"])
  assert not pixel.latent and "vae" not in pixel.params
  assert pixel.latent_shape == (16, 16, 3) and pixel.resolution == 16
  assert pixel.render_resolution == 16
  images = jax.random.uniform(jax.random.key(2), (3, 16, 16, 3))
  x0 = pixel.encode(pixel.params, images)
  np.testing.assert_allclose(x0, 2 * images - 1, atol=1e-6)
  np.testing.assert_allclose(pixel.decode(pixel.params, x0), images, atol=1e-6)
  small = pixel.encode(pixel.params, images[:, ::2, ::2])  # Any size is resized to 16.
  np.testing.assert_allclose(small, 2 * jax.image.resize(images[:, ::2, ::2], images.shape,
                                                         "bilinear") - 1, atol=1e-6)
  assert pixel.embed(["a red cube"]).shape == (1, tp.MAX_LENGTH, tp.HIDDEN)


def _copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  shutil.copytree(src, dst)
  return dst


def test_missing_folder_and_subfolder(folders, tmp_path):
  with pytest.raises(UserError, match="does not exist") as e:
    sd.load_diffusers_prior(tmp_path / "nope")
  _one_line_error(e)
  for sub in ("unet", "tokenizer", "vae"):
    broken = _copy(folders["msgpack"], tmp_path / f"no_{sub}")
    shutil.rmtree(broken / sub)
    if sub == "vae":  # Listed in model_index.json: missing is an error, not a pixel prior.
      with pytest.raises(UserError, match="no vae/") as e:
        sd.load_diffusers_prior(broken)
    else:
      with pytest.raises(UserError, match=f"no {sub}/") as e:
        sd.load_diffusers_prior(broken)
    _one_line_error(e)
  with pytest.raises(UserError, match="unknown prior"):
    registry.load_prior(str(tmp_path / "nope"))


def test_wrong_shapes_and_mismatched_config(folders, tmp_path):
  for fmt in ("msgpack", "safetensors"):
    wide = _copy(folders[fmt], tmp_path / f"wide_{fmt}")
    cfg = json.loads((wide / "unet" / "config.json").read_text())
    cfg["block_out_channels"] = [64, 64]
    (wide / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="do not match") as e:
      sd.load_diffusers_prior(wide)
    assert "unet" in _one_line_error(e)

    deep = _copy(folders[fmt], tmp_path / f"deep_{fmt}")
    cfg = json.loads((deep / "text_encoder" / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (deep / "text_encoder" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="missing") as e:
      sd.load_diffusers_prior(deep)
    assert "text_encoder" in _one_line_error(e)

  shallow = _copy(folders["safetensors"], tmp_path / "shallow")
  cfg = json.loads((shallow / "text_encoder" / "config.json").read_text())
  cfg["num_hidden_layers"] = 1
  (shallow / "text_encoder" / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(UserError, match="unexpected") as e:
    sd.load_diffusers_prior(shallow)
  _one_line_error(e)

  # The VAE fails after the UNet's and text encoder's copies started on the loader's threads:
  # those threads end with the load.
  before = _pool_threads()
  bad = _copy(folders["msgpack"], tmp_path / "badjson")
  (bad / "vae" / "config.json").write_text("{not json")
  with pytest.raises(UserError, match="cannot read") as e:
    sd.load_diffusers_prior(bad)
  _one_line_error(e)
  other = _copy(folders["msgpack"], tmp_path / "channels")
  cfg = json.loads((other / "vae" / "config.json").read_text())
  cfg["latent_channels"] += 1
  (other / "vae" / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(UserError, match="latent_channels") as e:
    sd.load_diffusers_prior(other)
  _one_line_error(e)
  assert _pool_threads() <= before


def _pool_threads() -> set[threading.Thread]:
  return {t for t in threading.enumerate() if t.name.startswith("ThreadPoolExecutor")}


@pytest.mark.parametrize("fmt,file", [("safetensors", "unet/diffusion_pytorch_model.safetensors"),
                                      ("msgpack", "unet/diffusion_flax_model.msgpack"),
                                      ("msgpack", "text_encoder/flax_model.msgpack")])
def test_truncated_weights(folders, tmp_path, fmt, file):
  broken = _copy(folders[fmt], tmp_path / "broken")
  data = (broken / file).read_bytes()
  (broken / file).write_bytes(data[:len(data) // 2])
  with pytest.raises(UserError, match="corrupted or truncated") as e:
    sd.load_diffusers_prior(broken)
  _one_line_error(e)


def _pickle_only(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  folder = _copy(src, dst)
  for f in list(folder.rglob("*.safetensors")) + list(folder.rglob("*.msgpack")):
    f.rename(f.with_name(f.name.replace("flax_model", "pytorch_model")).with_suffix(".bin"))
  return folder


def test_pickle_only_folder_is_refused(folders, tmp_path):
  folder = _pickle_only(folders["safetensors"], tmp_path / "pickles")
  with pytest.raises(UserError, match="pickle") as e:
    sd.load_diffusers_prior(folder)
  assert "--allow-pickle" in _one_line_error(e)
  if importlib.util.find_spec("torch") is None:
    with pytest.raises(UserError, match="needs torch") as e:
      sd.load_diffusers_prior(folder, allow_pickle=True)
    _one_line_error(e)


def test_bad_dtype_is_a_user_error(folders):
  with pytest.raises(UserError, match="dtype"):
    sd.load_diffusers_prior(folders["msgpack"], dtype="float16")
