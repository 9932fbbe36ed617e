"""launch.py: `accelerate launch` (its own options, parsed by Accelerate), with what a terminal and a scheduler need
of it: Ctrl-C and SIGTERM reach every training process, the launcher never exits before them, and the last line is
the training's own (a stop, an error) or one line of the launcher's, never torchrun's report or a
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

from ssl_scripts.runtime.cli import AT_ONCE, EXIT_INTERRUPTED, EXIT_PREEMPTED, EXIT_USER_ERROR
from ssl_scripts.runtime.processes import CtrlC, catches, children, signal_name

# The training processes' own ends: each has already said why, in a line of its own.
EXPLAINED = (EXIT_USER_ERROR, EXIT_PREEMPTED, EXIT_INTERRUPTED)
# What torchrun does to the other processes once one has ended (SIGTERM, SIGKILL 30 s later): not a failure of theirs
COLLATERAL = (-signal.SIGTERM, -signal.SIGKILL)


class Forwarder:
    """Signal handlers of the launcher's main thread that pass each signal on to the training processes (the
    launcher's children: torchrun's workers, or accelerate's one process). A second Ctrl-C kills torchrun's workers
    at once: one of them stopping alone would leave the others failing in a collective, each with a traceback."""

    def __init__(self):
        self.pid, self.pgrp = os.getpid(), os.getpgrp()
        self.ctrl_c = CtrlC()
        self.stopped_at_once = False  # a second Ctrl-C killed training processes

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            # Inherited "ignore" stays: USR1 under slurm/node.sh (its forwarder reaches the training processes),
            # SIGINT for a script's `cmd &` (a Ctrl-C meant for the script's foreground job)
            if signal.getsignal(sig) != signal.SIG_IGN:
                signal.signal(sig, self._forward)

    def _forward(self, signum, frame) -> None:
        if signum == signal.SIGINT and not self.ctrl_c.pressed():
            return
        targets = children(self.pid)
        if not targets:  # still starting (imports, the rendezvous): nothing to stop but the launcher
            os.write(2, f"\nlaunch: stopped on {signal_name(signum)}: no training process was running\n".encode())
            os._exit(128 + signum)
        for pid in targets:
            try:
                if signum == signal.SIGINT and self.ctrl_c.count > 1 and os.getpgid(pid) != self.pgrp:
                    os.kill(pid, signal.SIGKILL)  # torchrun's workers, in sessions of their own
                    self.stopped_at_once = True
                elif signum != signal.SIGUSR1 or catches(pid, signum):  # USR1 kills a process still importing
                    # A terminal's Ctrl-C reaches accelerate's one process too (the launcher's process group):
                    # the two copies arrive together, and it counts them as one.
                    os.kill(pid, signum)
            except ProcessLookupError:
                continue


def exit_status(codes: list) -> int:
    """One status for the processes' exit codes (negative: killed by that signal): an unexplained failure's, else
    the most telling of the processes' own (2, then 130, then 3)."""
    worst = next((c for c in codes if c not in (0,) + EXPLAINED), None)
    if worst is None:
        worst = max(codes, key=lambda c: (c == EXIT_USER_ERROR, c == EXIT_INTERRUPTED, c == EXIT_PREEMPTED, c))
    return 128 - worst if worst < 0 else worst


def describe(failures: dict) -> str:
    """One line for processes that ended without saying why (a traceback, a kill); failures: {rank: exit code}."""
    parts = []
    for rank, code in sorted(failures.items()):
        how = f"was killed by {signal_name(-code)}" if code < 0 else f"exited with code {code}"
        parts.append(f"process {rank} {how}")
    advice = " (out of memory? see dmesg)" if any(c == -signal.SIGKILL for c in failures.values()) else \
        " (its error is above)"
    return f"launch: {', '.join(parts)}{advice}"


def unexplained(failures: dict) -> dict:
    """The failures no process explained; a kill by torchrun after another process's own end is not one."""
    own_end = any(code in EXPLAINED for code in failures.values())
    return {rank: code for rank, code in failures.items()
            if code not in EXPLAINED and not (own_end and code in COLLATERAL)}


def run_accelerate(args) -> dict:
    """accelerate launch's launch_command(args): {rank: exit code} of the processes that failed ({} when all
    succeeded)."""
    from accelerate.commands import launch as accelerate_launch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    try:
        accelerate_launch.launch_command(args)
    except ChildFailedError as e:  # torchrun: the processes that failed
        return {rank: failure.exitcode for rank, failure in e.failures.items()}
    except subprocess.CalledProcessError as e:  # accelerate's one process
        return {0: e.returncode}
    return {}


def main(argv=None) -> int:
    forwarder = Forwarder()
    forwarder.install()  # first: a Ctrl-C while torch loads stops the launcher in one line
    import torch.distributed.run  # noqa: F401  (creates torchrun's loggers, quieted below)
    from accelerate.commands import launch as accelerate_launch
    args = accelerate_launch.launch_command_parser().parse_args(argv)
    if getattr(args, "max_restarts", 0):
        print("error: launch.py: --max_restarts would start a run stopped with a checkpoint again at once; leave it "
              "out (the same command resumes)", file=sys.stderr)
        return EXIT_USER_ERROR
    args.quiet = False  # --quiet makes accelerate's one-process launcher exit 1 whatever the training's status
    # --debug with rich installed prints torchrun's failure and swallows it (exit 0): the status is the training's
    accelerate_launch.is_rich_available = lambda: False
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
    lost = unexplained(failures)
    if lost:
        print(describe(lost), file=sys.stderr, flush=True)
    return exit_status(list((lost or failures).values()))
