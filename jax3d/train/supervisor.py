"""Runs a `--distributed` command in a child process and relays its output, so that the loss of
process 0 ends every other process with one line instead of JAX's fatal log.

Process 0 hosts JAX's coordination service. When it dies, JAX's client in every other process
terminates that process from C++ (an absl FATAL log, a stack trace, SIGABRT), which no Python
code in the process can intercept. The parent here joins no JAX run: it forwards the child's
stderr as it comes (progress bars included), holds back JAX's C++ log messages, and when
the child logs a fatal error it prints one `jax3d: error:` line instead and exits 1.
A child that ends any other way gets its held lines printed and its exit code passed on.
SIGTERM is forwarded to the child; the child is killed if the parent dies (Linux: `adopt`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from typing import Callable, Sequence

ENV = "JAX3D_SUPERVISED"  # set in the child to the relay's pid: run, do not supervise again
EXIT_LOST_COORDINATOR = 1  # a runtime failure, as distributed.EXIT_LOST_PEER

# absl/glog lines: a severity letter, MMDD hh:mm:ss.micro, thread id, file:line]
_LOG_LINE = re.compile(rb"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\]")
# The lines a log message goes on with (gRPC's details, a stack trace).
_CONTINUATION = re.compile(rb"^(:|Additional GRPC|\*\*\* |\s)")
_JOINED = re.compile(rb"^process (\d+) of \d+: joined")


def wanted() -> bool:
  """Whether this process should start a supervised child (it is not one itself)."""
  return not os.environ.get(ENV)


class Relay:
  """Forwards a child's stderr bytes to `write`. JAX's C++ log messages (absl format, with
  their continuation lines) are held until the next ordinary line, or until `finish`; from a
  fatal one on, everything is held, and `finish` replaces it with one line."""

  def __init__(self, write: Callable[[bytes], None]):
    self._write = write
    self._partial = b""
    self._held: list[bytes] = []
    self.fatal: bytes | None = None  # the first fatal log line, if any
    self.process: int | None = None  # this process's index, once the child says it joined

  def feed(self, data: bytes) -> None:
    self._partial += data
    while True:
      end = self._partial.find(b"\n")
      if end < 0:
        break
      line, self._partial = self._partial[:end + 1], self._partial[end + 1:]
      self._line(line)
    # A progress bar redraws with '\r' and no newline: pass it on now. Any other piece of a
    # line waits for its end while it may belong to a log message.
    if self._partial.startswith(b"\r") or (
        self._partial and self.fatal is None and not self._held and
        not re.match(rb"^[IWEF]\d{0,4}( |$)", self._partial)):
      self._line(self._partial)
      self._partial = b""

  def _line(self, line: bytes) -> None:
    match = _JOINED.match(line)
    if match:
      self.process = int(match.group(1))
    if self.fatal is not None:
      self._held.append(line)
    elif _LOG_LINE.match(line) or (self._held and _CONTINUATION.match(line)):
      self._held.append(line)
      if line[:1] == b"F":
        self.fatal = line
    else:
      self._release()
      self._write(line)

  def _release(self) -> None:
    for line in self._held:
      self._write(line)
    self._held = []

  def finish(self, returncode: int) -> int:
    """The exit code to report for a child that ended with `returncode`."""
    if self._partial:
      self._line(self._partial)
      self._partial = b""
    if self.fatal is not None:
      # The child's own one-line diagnosis, when it printed one before the abort, else ours.
      own = [x for x in self._held if x.startswith(b"jax3d: error:")]
      who = f"process {self.process}" if self.process is not None else "this process"
      message = self.fatal.split(b"]", 1)[-1].strip().decode(errors="replace")
      message = message.split(". ")[0].rstrip(".")  # its first sentence
      self._write(b"\n" + own[0] if own else (
          f"\njax3d: error: {who}: lost the coordinator, process 0 (JAX: "
          f"{message[:200]}); every process stops. Rerun the same launch command on every "
          f"host to resume from the last complete checkpoint\n").encode())
      self._held = []
      return EXIT_LOST_COORDINATOR
    self._release()
    return returncode if returncode >= 0 else 128 - returncode


def adopt() -> None:
  """In a supervised child, first thing: ask for SIGKILL when the relay dies (Linux prctl
  PR_SET_PDEATHSIG), and leave at once if it is already gone. Done here rather than in a
  `preexec_fn`, which would fork a multithreaded process."""
  parent = os.environ.get(ENV, "")
  if not parent.isdigit():
    return
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
  except (OSError, AttributeError):
    return
  if os.getppid() != int(parent):
    os._exit(EXIT_LOST_COORDINATOR)  # pylint: disable=protected-access


def run(argv: Sequence[str]) -> int:
  """Runs `jax3d ARGV` as a child process with stderr relayed; returns the exit code."""
  env = dict(os.environ, **{ENV: str(os.getpid())})
  child = subprocess.Popen([sys.executable, "-m", "jax3d", *argv], env=env,
                           stderr=subprocess.PIPE)
  out = sys.stderr

  def write(data: bytes) -> None:
    out.write(data.decode(errors="replace"))
    out.flush()

  relay = Relay(write)
  forward = lambda signum, frame: child.send_signal(signum)
  # Ctrl-C reaches the child through the terminal's process group; SIGTERM may not.
  old = {}
  for signum, handler in ((signal.SIGTERM, forward), (signal.SIGINT, signal.SIG_IGN)):
    try:
      old[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread: leave signals alone
      pass
  try:
    fd = child.stderr.fileno()
    while True:
      data = os.read(fd, 65536)
      if not data:
        break
      relay.feed(data)
    returncode = child.wait()
  finally:
    for s, h in old.items():
      signal.signal(s, h)
    if child.poll() is None:
      child.kill()
      child.wait()
  return relay.finish(returncode)


__all__ = ["run", "wanted", "adopt", "Relay", "ENV"]
