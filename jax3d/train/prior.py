"""Training the solids prior (`jax3d train-prior`): ε-prediction on captioned solids renders.

Loss (Ho et al. 2020, Eq. 14): E_{x0, c, t, ε} ‖ε − ε̂(√ᾱ_t x0 + √(1−ᾱ_t) ε, t, c)‖² with the
text encoder trained jointly, captions dropped to "" 10 % of the time (classifier-free
guidance, Ho & Salimans 2022), an EMA of the weights exported at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jax3d import cameras
from jax3d import configuration
from jax3d.errors import UserError
from jax3d.priors import sampling, solids_model
from jax3d.solids import dataset as dataset_lib
from jax3d.train import distributed
from jax3d.train import loop
from jax3d.train import run_folder
from jax3d.train import sharding
from jax3d.train.checkpoint import Checkpointer
from jax3d.train.logging import Logger

PREVIEW_PROMPTS = ("a red cube", "an orange sphere", "a yellow cylinder", "a green cone",
                   "a blue torus", "a purple cone", "a cube", "a torus, side view")


def _tokenize(texts, folder_words_max_length):
  from transformers import CLIPTokenizer  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  from jax3d.priors import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as d:
    tokenizer_lib.write_clip_tokenizer(d, solids_model.VOCAB_WORDS, folder_words_max_length)
    tok = CLIPTokenizer.from_pretrained(d)
  ids = tok(list(texts), padding="max_length", max_length=folder_words_max_length,
            truncation=True).input_ids
  return np.asarray(ids, np.int32)


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  t = cfg.train
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, t.learning_rate, t.warmup_steps, max(t.num_steps, t.warmup_steps + 1),
      t.end_learning_rate)
  return optax.chain(optax.clip_by_global_norm(t.grad_clip), optax.adamw(schedule,
                                                                          weight_decay=0.0))


def view_scheme(cfg: ml_collections.ConfigDict) -> str:
  """The view labels the captions use (`data.view_labels`, a `cameras.VIEW_SCHEMES` entry)."""
  scheme = str(cfg.data.get("view_labels", "dreamfusion"))
  cameras.check_view_scheme(scheme)
  return scheme


def make_loss(nets: solids_model.Networks, cfg: ml_collections.ConfigDict,
              alphas_cumprod: jax.Array, mesh: jax.sharding.Mesh | None = None):
  """`loss(params, data, key)`: the ε-MSE of one random captioned batch drawn from `data`;
  with a `mesh`, the batch is split over its devices (data parallel)."""
  probs = dataset_lib.CaptionProbs(drop=cfg.data.drop, colourless=cfg.data.colourless,
                                   view_suffix=cfg.data.view_suffix,
                                   other_article=cfg.data.other_article)
  batch, hflip = cfg.train.batch_size, cfg.data.hflip
  scheme = view_scheme(cfg)
  num_t = alphas_cumprod.shape[0]

  def loss_fn(params, data, key):
    k_idx, k_cap, k_t, k_eps, k_flip = jax.random.split(key, 5)
    idx = jax.random.randint(k_idx, (batch,), 0, data["images"].shape[0])
    x0 = data["images"][idx] * 2.0 - 1.0
    if mesh is not None:
      x0 = sharding.split_batch(x0, mesh)
    view = data["view_labels"][idx]
    if hflip:
      flip = jax.random.bernoulli(k_flip, 0.5, (batch, 1, 1, 1))
      x0 = jnp.where(flip, x0[:, :, ::-1], x0)
      view = jnp.where(flip[:, 0, 0, 0], dataset_lib.mirrored_views(view, scheme), view)
    caption = dataset_lib.sample_captions(k_cap, data["objects"][idx], view, probs, scheme)
    context = solids_model.encode_text(nets, params["text"], data["tokens"][caption])
    t = jax.random.randint(k_t, (batch,), 0, num_t)
    eps = jax.random.normal(k_eps, x0.shape)
    a = alphas_cumprod[t][:, None, None, None]
    x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps
    eps_hat = solids_model.predict_eps(nets, params["unet"], x_t, t, context)
    return jnp.mean((eps_hat - eps)**2)

  return loss_fn


def make_step(nets: solids_model.Networks, tx: optax.GradientTransformation,
              cfg: ml_collections.ConfigDict, alphas_cumprod: jax.Array,
              mesh: jax.sharding.Mesh | None = None):
  """The jitted train step over (state, data, key); data stays on device as arguments. With
  a `mesh`, state and data are replicated on it and each batch is split over its devices."""
  loss_fn = make_loss(nets, cfg, alphas_cumprod, mesh)
  ema_decay = cfg.train.ema_decay

  @jax.jit
  def step(state, data, key):
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], data, key)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    ema = optax.incremental_update(params, state["ema"], 1.0 - ema_decay)
    new_state = {"params": params, "ema": ema, "opt_state": opt_state}
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  return step


@dataclasses.dataclass
class Setup:
  """What a training run is made of (also used by tests)."""
  nets: solids_model.Networks
  alphas_cumprod: jax.Array
  data: dict[str, jax.Array]
  state: dict[str, Any]
  step: Any
  loss: Any
  train_key: jax.Array
  data_time: float


def prepare(workdir: str, cfg: ml_collections.ConfigDict) -> Setup:
  """Builds networks, the (cached) dataset, the initial state and the jitted step, with
  state and data replicated over every device (of every process) and batches split."""
  model_cfg = configuration.typed(solids_model.ModelConfig, cfg.model, "model")
  nets = solids_model.build(model_cfg)
  alphas = solids_model.alphas_cumprod(model_cfg)
  k_data, k_init, k_train = jax.random.split(jax.random.key(cfg.seed), 3)
  t0 = time.perf_counter()
  ds = _dataset(workdir, k_data, cfg, model_cfg.resolution)
  data = {"images": jnp.asarray(ds.images), "objects": jnp.asarray(ds.objects),
          "view_labels": jnp.asarray(ds.view_labels(view_scheme(cfg))),
          "tokens": jnp.asarray(_tokenize(dataset_lib.caption_texts(view_scheme(cfg)),
                                          model_cfg.max_length))}
  data_time = time.perf_counter() - t0
  params = solids_model.init_params(nets, k_init)
  if cfg.train.get("init_from"):
    params = params_from_folder(params, str(cfg.train.init_from))
  tx = make_optimizer(cfg)
  state = {"params": params, "ema": params, "opt_state": tx.init(params)}
  mesh = sharding.data_mesh()
  data, state = sharding.replicate((data, state), mesh)
  return Setup(nets=nets, alphas_cumprod=alphas, data=data, state=state,
               step=make_step(nets, tx, cfg, alphas, mesh),
               loss=make_loss(nets, cfg, alphas, mesh), train_key=k_train,
               data_time=data_time)


def _dataset(workdir: str, key: jax.Array, cfg: ml_collections.ConfigDict,
             resolution: int) -> dataset_lib.Dataset:
  """The training renders, cached in workdir/dataset.npz; in a multi-process run process 0
  writes the cache and the others read it (the same key renders the same images)."""
  path = os.path.join(workdir, "dataset.npz")
  args = (key, cfg.data.views_per_object, resolution, cfg.data.supersample)
  if not distributed.multi():
    return dataset_lib.build_cached(path, *args)
  ds = dataset_lib.build_cached(path, *args) if distributed.is_main() else None
  distributed.barrier("jax3d-prior-dataset")
  return ds or dataset_lib.build_cached(path, *args)


def params_from_folder(init: dict[str, Any], spec: str) -> dict[str, Any]:
  """`init` with the weights of a trained prior ('solids' or a folder) copied in: fine-tuning.

  The UNet and text encoder must have the shapes `config.model` builds. Token-embedding rows
  are matched by token string, so a folder whose vocabulary lacks words of
  `solids_model.VOCAB_WORDS` (e.g. 'azimuth') fine-tunes with those rows at their init.
  """
  from jax3d.priors import registry  # pylint: disable=g-import-not-at-top
  from jax3d.priors import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  prior = registry.load_prior(spec)
  path = registry.prior_folder(spec)
  with open(os.path.join(path, "tokenizer", "vocab.json")) as f:
    old_vocab = json.load(f)
  new_vocab = tokenizer_lib.build_vocab(solids_model.VOCAB_WORDS)[0]

  def flat(tree):
    return {tuple(str(getattr(k, "key", k)) for k in kp): v
            for kp, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  src = flat({"unet": prior.params["unet"], "text": prior.params["text_encoder"]})
  paths = flat(init)
  emb = ("text", "text_model", "embeddings", "token_embedding", "embedding")
  if set(src) != set(paths) or any(src[k].shape != v.shape for k, v in paths.items()
                                   if k != emb):
    raise UserError(f"{spec}: its UNet or text encoder does not have the shapes config.model "
                    f"builds; set config.model to the folder's architecture")
  table, old_table = np.array(paths[emb]), np.asarray(src[emb])
  for token, i in new_vocab.items():
    if token in old_vocab:
      table[i] = old_table[old_vocab[token]]
  src[emb] = table
  leaves = [jnp.asarray(src[k]) for k in paths]  # `flat` keeps the leaves' order
  return jax.tree.unflatten(jax.tree.structure(init), leaves)


def train(workdir: str, cfg: ml_collections.ConfigDict, stop_after: int | None = None,
          export_to: str | None = None, enable_bar: bool | None = None) -> dict[str, Any]:
  """Trains (or resumes) the solids prior in `workdir`; exports the diffusers folder at the
  end. Holds the folder's lock (`run_folder.Lock`) throughout; in a multi-process run every
  process trains and process 0 alone writes files (and holds the lock)."""
  run_folder.check_writable(workdir)
  distributed.check_same(configuration.to_json(cfg), "the prior's config")
  if not distributed.is_main():
    return _train(workdir, cfg, stop_after, export_to, enable_bar=False)
  with run_folder.Lock(workdir, "train-prior"):
    return _train(workdir, cfg, stop_after, export_to, enable_bar)


def _train(workdir, cfg, stop_after, export_to, enable_bar) -> dict[str, Any]:
  main = distributed.is_main()
  if main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(configuration.to_json(cfg))
  setup = prepare(workdir, cfg)
  nets, alphas, data, state, step = (setup.nets, setup.alphas_cumprod, setup.data,
                                     setup.state, setup.step)
  model_cfg = nets.cfg
  params = state["params"]
  data_time, k_train = setup.data_time, setup.train_key

  preview_tokens = _tokenize(list(PREVIEW_PROMPTS) + [""], model_cfg.max_length)
  sample_fn = make_sampler(nets, alphas, preview_tokens[:-1], preview_tokens[-1],
                           cfg.sample_guidance_scale, model_cfg.resolution)
  logger = Logger(workdir, cfg.train.num_steps, desc="train-prior", enable_bar=enable_bar,
                  write=main)

  def preview(step_idx, st):
    images = distributed.to_host(sample_fn(st["ema"], jax.random.key(1234)))  # a collective
    if not main:
      return
    from jax3d.export import video  # pylint: disable=g-import-not-at-top
    grid = video.image_grid(np.asarray(images), ncols=len(PREVIEW_PROMPTS))
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    video.write_png(os.path.join(workdir, "samples", f"step_{step_idx:06d}.png"), grid)
    logger.image(step_idx, "samples", grid)

  schedule = loop.Schedule(num_steps=cfg.train.num_steps, log_every=cfg.log_every,
                           checkpoint_every=cfg.checkpoint_every,
                           preview_every=cfg.sample_every)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    result = loop.run(lambda s, k: step(s, data, k), state, k_train, schedule,
                      checkpointer, logger, preview_fn=preview if cfg.sample_every else None,
                      meta={"config": cfg.to_dict()}, stop_after=stop_after)
  finally:
    logger.close()
    checkpointer.close()
  summary = {"step": result.step, "final_loss": result.metrics.get("loss"),
             "wall_time_s": result.wall_time, "compile_time_s": result.compile_time,
             "data_time_s": data_time, "resumed_from": result.resumed_from,
             "unet_params": solids_model.count_params(params["unet"]),
             "text_params": solids_model.count_params(params["text"]),
             "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
             "processes": jax.process_count()}
  finished = result.step >= cfg.train.num_steps
  ema = distributed.to_host(result.state["ema"]) if finished else None  # a collective
  if not main:
    return summary
  if finished:
    folder = export_to or os.path.join(workdir, "solids-prior")
    solids_model.save_folder(nets, ema, folder, guidance_scale=cfg.sample_guidance_scale,
                             view_schemes=(view_scheme(cfg),))
    summary["exported"] = folder
  with open(os.path.join(workdir, "train_summary.json"), "w") as f:
    json.dump(summary, f, indent=2, default=str)
  return summary


def make_sampler(nets, alphas_cumprod, tokens: np.ndarray, empty_tokens: np.ndarray,
                 guidance_scale: float, resolution: int, num_steps: int = 25):
  """jit'd `sample(params, key) -> images in [0, 1]`, one image per row of `tokens`."""
  n = tokens.shape[0]
  empty = np.repeat(empty_tokens[None], n, 0)

  @jax.jit
  def sample(params, key):
    ctx = solids_model.encode_text(nets, params["text"], jnp.asarray(tokens))
    unc = solids_model.encode_text(nets, params["text"], jnp.asarray(empty))

    def eps_fn(x, t):
      both = solids_model.predict_eps(nets, params["unet"], jnp.concatenate([x, x]),
                                      jnp.concatenate([t, t]), jnp.concatenate([unc, ctx]))
      e_u, e_c = jnp.split(both, 2)
      return e_u + guidance_scale * (e_c - e_u)

    noise = jax.random.normal(key, (n, resolution, resolution, 3))
    x0 = sampling.ddim_loop(eps_fn, noise, alphas_cumprod, num_steps, clip_sample=True)
    return jnp.clip((x0 + 1.0) / 2.0, 0.0, 1.0)

  return sample
