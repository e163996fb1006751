"""The one exception type for mistakes a user can fix.

Anything raised as `UserError` reaches the user as one line on stderr and exit code 2
(see `jax3d.cli.main`); everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A problem with the user's input: the message says what is wrong and how to fix it."""


def check(condition: bool, message: str) -> None:
  """Raises `UserError(message)` unless `condition` holds."""
  if not condition:
    raise UserError(message)
