"""Multi-process runs: `jax.distributed` start-up, the main process, and cross-process checks.

Every process runs the same command; `jax.distributed.initialize` joins them, after which
`jax.devices()` lists every process's devices and one mesh (`train.sharding.make_mesh`) spans
them all. Process 0 is the *main* process: it alone writes the run folder's files (config.json,
TensorBoard, previews, final exports) and shows the progress bar; every process takes part in
each step, in orbax's checkpoint saves and restores, and in the gathers that bring other
processes' particles to process 0 for previews and export.

Where the coordinator is: `--coordinator HOST:PORT --num-processes N --process-id I`, or the
environment variables JAX3D_COORDINATOR, JAX3D_NUM_PROCESSES, JAX3D_PROCESS_ID, or nothing at
all on TPU pods and SLURM (JAX detects them).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sys
import threading
import time

import numpy as np

from jax3d.errors import UserError

# jax is imported inside the functions: the CLI builds its parser (`add_flags`) before it.

ENV = {"coordinator": "JAX3D_COORDINATOR", "num_processes": "JAX3D_NUM_PROCESSES",
       "process_id": "JAX3D_PROCESS_ID"}
# Seconds to wait for every process to join, and for a silent process to be declared dead
# (jax3d's watchdog then stops the others with one line).
DEFAULT_INIT_TIMEOUT_S = 120
DEFAULT_HEARTBEAT_TIMEOUT_S = 60
EXIT_LOST_PEER = 1  # a runtime failure, not bad input (2)


def add_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--distributed", action="store_true",
                      help="join a multi-process run (jax.distributed): TPU pods and SLURM are "
                           "detected; elsewhere give --coordinator, --num-processes and "
                           "--process-id (or JAX3D_COORDINATOR, JAX3D_NUM_PROCESSES, "
                           "JAX3D_PROCESS_ID)")
  parser.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
  parser.add_argument("--num-processes", type=int, default=None)
  parser.add_argument("--process-id", type=int, default=None)
  parser.add_argument("--init-timeout", type=int, default=DEFAULT_INIT_TIMEOUT_S,
                      help="seconds to wait for every process to join")
  parser.add_argument("--heartbeat-timeout", type=int, default=DEFAULT_HEARTBEAT_TIMEOUT_S,
                      help="seconds of silence after which a process counts as dead and the "
                           "others stop")


def _setting(args, name: str, cast=str):
  value = getattr(args, name, None)
  if value is None and os.environ.get(ENV[name]):
    try:
      value = cast(os.environ[ENV[name]])
    except ValueError:
      raise UserError(f"{ENV[name]}={os.environ[ENV[name]]!r} is not a valid "
                      f"{name.replace('_', ' ')}") from None
  return value


def validate(args) -> tuple[str | None, int | None, int | None]:
  """(coordinator, number of processes, process id) from the flags or the JAX3D_* variables
  (all None where JAX detects the cluster); UserError for flags that cannot work."""
  if not getattr(args, "distributed", False):
    for flag in ("coordinator", "num_processes", "process_id"):
      if getattr(args, flag, None) is not None:
        raise UserError(f"--{flag.replace('_', '-')} needs --distributed")
    return None, None, None
  coordinator = _setting(args, "coordinator")
  num_processes = _setting(args, "num_processes", int)
  process_id = _setting(args, "process_id", int)
  given = [v is not None for v in (coordinator, num_processes, process_id)]
  if any(given) and not all(given):
    raise UserError("give all of --coordinator, --num-processes and --process-id (or their "
                    "JAX3D_* variables), or none of them on a TPU pod or under SLURM")
  for name in ("init_timeout", "heartbeat_timeout"):
    if getattr(args, name) < 1:
      raise UserError(f"--{name.replace('_', '-')} must be >= 1 second, got "
                      f"{getattr(args, name)}")
  if all(given):
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise UserError(f"--process-id must be in [0, {num_processes}) for --num-processes "
                      f"{num_processes}, got {process_id}")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
      raise UserError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
  return coordinator, num_processes, process_id


def initialize(args) -> None:
  """Joins the multi-process run `args` describe (nothing without --distributed)."""
  coordinator, num_processes, process_id = validate(args)
  if not getattr(args, "distributed", False):
    return
  if coordinator is not None:
    host, _, port = coordinator.rpartition(":")
    # JAX aborts the process (no exception) when it cannot register with the coordinator, so
    # the coordinator's port is checked here first: free on process 0, answering elsewhere.
    if process_id == 0:
      _check_port_free(int(port))
    else:
      _wait_for_coordinator(host, int(port), args.init_timeout)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.config.jax_platforms in ("cpu",) or os.environ.get("JAX_PLATFORMS") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # A failed process then fails its peers' next collective (one line, `exit_if_lost_peer`)
  # instead of the coordination service aborting them with a multi-line fatal log; a hung one
  # is caught by the watchdog.
  jax.config.update("jax_enable_recoverability", True)
  try:
    jax.distributed.initialize(coordinator, num_processes, process_id,
                               initialization_timeout=args.init_timeout,
                               heartbeat_timeout_seconds=args.heartbeat_timeout)
  except Exception as e:  # pylint: disable=broad-except
    where = coordinator or "the detected cluster"
    raise UserError(f"could not join the distributed run at {where} within "
                    f"{args.init_timeout} s ({_first_line(e)}); start every process with the same "
                    f"--coordinator and --num-processes and distinct --process-id, with "
                    f"process 0 able to listen on that port") from None
  _WATCHDOG.start(args.heartbeat_timeout)
  if jax.process_index() != 0:  # process 0 shows the progress bar instead
    print(f"process {jax.process_index()} of {jax.process_count()}: joined with "
          f"{jax.local_device_count()} of {jax.device_count()} devices; process 0 reports",
          file=sys.stderr)


def _die(message: str) -> None:
  """Ends this process at once with one line: an orderly exit would wait `shutdown_timeout`
  seconds at JAX's shutdown barrier for the lost process."""
  import jax  # pylint: disable=g-import-not-at-top
  sys.stderr.write(f"\njax3d: error: process {jax.process_index()}: {message}. Rerun the same "
                   f"launch command on every host to resume from the last complete "
                   f"checkpoint\n")
  sys.stderr.flush()
  os._exit(EXIT_LOST_PEER)  # pylint: disable=protected-access


class _Watchdog:
  """Stops this process with one line when a peer stops answering for `timeout_s` (hung, or
  its host gone), through counters in the coordination service's key-value store: process 0
  watches every other process, the others watch process 0 (whose exit then fails everyone's
  next collective). `stop()` before a normal exit."""

  def __init__(self):
    self._stopped = threading.Event()
    self._round = 0.0

  def start(self, timeout_s: float) -> None:
    import jax  # pylint: disable=g-import-not-at-top
    from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
    client = jax_distributed.global_state.client
    me, n = jax.process_index(), jax.process_count()
    if n < 2 or client is None:
      return
    period = max(0.5, timeout_s / 10)
    watched = list(range(1, n)) if me == 0 else [0]
    self._round = time.monotonic()

    def beat():
      count = 0
      last = {j: ("", time.monotonic()) for j in watched}
      while not self._stopped.is_set():
        count += 1
        try:
          client.key_value_set(f"jax3d/beat/{me}", str(count), allow_overwrite=True)
          now = time.monotonic()
          for j in list(last):
            try:
              value = client.key_value_try_get(f"jax3d/beat/{j}")
            except Exception:  # pylint: disable=broad-except  (not written yet)
              value = ""
            if value == "done":
              del last[j]
            elif value != last[j][0]:
              last[j] = (value, now)
            elif now - last[j][1] > timeout_s and not self._stopped.is_set():
              _die(f"process {j} has not answered for {timeout_s:g} s (hung, or its host is "
                   f"gone); every process stops")
        except Exception as e:  # pylint: disable=broad-except
          if not self._stopped.is_set():
            _die(f"lost the coordinator, process 0 ({_first_line(e)}); every process stops")
        self._round = time.monotonic()
        self._stopped.wait(period)

    def deadman():
      while not self._stopped.wait(period):
        if time.monotonic() - self._round > timeout_s + period:
          _die(f"no answer from the coordinator, process 0, for {timeout_s:g} s (hung, or "
               f"its host is gone); every process stops")

    for fn in (beat, deadman):
      threading.Thread(target=fn, name=f"jax3d-{fn.__name__}", daemon=True).start()

  def stop(self) -> None:
    if self._stopped.is_set():
      return
    self._stopped.set()
    from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
    client = jax_distributed.global_state.client
    if client is not None:
      try:
        import jax  # pylint: disable=g-import-not-at-top
        client.key_value_set(f"jax3d/beat/{jax.process_index()}", "done", allow_overwrite=True)
      except Exception:  # pylint: disable=broad-except
        pass


_WATCHDOG = _Watchdog()


def finish(timeout_s: float = 60.0) -> None:
  """Ends a multi-process run in order: the watchdog stops, every process meets at a barrier,
  the others leave the coordination service, then process 0 (which hosts it) leaves. With
  recoverable tasks JAX's own shutdown does not wait for the others, and a process whose
  service is gone aborts."""
  jax = sys.modules.get("jax")
  if jax is None or not jax.distributed.is_initialized():
    return
  _WATCHDOG.stop()
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  client = jax_distributed.global_state.client
  n = jax.process_count()
  try:
    client.wait_at_barrier("jax3d-finish", int(timeout_s * 1000))
    if jax.process_index() == 0:
      deadline = time.monotonic() + timeout_s
      while len(client.get_live_nodes(list(range(n)))) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    jax.distributed.shutdown()
  except Exception:  # pylint: disable=broad-except  (a peer already gone: nothing to order)
    sys.stderr.flush()
    os._exit(EXIT_LOST_PEER)  # pylint: disable=protected-access


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:200] if text else type(error).__name__


def exit_if_lost_peer(error: BaseException) -> None:
  """In a multi-process run, ends this process with one line on stderr and exit code 1 when
  `error` is the runtime's failure of a collective (a peer process died: its sockets closed);
  returns otherwise. `os._exit`, because an orderly exit waits `shutdown_timeout` seconds at
  JAX's shutdown barrier for the dead process and then aborts with a multi-line log."""
  jax = sys.modules.get("jax")
  if jax is None or not jax.distributed.is_initialized() or jax.process_count() < 2:
    return
  if not isinstance(error, jax.errors.JaxRuntimeError):
    return
  _die(f"a collective with the other processes failed ({_first_line(error)}); another "
       f"process has probably died")


def _check_port_free(port: int) -> None:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      s.bind(("", port))
    except OSError as e:
      raise UserError(f"process 0 cannot listen on port {port} ({e.strerror}); choose a free "
                      f"port in --coordinator for every process") from None


def _wait_for_coordinator(host: str, port: int, timeout_s: float) -> None:
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, port), timeout=2.0):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise UserError(f"could not reach the coordinator {host}:{port} within {timeout_s:g} s "
                        f"({e.strerror or e}); start process 0 with the same --coordinator, "
                        f"or raise --init-timeout") from None
      time.sleep(0.5)


def process_index() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index()


def is_main() -> bool:
  return process_index() == 0


def multi() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_count() > 1


def check_same(text: str, what: str) -> None:
  """Refuses a run whose processes disagree on `text` (e.g. the resolved config): its sha256
  is gathered from every process and compared."""
  if not multi():
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
  every = np.asarray(multihost_utils.process_allgather(digest))
  odd = [i for i in range(every.shape[0]) if not np.array_equal(every[i], every[0])]
  if odd:
    raise UserError(f"the processes disagree on {what} (process {odd[0]} differs from process "
                    f"0); run the same jax3d version and the same command on every host")


def any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process (every process calls this at the same point)."""
  if not multi():
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())


def barrier(name: str) -> None:
  if multi():
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def from_main(array: np.ndarray) -> np.ndarray:
  """The main process's `array` on every process (a collective; same shape everywhere)."""
  if not multi():
    return array
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.broadcast_one_to_all(array))


def to_host(tree):
  """Every leaf of a pytree of (possibly multi-process) arrays as a NumPy array on this host
  (a collective: every process calls it)."""
  if not multi():
    return tree
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
                      tree)


__all__ = ["add_flags", "validate", "initialize", "finish", "exit_if_lost_peer", "process_index",
           "is_main", "multi", "check_same", "any_process", "barrier", "from_main", "to_host",
           "ENV"]
