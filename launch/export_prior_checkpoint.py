"""Exports the EMA weights of a `jax3d train-prior` run's latest checkpoint as a prior folder.

For a run stopped before its last step (its own export only happens at the end):

  python launch/export_prior_checkpoint.py WORKDIR OUT_FOLDER
"""

import json
import os
import sys

import ml_collections

from jax3d.priors import solids_model
from jax3d.train import checkpoint
from jax3d.train import prior


def main(workdir: str, out: str) -> None:
  with open(os.path.join(workdir, "config.json")) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  setup = prior.prepare(workdir, cfg)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  state, _, step = ckpt.restore(setup.state)
  ckpt.close()
  solids_model.save_folder(setup.nets, state["ema"], out,
                           guidance_scale=cfg.sample_guidance_scale,
                           view_schemes=(prior.view_scheme(cfg),))
  print(f"exported the EMA weights of step {step} to {out}")


if __name__ == "__main__":
  main(*sys.argv[1:])
