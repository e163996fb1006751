"""Loading ml_collections configs: `--config path.py:preset` plus `--config.key=value` overrides.

This follows the big_vision / flax-examples convention. A config file defines
`get_config(preset: str | None) -> ConfigDict`. `path.py` is looked up first relative to the
working directory and then among the presets shipped in the package (`jax3d.configs`), so
`--config configs/dreamfusion.py:toy` and `--config dreamfusion:toy` work from anywhere.
"""

from __future__ import annotations

import ast
import importlib.resources
import importlib.util
import inspect
import json
import os
from typing import Any, Sequence

import ml_collections

from jax3d.errors import UserError


def shipped_config_path(name: str) -> str:
  """Path of a preset file shipped in `jax3d.configs` (e.g. 'dreamfusion')."""
  name = os.path.basename(name)
  if not name.endswith(".py"):
    name += ".py"
  return str(importlib.resources.files("jax3d.configs").joinpath(name))


def _resolve(path: str) -> str:
  if os.path.isfile(path):
    if not path.endswith(".py"):
      raise UserError(f"config file {path!r} is not a .py file; configs are Python files "
                      f"defining get_config(preset)")
    return path
  shipped = shipped_config_path(path)
  if os.path.isfile(shipped):
    return shipped
  available = sorted(
      p.name[:-3] for p in importlib.resources.files("jax3d.configs").iterdir()
      if p.name.endswith(".py") and not p.name.startswith("_"))
  raise UserError(f"config file {path!r} not found; give a path to a .py config or one of "
                  f"the shipped names: {', '.join(available)}")


def load(spec: str, default_preset: str | None = None) -> ml_collections.ConfigDict:
  """Loads `path.py[:preset]` by calling the file's `get_config(preset)`."""
  path, _, preset = spec.partition(":")
  preset = preset or default_preset
  path = _resolve(path)
  module_spec = importlib.util.spec_from_file_location(
      f"_jax3d_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # A user's config file with a bug is a user error.
    raise UserError(f"config file {path} failed to load: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path} has no get_config(preset) function")
  takes_preset = bool(inspect.signature(module.get_config).parameters)
  if not takes_preset and preset:
    raise UserError(f"config {path} has no presets (its get_config takes no argument); drop "
                    f"':{preset}'")
  try:
    config = module.get_config(preset) if takes_preset else module.get_config()
  except KeyError as e:
    raise UserError(f"config {path} has no preset {preset!r}: {e}") from e
  except Exception as e:  # A user's config file with a bug is a user error.
    raise UserError(f"config {path}:{preset} failed: {type(e).__name__}: {e}") from e
  return config


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # A bare word is a string.


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Applies `key.sub=value` overrides; unknown keys and wrong types are user errors."""
  config = ml_collections.ConfigDict(config.to_dict(), type_safe=True)
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep:
      raise UserError(f"override {item!r} needs a value: --config.{key}=VALUE")
    parts = key.split(".")
    parent = config
    for i, part in enumerate(parts):
      if not isinstance(parent, ml_collections.ConfigDict):
        raise UserError(f"{'.'.join(parts[:i])!r} is a value, not a group; "
                        f"--config.{key} cannot set a key below it")
      if part not in parent:
        raise UserError(f"unknown config key {'.'.join(parts[:i + 1])!r} in --config.{key}; "
                        f"known keys at that level: {', '.join(sorted(parent.keys()))}")
      node, parent = parent, parent[part]
    leaf = parts[-1]
    old = node[leaf]
    value = _parse_value(raw)
    if isinstance(old, str):
      value = raw
    elif isinstance(old, bool):
      if not isinstance(value, bool):
        raise UserError(f"--config.{key} must be True or False, got {raw!r}")
    elif isinstance(old, (int, float)) and not isinstance(old, bool):
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"--config.{key} must be a number, got {raw!r}")
      if isinstance(old, int) and isinstance(value, float) and not value.is_integer():
        raise UserError(f"--config.{key} must be an integer, got {raw!r}")
      value = type(old)(value)
    elif isinstance(old, (tuple, list)):
      if not isinstance(value, (tuple, list)):
        raise UserError(f"--config.{key} must be a tuple like (1, 2), got {raw!r}")
      value = type(old)(value)
    elif isinstance(old, ml_collections.ConfigDict):
      raise UserError(f"--config.{key} is a group of settings; set one of its keys: "
                      f"{', '.join(sorted(old.keys()))}")
    try:
      node[leaf] = value
    except TypeError as e:
      raise UserError(f"--config.{key}: {e}") from e
  return config


def to_json(config: ml_collections.ConfigDict) -> str:
  """A stable JSON dump of a config (the `config.json` written next to results)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
