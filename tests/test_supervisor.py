"""The relay between a `--distributed` child and the terminal: ordinary output passes at once,
JAX's C++ log messages wait, and a fatal one becomes a single line (captured logs of jaxlib
0.10 when process 0 dies)."""

from jax3d.train import supervisor

JOINED = b"process 1 of 2: joined with 2 of 4 devices; process 0 reports\n"
WARNING = (b"W1128 07:13:02.486731   11327 preemption_sync_manager.cc:147] Failed to retrieve "
           b"preemption notice from coordination service: UNAVAILABLE: Socket closed\n"
           b"Additional GRPC error information from remote target coordination_service while "
           b"calling /xla.coordination.CoordinationService/GetKeyValue:\n"
           b":UNKNOWN:Error received from peer  {grpc_status:14}. This is only expected if "
           b"one of the tasks is unhealthy.\n")
ERROR = (b"E1128 07:11:46.700324   10933 coordination_service_agent.cc:289] Polled an error "
         b"from coordination service (this can be an error from this or another task).\n")
FATAL = (b"F1128 07:11:46.700391   10933 client.h:80] Terminating process because the JAX "
         b"distributed service detected fatal errors. This most likely indicates that another "
         b"task died.\n"
         b"Additional GRPC error information from remote target coordination_service:\n"
         b":UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:\"Socket closed\"}\n"
         b"*** Check failure stack trace: ***\n"
         b"    @     0x7fd70e040634  absl::log_internal::LogMessage::SendToLog()\n"
         b"    @     0x7fd71d4a71f5  (unknown)\n")
BAR = [b"\rsds:   0%|          | 0/400", b"\rsds:   1%|          | 4/400 [00:02<03:10]"]


def relay(*chunks):
  out = []
  r = supervisor.Relay(out.append)
  for chunk in chunks:
    r.feed(chunk)
  return r, out


def test_output_and_progress_bars_pass_at_once():
  r, out = relay(JOINED, BAR[0])
  assert out == [JOINED, BAR[0]]  # the bar's redraw has no newline and is not held
  r.feed(BAR[1])
  assert out[-1] == BAR[1] and r.process == 1
  assert r.finish(0) == 0


def test_a_log_message_waits_for_the_next_ordinary_line_and_keeps_its_order():
  r, out = relay(JOINED, WARNING, ERROR)
  assert out == [JOINED]
  r.feed(b"jax3d: done\n")
  assert b"".join(out) == JOINED + WARNING + ERROR + b"jax3d: done\n"
  r.feed(WARNING)
  assert r.finish(0) == 0 and b"".join(out).endswith(WARNING)  # released at a clean end


def test_a_fatal_log_becomes_one_line_and_exit_1():
  # Fed in odd-sized pieces, as a pipe delivers them.
  data = JOINED + WARNING + ERROR + FATAL
  r, out = relay(*[data[i:i + 37] for i in range(0, len(data), 37)])
  assert r.finish(-6) == supervisor.EXIT_LOST_COORDINATOR
  text = b"".join(out).decode()
  lines = [x for x in text.splitlines() if x.strip()]
  assert lines[0] == JOINED.decode().strip() and len(lines) == 2, text
  assert lines[1].startswith("jax3d: error: process 1: lost the coordinator, process 0")
  assert "(JAX: Terminating process because the JAX distributed service detected fatal " \
         "errors); every process stops" in lines[1], lines[1]
  assert "Rerun the same launch command" in lines[1] and "@" not in text


def test_the_childs_own_diagnosis_wins_over_a_fatal_log_that_raced_it():
  own = (b"\njax3d: error: process 1: a collective with the other processes failed (Gloo); "
         b"another process has probably died. Rerun the same launch command\n")
  r, out = relay(JOINED, ERROR, FATAL, own)
  assert r.finish(1) == 1
  assert [x for x in b"".join(out).splitlines() if x.strip()] == [JOINED.strip(),
                                                                  own.strip()]


def test_other_deaths_pass_everything_and_a_signal_exit_code():
  r, out = relay(JOINED, ERROR)
  assert r.finish(-9) == 137 and b"".join(out) == JOINED + ERROR


def test_a_child_whose_relay_is_gone_leaves_at_once():
  import os
  import subprocess
  import sys
  code = "from jax3d.train import supervisor; supervisor.adopt(); print('ran')"
  gone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env=dict(os.environ, **{supervisor.ENV: "1"}), timeout=60)
  assert gone.returncode == supervisor.EXIT_LOST_COORDINATOR and "ran" not in gone.stdout
  mine = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env=dict(os.environ, **{supervisor.ENV: str(os.getpid())}), timeout=60)
  assert mine.returncode == 0 and "ran" in mine.stdout
