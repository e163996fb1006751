"""A run folder's rules: what makes a run the same run, who may write it, how it is replaced.

- **Marker.** `.jax3d-run` is written first in every run folder; only a folder with it (or,
  from jax3d before the marker, a `config.json` holding a `run`) is a jax3d run. jax3d never
  deletes or moves anything else.
- **Identity.** `config.json` records the run: prompt, method, prior, the sha256 of the
  prior's weights, dtype and the resolved config. A rerun with the same identity resumes; a
  different one is refused unless `--overwrite`.
- **Lock.** A command that writes a run holds an exclusive `fcntl.flock` on `.jax3d-lock` in
  it for its whole life, with its pid in the file. A second process gets one line naming that
  pid. The kernel drops the lock of a process that died, so a stale lock file is taken over.
- **Overwrite.** The old run is renamed aside (`W.replaced-TIME-PID`, one atomic rename) and
  deleted only once the new run has saved its first checkpoint.
- **Atomic files.** JSON results are written to a temporary file and renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Iterator

from jax3d import files
from jax3d.errors import UserError, shown

MARKER = ".jax3d-run"
LOCK = ".jax3d-lock"
CONFIG = "config.json"
# Identity keys added after the first runs were written: what those runs used, and the keys
# an old record cannot be compared on.
_LEGACY_DEFAULTS = {"dtype": "float32"}
_UNRECORDED_BEFORE = ("prior_weights_sha256",)


def check_writable(workdir: str) -> None:
  """A UserError unless `workdir` (or its nearest existing parent) is a writable folder."""
  probe = os.path.abspath(workdir)
  while not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  try:  # A real probe (permission bits say little to root): make and remove a temp folder.
    if not os.path.isdir(probe):
      raise OSError
    os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".jax3d-probe-"))
  except OSError:
    raise UserError(f"cannot write to --workdir {workdir}: {probe} is not a writable folder; "
                    f"choose another folder") from None


def read_record(workdir: str) -> dict | None:
  """The run record in `workdir/config.json` ({"run": identity, "jax3d": version}), or None
  when the file is missing or is not a jax3d record."""
  try:
    with open(os.path.join(workdir, CONFIG)) as f:
      record = json.load(f)
  except (OSError, ValueError):
    return None
  if not isinstance(record, dict) or not isinstance(record.get("run"), dict):
    return None
  return record


def is_run(workdir: str) -> bool:
  return os.path.isfile(os.path.join(workdir, MARKER)) or read_record(workdir) is not None


def _normalize(obj):
  return json.loads(json.dumps(obj, sort_keys=True, default=str))


def differences(old: dict, new: dict) -> list[str]:
  """The identity keys on which a recorded run `old` and a new one differ (keys added since
  old records were written compare as their legacy default, or not at all)."""
  old = _normalize(old)
  out = []
  for key, value in new.items():  # In the identity's own order: prompt first.
    if key not in old and key in _UNRECORDED_BEFORE:
      continue
    if old.get(key, _LEGACY_DEFAULTS.get(key)) != _normalize(value):
      out.append(key)
  return out


def check(workdir: str, identity: dict, overwrite: bool) -> str:
  """What a `generate` in `workdir` would do: "new", "resume" or "replace" (with
  `overwrite`); a UserError for anything else. Reads only."""
  check_writable(workdir)
  if not os.path.isdir(workdir) or not _entries(workdir):
    return "new"
  if not is_run(workdir):
    raise UserError(f"--workdir {workdir} is not empty and holds no jax3d run; jax3d never "
                    f"deletes files it did not make: choose an empty or new folder")
  record = read_record(workdir)
  if record is None:  # The marker without a record: a run stopped before its first write.
    return "replace" if overwrite else "new"
  diff = differences(record["run"], identity)
  if not diff:
    return "resume"
  if overwrite:
    return "replace"
  raise UserError(f"--workdir {workdir} holds a different run (differing in "
                  f"{', '.join(diff)}; its prompt is {shown(str(record['run'].get('prompt')))}"
                  f"); use another --workdir or pass --overwrite to replace that run")


def _entries(workdir: str) -> list[str]:
  return [e for e in os.listdir(workdir) if e != LOCK]


def warn_on_version(workdir: str, version: str) -> None:
  record = read_record(workdir)
  if record is not None and record.get("jax3d") not in (None, version):
    print(f"jax3d: note: this run was started by jax3d {record['jax3d']}; resuming it with "
          f"{version}", file=sys.stderr)


class Lock:
  """An exclusive lock on a run folder (`with Lock(workdir):`), made if missing."""

  def __init__(self, workdir: str, command: str):
    self.workdir, self.command = workdir, command
    self._fd = None

  def __enter__(self) -> Lock:
    os.makedirs(self.workdir, exist_ok=True)
    path = os.path.join(self.workdir, LOCK)
    while True:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES):
          raise
        raise UserError(f"{self.workdir} is in use by another jax3d process ({holder}); wait "
                        f"for it to finish or stop it, or use another folder") from None
      # The folder may have been renamed aside between open and flock: lock the file that
      # is at `path` now.
      try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}, jax3d {self.command}\n".encode())
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def move_aside(workdir: str) -> str:
  """Renames the run in `workdir` to a sibling `WORKDIR.replaced-TIME-PID` (atomic) and
  returns that path; `workdir` is then missing."""
  path = os.path.abspath(workdir).rstrip(os.sep)
  aside = f"{path}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
  try:
    os.rename(path, aside)
  except OSError as e:
    raise UserError(f"cannot move the old run in {workdir} aside to {aside} ({e.strerror}); "
                    f"remove it yourself or use another --workdir") from None
  return aside


def discard(aside: str | None) -> None:
  """Deletes a moved-aside run (after the new run saved its first checkpoint)."""
  if aside and os.path.isdir(aside) and is_run(aside):
    shutil.rmtree(aside, ignore_errors=True)


def write_json(path: str, obj: Any) -> None:
  """`obj` as indented JSON at `path`, atomically (`files.atomic_file`)."""
  with files.atomic_file(path) as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)


def _json_default(x):
  import numpy as np  # pylint: disable=g-import-not-at-top
  if isinstance(x, (np.floating, np.integer, np.bool_)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


@contextlib.contextmanager
def start(workdir: str, identity: dict, version: str, overwrite: bool,
          command: str = "generate") -> Iterator[dict]:
  """Takes `workdir` for a run the caller has `check`ed: lock, check again now that no one
  else can write, move an old run aside if replacing, write the marker and the record.
  Yields {"mode", "aside"}; the lock is held until exit."""
  aside = None
  lock = Lock(workdir, command)
  lock.__enter__()
  try:
    mode = check(workdir, identity, overwrite)
    if mode == "replace":
      aside = move_aside(workdir)
      old, lock = lock, Lock(workdir, command)
      try:
        lock.__enter__()
      finally:
        old.__exit__()
      print(f"jax3d: replacing the run in {workdir}: the old one is at {aside} until this "
            f"run saves its first checkpoint", file=sys.stderr)
    elif mode == "resume":
      warn_on_version(workdir, version)
    with open(os.path.join(workdir, MARKER), "w") as f:
      f.write("a jax3d run folder (see README: A run folder)\n")
    if mode != "resume":
      write_json(os.path.join(workdir, CONFIG), {"run": identity, "jax3d": version})
    yield {"mode": mode, "aside": aside}
  finally:
    lock.__exit__()


__all__ = ["MARKER", "LOCK", "CONFIG", "check_writable", "read_record", "is_run", "check",
           "differences", "Lock", "move_aside", "discard", "write_json", "start"]
