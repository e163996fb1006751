"""The methods jax3d knows: name -> (system class, default config).

The runner, every benchmark and the CLI read `SYSTEMS`. Adding a method is one system file
(a class with the `systems.base.System` contract and a typed `Config`), one config file in
configs/ whose presets set `method` to the new name, and one line here.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import ml_collections

from jax3d import configuration
from jax3d.errors import UserError


@dataclasses.dataclass(frozen=True)
class Entry:
  """`system`: "module:Class" (imported on use, so the CLI starts fast); `config`: the
  default config spec (`configuration.load`), e.g. "dreamfusion:toy"."""
  system: str
  config: str


SYSTEMS: dict[str, Entry] = {
    "sds": Entry("jax3d.systems.dreamfusion:DreamFusion", "dreamfusion:toy"),
    "sjc": Entry("jax3d.systems.sjc:SJC", "sjc:toy"),
    "vsd": Entry("jax3d.systems.prolificdreamer:ProlificDreamer", "prolificdreamer:toy"),
    "magic3d": Entry("jax3d.systems.magic3d:Magic3D", "magic3d:toy"),
}
DEFAULT_METHOD = "sds"


def entry(method: str) -> Entry:
  if method not in SYSTEMS:
    raise UserError(f"unknown method {method!r}; choose one of {', '.join(SYSTEMS)}")
  return SYSTEMS[method]


def system_class(method: str) -> type:
  module, _, name = entry(method).system.partition(":")
  return getattr(importlib.import_module(module), name)


def resolve(method: str | None, config_spec: str | None,
            overrides=()) -> tuple[str, ml_collections.ConfigDict]:
  """(method, config) of a command line: the config's `method` picks the system; `method`
  (--method) alone picks its default config; both must agree."""
  if config_spec is None:
    method = method or DEFAULT_METHOD
    config_spec = entry(method).config
  config = configuration.apply_overrides(configuration.load(config_spec), overrides)
  named = config.get("method")
  if named is None:
    raise UserError(f"config {config_spec} sets no `method`; add c.method = one of "
                    f"{', '.join(SYSTEMS)}")
  entry(named)
  if method is not None and method != named:
    raise UserError(f"--method {method} contradicts config {config_spec}, which is for "
                    f"method {named}; drop --method or pass a {method} config")
  return named, config


def check_config(method: str, config: ml_collections.ConfigDict):
  """The method's typed `Config` of `config`; a `configuration.ConfigError` listing every
  problem (unknown, missing, mistyped or out-of-range keys) otherwise."""
  return configuration.typed(system_class(method).Config, config)


def make_system(method: str, prompt: str, config: ml_collections.ConfigDict, prior: Any,
                mesh=None):
  """The method's system on `prompt`: the config checked strictly into the system's typed
  `Config` (configuration.typed), then validated against the prior."""
  return system_class(method)(prompt, check_config(method, config), prior, mesh)


__all__ = ["SYSTEMS", "Entry", "DEFAULT_METHOD", "entry", "system_class", "resolve",
           "check_config", "make_system"]
