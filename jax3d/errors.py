"""The exceptions the CLI turns into one line on stderr (see `jax3d.cli.main`).

`UserError` (a mistake a user can fix) exits with code 2, `Interrupted` (SIGINT/SIGTERM during
training, after a checkpoint) with 130; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A problem with the user's input: the message says what is wrong and how to fix it."""


class Interrupted(Exception):
  """SIGINT/SIGTERM arrived during training; a checkpoint was saved at `step`."""

  def __init__(self, step: int):
    super().__init__(f"interrupted; checkpoint saved at step {step}: rerun the same command "
                     f"to resume")
    self.step = step

