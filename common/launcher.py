"""launch.py: `accelerate launch` (its own options, parsed by Accelerate), with what a terminal and a scheduler need
of it: Ctrl-C and SIGTERM reach every training process exactly once, the launcher never exits before them, and the
last line is the training's own (a stop, an error) or one line of the launcher's, never torchrun's report or a
CalledProcessError traceback. Its exit status is the training's: 0, 2 (a user error), 3 (stopped with a checkpoint:
the same command resumes), 130 (stopped at once by a second Ctrl-C).

Accelerate runs on a thread of its own: off the main thread, torchrun installs no signal handlers of its own (which
would forward a signal once, then kill the workers 30 s later and end in a SignalException traceback).
"""
import logging
import os
import signal
import subprocess
import sys
import threading

from common.cli import AT_ONCE, EXIT_INTERRUPTED, EXIT_PREEMPTED, EXIT_USER_ERROR

# The training processes' own ends: each has already said why, in a line of its own.
EXPLAINED = (EXIT_USER_ERROR, EXIT_PREEMPTED, EXIT_INTERRUPTED)


def children(pid: int) -> list:
    """The processes whose parent is pid (Linux's /proc; elsewhere pgrep)."""
    if os.path.isdir("/proc"):
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                            found.append(int(entry))
                except (OSError, IndexError, ValueError):
                    continue  # it exited meanwhile
        return found
    listed = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in listed.split()]


class Forwarder:
    """Signal handlers of the launcher's main thread that pass each signal on to the training processes (the
    launcher's children: torchrun's workers, or accelerate's one process). A second Ctrl-C kills the workers at
    once: one of them stopping alone would leave the others failing in a collective, each with a traceback."""

    def __init__(self):
        self.pid, self.pgrp = os.getpid(), os.getpgrp()
        self.interrupts = 0
        self.stopped_at_once = False  # a second Ctrl-C killed training processes

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._forward)
        signal.signal(signal.SIGTERM, self._forward)
        # Under slurm/node.sh the launcher inherits "ignore USR1" (its forwarder reaches the training processes)
        if signal.getsignal(signal.SIGUSR1) != signal.SIG_IGN:
            signal.signal(signal.SIGUSR1, self._forward)

    def _forward(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
        for pid in children(self.pid):
            try:
                # A terminal's Ctrl-C already reached the children in the launcher's process group (accelerate's one
                # process, which stops itself on a second); torchrun's workers run in sessions of their own.
                # SIGTERM and USR1 are idempotent there.
                if signum == signal.SIGINT and os.getpgid(pid) == self.pgrp:
                    continue
                if signum == signal.SIGINT and self.interrupts > 1:
                    os.kill(pid, signal.SIGKILL)
                    self.stopped_at_once = True
                else:
                    os.kill(pid, signum)
            except ProcessLookupError:
                continue


def exit_status(codes: list) -> int:
    """One status for the processes' exit codes (negative: killed by that signal)."""
    worst = next((c for c in codes if c not in (0,) + EXPLAINED), None)
    if worst is None:
        worst = max(codes, key=lambda c: (c == EXIT_USER_ERROR, c == EXIT_INTERRUPTED, c == EXIT_PREEMPTED, c))
    return 128 - worst if worst < 0 else worst


def describe(failures: dict) -> str:
    """One line for processes that ended without saying why (a traceback, a kill); failures: {rank: exit code}."""
    parts = []
    for rank, code in sorted(failures.items()):
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        parts.append(f"process {rank} {how}")
    advice = " (out of memory? see dmesg)" if any(c == -signal.SIGKILL for c in failures.values()) else \
        " (its error is above)"
    return f"launch: {', '.join(parts)}{advice}"


def run_accelerate(args) -> dict:
    """accelerate launch's launch_command(args): {rank: exit code} of the processes that failed ({} when all
    succeeded)."""
    from accelerate.commands.launch import launch_command
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    try:
        launch_command(args)
    except ChildFailedError as e:  # torchrun: the processes that failed
        return {rank: failure.exitcode for rank, failure in e.failures.items()}
    except subprocess.CalledProcessError as e:  # accelerate's one process
        return {0: e.returncode}
    except SystemExit as e:  # accelerate's --quiet one process
        return {0: e.code} if e.code else {}
    return {}


def main(argv=None) -> int:
    import torch.distributed.run  # noqa: F401  (creates torchrun's loggers, quieted below)
    from accelerate.commands.launch import launch_command_parser
    args = launch_command_parser().parse_args(argv)
    # torchrun's agent logs each failure and the workers it stops; the launcher says it once, below
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    outcome = {}

    def launch():
        try:
            outcome["failures"] = run_accelerate(args)
        except BaseException as e:  # the launcher's own problem (a bad option, a port in use): raised below
            outcome["error"] = e

    forwarder = Forwarder()
    forwarder.install()
    thread = threading.Thread(target=launch, name="accelerate-launch")
    thread.start()
    while thread.is_alive():
        thread.join(0.2)  # the main thread stays free to run the signal handlers
    if "error" in outcome:
        raise outcome["error"]
    failures = outcome["failures"]
    if forwarder.stopped_at_once:
        print(f"\n{AT_ONCE}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    if not failures:
        return 0
    unexplained = {rank: code for rank, code in failures.items() if code not in EXPLAINED}
    if unexplained:
        print(describe(unexplained), file=sys.stderr, flush=True)
    return exit_status(list(failures.values()))
