"""Loading ml_collections configs: `--config path.py:preset` plus `--config.key=value` overrides.

This follows the big_vision / flax-examples convention. A config file defines
`get_config(preset: str | None) -> ConfigDict`. `path.py` is looked up first relative to the
working directory and then among the presets shipped in the package (`jax3d.configs`), so
`--config configs/dreamfusion.py:toy` and `--config dreamfusion:toy` work from anywhere.

Presets are the only place where setting values live. Code reads them through `typed`, the one
strict converter from a ConfigDict to a frozen dataclass: every field must be given, no key may
be unknown, and each value must have its annotated type; the error names the key.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.resources
import importlib.util
import inspect
import json
import math
import os
import types
import typing
from typing import Any, Sequence, TypeVar

import ml_collections

from jax3d.errors import UserError


def shipped_config_path(name: str) -> str:
  """Path of a preset file shipped in `jax3d.configs` (e.g. 'dreamfusion')."""
  name = os.path.basename(name)
  if not name.endswith(".py"):
    name += ".py"
  return str(importlib.resources.files("jax3d.configs").joinpath(name))


def _shipped_names() -> list[str]:
  return sorted(p.name[:-3] for p in importlib.resources.files("jax3d.configs").iterdir()
                if p.name.endswith(".py") and not p.name.startswith("_"))


def _resolve(path: str) -> str:
  """A bare name (no folder, no `.py`) is a shipped config, whatever lies in the working
  folder; anything else is a file, falling back to the shipped file of that name."""
  if os.sep not in path and not path.endswith(".py"):
    shipped = shipped_config_path(path)
    if os.path.isfile(shipped):
      return shipped
    local = f" (for the file in this folder write ./{path})" if os.path.exists(path) else ""
    raise UserError(f"config {path!r} is not a shipped config{local}; give a path to a .py "
                    f"config or one of the shipped names: {', '.join(_shipped_names())}")
  if os.path.isfile(path):
    if not path.endswith(".py"):
      raise UserError(f"config file {path!r} is not a .py file; configs are Python files "
                      f"defining get_config(preset)")
    return path
  shipped = shipped_config_path(path)
  if path.endswith(".py") and os.path.isfile(shipped):
    return shipped
  raise UserError(f"config file {path!r} not found; give a path to a .py config or one of "
                  f"the shipped names: {', '.join(_shipped_names())}")


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
  except Exception as e:  # A user's config file with a bug is a user error.
    raise UserError(f"config {path}{':' + preset if preset else ''} failed: "
                    f"{type(e).__name__}: {e}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"config {path}: get_config must return an ml_collections.ConfigDict, got "
                    f"{type(config).__name__}")
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


T = TypeVar("T")


class ConfigError(UserError):
  """Every problem found in one config (the CLI prints one line per problem)."""

  def __init__(self, problems: Sequence[str]):
    super().__init__("; ".join(problems))
    self.problems = list(problems)


@dataclasses.dataclass(frozen=True)
class Range:
  """The values a number may take, as an annotation `typed` checks:
  `Annotated[int, Range(1, 4096)]` (ends included unless `lo_open`)."""
  lo: float | None = None
  hi: float | None = None
  lo_open: bool = False

  def __contains__(self, value) -> bool:
    above = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
    return above and (self.hi is None or value <= self.hi)

  def __str__(self) -> str:
    if self.hi is None:
      return f"{'>' if self.lo_open else '>='} {self.lo}"
    if self.lo is None:
      return f"<= {self.hi}"
    return f"{'(' if self.lo_open else '['}{self.lo}, {self.hi}]"


def _problems(e: UserError) -> list[str]:
  return e.problems if isinstance(e, ConfigError) else [str(e)]


def typed(cls: type[T], config: ml_collections.ConfigDict | dict, key: str = "") -> T:
  """The frozen dataclass `cls` built from `config`, strictly.

  Every field of `cls` must be a key of `config` and every key a field; values are checked
  against the field annotations (bool, int, float, str, `Literal[...]`, `X | None`,
  `tuple[X, ...]`, fixed-length tuples, `Annotated[X, Range(lo, hi)]` and nested dataclasses,
  recursively). A value check in the dataclass itself (`__post_init__` raising `UserError`)
  is reported with the key prefix. Every problem is collected before one `ConfigError` is
  raised. `key` is the dotted path of `config` (for messages).
  """
  if not isinstance(config, (ml_collections.ConfigDict, dict)):
    raise UserError(f"config key {key!r} must be a group of settings, got {config!r}")
  values = dict(config.items())
  names = [f.name for f in dataclasses.fields(cls) if f.init]
  where = f"{key}." if key else ""
  problems = []
  unknown = [where + k for k in sorted(set(values) - set(names))]
  if unknown:
    problems.append(f"unknown config key{'s' * (len(unknown) > 1)} "
                    f"{', '.join(map(repr, unknown))}; known keys at that level: "
                    f"{', '.join(sorted(names))}")
  missing = [where + n for n in names if n not in values]
  if missing:
    problems.append(f"config key{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))} "
                    f"{'are' if len(missing) > 1 else 'is'} missing; a preset in configs/ "
                    f"must set {'them' if len(missing) > 1 else 'it'}")
  hints = typing.get_type_hints(cls, include_extras=True)
  kwargs = {}
  for n in names:
    if n in values:
      try:
        kwargs[n] = _coerce(hints[n], values[n], where + n)
      except UserError as e:
        problems += _problems(e)
  if problems:
    raise ConfigError(problems)
  try:
    return cls(**kwargs)
  except UserError as e:
    raise ConfigError([f"{key}: {p}" if key else p for p in _problems(e)]) from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
  """`value` as annotation `tp` (see `typed`), or a UserError naming `key`."""
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin is typing.Annotated:
    value = _coerce(args[0], value, key)
    for bound in args[1:]:
      if isinstance(bound, Range) and value not in bound:
        raise UserError(f"config key {key!r} is {value!r}; allowed: {bound}")
    return value
  if dataclasses.is_dataclass(tp):
    return typed(tp, value, key)
  if origin in (typing.Union, types.UnionType):
    if value is None and type(None) in args:
      return None
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:
      return _coerce(options[0], value, key)
    raise TypeError(f"unsupported union annotation {tp} for config key {key!r}")
  if origin is typing.Literal:
    if value not in args:
      raise UserError(f"config key {key!r} must be one of {', '.join(map(repr, args))}, got "
                      f"{value!r}")
    return value
  if origin is tuple:
    if not isinstance(value, (tuple, list)):
      raise UserError(f"config key {key!r} must be a tuple like (1, 2), got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
      raise UserError(f"config key {key!r} must have {len(args)} entries, got {len(value)}: "
                      f"{tuple(value)}")
    return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
  if tp is bool:
    if not isinstance(value, bool):
      raise UserError(f"config key {key!r} must be True or False, got {value!r}")
    return value
  if tp is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise UserError(f"config key {key!r} must be an integer, got {value!r}")
    return value
  if tp is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise UserError(f"config key {key!r} must be a number, got {value!r}")
    if not math.isfinite(value):
      raise UserError(f"config key {key!r} is {value!r}; it must be a finite number")
    return float(value)
  if tp is str:
    if not isinstance(value, str):
      raise UserError(f"config key {key!r} must be a string, got {value!r}")
    return value
  raise TypeError(f"unsupported annotation {tp} for config key {key!r}")
