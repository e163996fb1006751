"""Silences the one deprecation notice diffusers 0.39 / transformers 4.57 print about Flax.

Imported (for its side effect) before any diffusers or transformers import in jax3d.priors;
it drops only the "... classes are deprecated ..." records and leaves every other warning.
"""

import logging
import warnings


class _DropFlaxDeprecation(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return "classes are deprecated and will be removed" not in record.getMessage()


warnings.filterwarnings("ignore", message=r".*classes are deprecated and will be removed.*")

import diffusers.utils.logging as _diffusers_logging  # noqa: E402
import transformers.utils.logging as _transformers_logging  # noqa: E402

for _lib in (_diffusers_logging, _transformers_logging):
  _root = _lib.get_logger()
  for _handler in _root.handlers:
    _handler.addFilter(_DropFlaxDeprecation())
  _root.addFilter(_DropFlaxDeprecation())
  # Records from child loggers also propagate to Python's root logger, whose handlers (set
  # up by absl or basicConfig in some environments) would print the notice unfiltered; the
  # library's own handler above already prints everything else.
  _root.propagate = False
