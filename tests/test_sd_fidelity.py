"""Stable Diffusion folders saved by PyTorch diffusers load to the same model: jax3d's text
embeddings, ε (SD 1.x ε-prediction; SD 2.x v-prediction, converted), CFG-100 ε and VAE equal
what PyTorch computed with the same folder (tests/fixtures/make_sd_references.py wrote both);
settings the Flax classes would ignore are refused in one line."""

import json
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from jax3d import cli
from jax3d.errors import UserError
from jax3d.priors import diffusers as sd_loader

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "sd-torch"
FAMILIES = ("sd1", "sd2")


def _rel(got, want) -> float:
  """max |got − want| / max |want|."""
  want = np.asarray(want, np.float64)
  return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request):
  folder = FIXTURES / request.param
  return sd_loader.load_diffusers_prior(folder), np.load(folder / "reference.npz")


def _eps(prior, ref, scale, params=None):
  emb = prior.text_fn(prior.params, list(ref["prompts"]))
  return np.asarray(prior.eps(params or prior.params, jnp.asarray(ref["x_t"]),
                              jnp.asarray(ref["t"]), emb[:1], emb[1:], scale))


def test_text_embeddings_equal_pytorch(loaded):
  prior, ref = loaded
  assert _rel(prior.text_fn(prior.params, list(ref["prompts"])), ref["text"]) < 1e-5


def test_eps_and_cfg_100_equal_pytorch(loaded):
  """Against PyTorch's UNet in float64 (the truth both float32 runs approximate): ε within
  1e-5; CFG 100 multiplies float32 rounding by ~100, so its bar is 1e-5 or twice PyTorch's
  own float32 error, whichever is larger (PyTorch float32 is 6e-6 and 8e-6 off here)."""
  prior, ref = loaded
  assert _rel(_eps(prior, ref, 1.0), ref["eps64_cond"]) < 1e-5
  assert _rel(_eps(prior, ref, 0.0), ref["eps64_uncond"]) < 1e-5
  torch_own = _rel(ref["eps_cfg"], ref["eps64_cfg"])
  assert _rel(_eps(prior, ref, float(ref["cfg"])), ref["eps64_cfg"]) < max(1e-5, 2 * torch_own)
  assert _rel(_eps(prior, ref, 1.0), ref["eps_cond"]) < 1e-5  # and PyTorch float32 itself


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_error_is_within_twice_pytorchs_own(family):
  """`--dtype bfloat16` against PyTorch's float64 ε, beside PyTorch's own bfloat16 run."""
  ref = np.load(FIXTURES / family / "reference.npz")
  prior = sd_loader.load_diffusers_prior(FIXTURES / family, dtype="bfloat16")
  torch_own = _rel(ref["eps16_cond"], ref["eps64_cond"])
  assert _rel(_eps(prior, ref, 1.0), ref["eps64_cond"]) < 2 * torch_own


def test_vae_equals_pytorch(loaded):
  prior, ref = loaded
  assert _rel(prior.encode(prior.params, jnp.asarray(ref["image"])), ref["latent"]) < 1e-5
  want = np.clip(ref["decoded"], 0.0, 1.0)  # `decode` returns images clipped to [0, 1]
  assert _rel(prior.decode(prior.params, jnp.asarray(ref["latent"])), want) < 1e-5


def _copy(tmp_path, family="sd1") -> pathlib.Path:
  folder = tmp_path / family
  shutil.copytree(FIXTURES / family, folder)
  return folder


def test_diffusers_flax_numerics_are_what_the_fix_removes(tmp_path):
  """The same folder computed as the diffusers Flax classes do (approximate GELU, GroupNorm
  eps 1e-5, `jax3d.numerics = flax`) is off by far more than the bar: the fix is needed."""
  folder = _copy(tmp_path)
  index = json.loads((folder / "model_index.json").read_text())
  (folder / "model_index.json").write_text(json.dumps({**index, "jax3d": {"numerics": "flax"}}))
  ref = np.load(folder / "reference.npz")
  assert _rel(_eps(sd_loader.load_diffusers_prior(folder), ref, 1.0), ref["eps64_cond"]) > 2e-5


@pytest.mark.parametrize("component,key,value", [
    ("unet", "norm_num_groups", 16), ("unet", "center_input_sample", True),
    ("unet", "class_embed_type", "timestep"), ("unet", "mid_block_type", "UNetMidBlock2D"),
    ("unet", "down_block_types", ["CrossAttnDownBlock2D", "ResnetDownsampleBlock2D"]),
    ("vae", "shift_factor", 0.0609),
    ("unet", "_class_name", "UNetSpatioTemporalConditionModel"),
])
def test_settings_the_flax_classes_would_ignore_are_refused(tmp_path, capsys, component, key,
                                                            value):
  folder = _copy(tmp_path)
  path = folder / component / "config.json"
  path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
  needle = str(value) if key == "_class_name" else key
  with pytest.raises(UserError, match=needle):
    sd_loader.load_diffusers_prior(folder)
  code = cli.main(["sample", "a red cube", "--prior", str(folder), "--num", "1", "--steps", "1",
                   "--out", str(tmp_path / "s.png")])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1 and needle in err, err
  assert not (tmp_path / "s.png").exists()


def test_a_good_load_prints_nothing(tmp_path, capfd):
  folder = _copy(tmp_path, "sd2")
  path = folder / "unet" / "config.json"  # precision-only flags load at any value
  path.write_text(json.dumps({**json.loads(path.read_text()), "upcast_attention": True}))
  sd_loader.load_diffusers_prior(folder)
  out, err = capfd.readouterr()
  assert out == "" and err == "", err


def _mapped_ranges(folder: pathlib.Path) -> list[tuple[int, int]]:
  """Address ranges this process has mapped from files in `folder` (Linux /proc/self/maps)."""
  ranges = []
  for line in pathlib.Path("/proc/self/maps").read_text().splitlines():
    fields = line.split(maxsplit=5)
    if len(fields) == 6 and fields[5].startswith(str(folder)):
      lo, hi = (int(v, 16) for v in fields[0].split("-"))
      ranges.append((lo, hi))
  return ranges


def test_the_prior_cache_loads_the_same_params_and_misses_an_edited_folder(tmp_path,
                                                                           monkeypatch):
  """With $JAX3D_PRIOR_CACHE the first load writes each component in Flax layout, the second
  maps it (no conversion, no shape check, no copy) with the same params; touching a weight
  file or editing a config misses."""
  folder = _copy(tmp_path)
  cache = tmp_path / "cache"
  monkeypatch.setenv(sd_loader.CACHE_ENV, str(cache))
  first = sd_loader.load_diffusers_prior(folder)
  assert len(list(cache.glob("*.safetensors"))) == 3  # unet, text encoder, vae
  calls = []
  monkeypatch.setattr(sd_loader, "pytorch_to_flax", lambda *a: calls.append(a))
  second = sd_loader.load_diffusers_prior(folder)
  assert not calls
  for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ref = np.load(folder / "reference.npz")
  assert _rel(_eps(second, ref, 1.0), ref["eps64_cond"]) < 1e-5
  # A hit copies nothing: every array whose size the cache file aligns is used in place.
  mapped = _mapped_ranges(cache)
  aligned = [x for x in jax.tree.leaves(second.params) if x.nbytes % sd_loader.ALIGNMENT == 0]
  assert len(aligned) > 0.9 * len(jax.tree.leaves(second.params))
  for x in aligned:
    assert any(lo <= x.unsafe_buffer_pointer() < hi for lo, hi in mapped)
  weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
  os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
  with pytest.raises(TypeError):  # the stub converter ran: the UNet missed
    sd_loader.load_diffusers_prior(folder)
  assert calls


def test_cache_files_are_safetensors_and_the_cache_folder_follows_the_environment(
    tmp_path, monkeypatch):
  """The cache writer's files read back with the safetensors library itself (bf16 and ints
  too); the cache lives in $JAX3D_PRIOR_CACHE, else under $XDG_CACHE_HOME, and "off" has none."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  arrays = {"a.kernel": rng.normal(size=(3, 5)).astype(np.float32),
            "b": rng.normal(size=(7,)).astype(ml_dtypes.bfloat16),
            "c": np.arange(5, dtype=np.int64), "d": np.zeros((0, 2), np.float32)}
  path = tmp_path / "x.safetensors"
  sd_loader.write_safetensors(path, arrays, {"format": "flax"})
  back = safetensors.numpy.load_file(str(path))
  assert set(back) == set(arrays)
  for k, v in arrays.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape
    np.testing.assert_array_equal(back[k], v)
  mine, fmt = sd_loader._read_safetensors(path)  # pylint: disable=protected-access
  assert fmt == "flax" and all(np.array_equal(mine[k], arrays[k]) for k in arrays)
  monkeypatch.delenv(sd_loader.CACHE_ENV)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert sd_loader.cache_dir() == tmp_path / "xdg" / "jax3d" / "priors"
  monkeypatch.setenv(sd_loader.CACHE_ENV, str(tmp_path / "mine"))
  assert sd_loader.cache_dir() == tmp_path / "mine"
  monkeypatch.setenv(sd_loader.CACHE_ENV, "off")
  assert sd_loader.cache_dir() is None
