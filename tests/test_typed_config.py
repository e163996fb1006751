"""`configuration.typed`, the one strict converter from presets to typed configs, and the
registry's reading of a config's `method`."""

from __future__ import annotations

import dataclasses

import ml_collections
import pytest

from jax3d import configuration
from jax3d.errors import UserError
from jax3d.systems import registry


@dataclasses.dataclass(frozen=True)
class Inner:
  n: int
  pair: tuple[float, float]

  def __post_init__(self):
    if self.n < 0:
      raise UserError(f"n must be >= 0, got {self.n}")


@dataclasses.dataclass(frozen=True)
class Outer:
  flag: bool
  rate: float
  name: str
  maybe: float | None
  many: tuple[int, ...]
  inner: Inner


def good():
  return ml_collections.ConfigDict(dict(flag=True, rate=1, name="x", maybe=None, many=[1, 2],
                                        inner=dict(n=3, pair=(0.5, 2))))


def test_typed_builds_nested_values_of_the_annotated_types():
  out = configuration.typed(Outer, good())
  assert out == Outer(flag=True, rate=1.0, name="x", maybe=None, many=(1, 2),
                      inner=Inner(n=3, pair=(0.5, 2.0)))
  assert isinstance(out.rate, float) and isinstance(out.inner.pair[1], float)
  c = good()
  c.maybe = 2
  assert configuration.typed(Outer, c).maybe == 2.0


@pytest.mark.parametrize("path,value,match", [
    ("flag", 1, "'flag' must be True or False"),
    ("rate", "fast", "'rate' must be a number"),
    ("rate", True, "'rate' must be a number"),
    ("name", 3, "'name' must be a string"),
    ("many", 3, "'many' must be a tuple"),
    ("many", [1, 2.5], r"'many\[1\]' must be an integer"),
    ("inner.n", 1.0, "'inner.n' must be an integer"),
    ("inner.pair", (1.0,), "'inner.pair' must have 2 entries"),
    ("inner.n", -1, "inner: n must be >= 0"),
    ("inner", 5, "'inner' must be a group"),
])
def test_typed_rejects_wrong_values_naming_the_key(path, value, match):
  c = good().to_dict()
  node = c
  *parents, leaf = path.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(UserError, match=match):
    configuration.typed(Outer, c)


def test_typed_rejects_unknown_and_missing_keys():
  c = good().to_dict()
  c["inner"]["extra"] = 1
  with pytest.raises(UserError, match=r"unknown config key 'inner.extra'.*known keys at that "
                                      r"level: n, pair"):
    configuration.typed(Outer, c)
  c = good().to_dict()
  del c["rate"]
  with pytest.raises(UserError, match="config key 'rate' is missing"):
    configuration.typed(Outer, c)


@pytest.mark.parametrize("spec", ["dreamfusion:toy", "dreamfusion:toy-analytic",
                                  "dreamfusion:sd", "sjc:toy", "sjc:toy-surface", "sjc:sd",
                                  "prolificdreamer:toy",
                                  "prolificdreamer:sd", "magic3d:toy", "magic3d:toy-analytic",
                                  "magic3d:sd"])
def test_every_shipped_preset_converts_to_its_methods_config(spec):
  method, cfg = registry.resolve(None, spec)
  typed = configuration.typed(registry.system_class(method).Config, cfg)
  assert typed.method == method == cfg.method
  # Round trip: the typed config holds exactly the preset's values.
  assert dataclasses.asdict(typed)["num_steps"] == cfg.num_steps
  assert dataclasses.asdict(typed)["camera"]["height"] == cfg.camera.height


def test_method_comes_from_the_config_and_must_agree_with_the_flag():
  assert registry.resolve(None, "sjc:toy")[0] == "sjc"
  assert registry.resolve("sjc", None)[1].method == "sjc"
  assert registry.resolve(None, None)[0] == registry.DEFAULT_METHOD
  with pytest.raises(UserError, match="contradicts config dreamfusion:toy"):
    registry.resolve("sjc", "dreamfusion:toy")
  with pytest.raises(UserError, match="unknown method 'nerfacto'; choose one of sds, sjc"):
    registry.resolve("nerfacto", None)


def test_a_bad_value_in_a_preset_is_reported_with_its_key():
  _, cfg = registry.resolve(None, "dreamfusion:toy", ["shading.normals=vertex"])
  with pytest.raises(UserError, match="shading: unknown shading.normals 'vertex'"):
    configuration.typed(registry.system_class("sds").Config, cfg)
  _, cfg = registry.resolve(None, "sjc:toy", ["optim.name=sgd"])
  with pytest.raises(UserError, match="optim: unknown optimizer 'sgd'"):
    configuration.typed(registry.system_class("sjc").Config, cfg)
