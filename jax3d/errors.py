"""The exceptions the CLI turns into one line on stderr (see `jax3d.cli.main`).

`UserError` (a mistake a user can fix) exits with code 2; `Interrupted` (SIGINT or SIGTERM)
with 128 + the signal's number; everything else is a bug and keeps its traceback.
"""

import signal


class UserError(Exception):
  """A problem with the user's input: the message says what is wrong and how to fix it."""


class Interrupted(Exception):
  """SIGINT/SIGTERM arrived; `step` is set when training saved a checkpoint first."""

  def __init__(self, step: int | None = None, signum: int = signal.SIGINT):
    name = signal.Signals(signum).name
    if step is None:
      message = (f"interrupted by {name} before the command finished; rerun the same command "
                 f"to finish it (completed checkpoints are kept)")
    else:
      message = (f"interrupted by {name}; checkpoint saved at step {step}: rerun the same "
                 f"command to resume")
    super().__init__(message)
    self.step, self.signum = step, signum

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


def shown(text: str, limit: int = 80) -> str:
  """`text` quoted for an error message, cut to `limit` characters."""
  return repr(text if len(text) <= limit else text[:limit] + "…")
