"""The stop signals of a training (Slurm's preemption notice, scancel, Ctrl-C): noted when they arrive, agreed on by
every process at a step's end, where the run stops (with a checkpoint, Run._stop_now)."""
import os
import signal

import torch
from accelerate.utils import gather_object

from ssl_scripts import Preempted, UserError
from ssl_scripts.runtime.cli import AT_ONCE, EXIT_INTERRUPTED, EXIT_PREEMPTED
from ssl_scripts.runtime import processes

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """SIGUSR1 / SIGTERM (Slurm's preemption notice, scancel, a time limit) and Ctrl-C (SIGINT): noted when they
    arrive, acted on at a step's end, where every rank can agree. Installed first thing in the loop
    (ssl_scripts/loop.py): a notice that arrives while the data loads or decodes is kept (the launcher's
    "ignore USR1" is inherited until then), and the run stops at its first step. A second Ctrl-C stops at once,
    without a checkpoint."""

    def __init__(self):
        self.received = 0
        self.ctrl_c = processes.CtrlC()
        self._pid = os.getpid()
        self._previous_sigint = signal.default_int_handler

    @classmethod
    def install(cls) -> "StopSignals":
        """Handlers for STOP_SIGNALS that note the signal; the same command resumes after the stop. Under a launcher,
        the launcher's death is a SIGTERM too (Linux): a training process is never left running on its own."""
        stop_signals = cls()
        stop_signals._previous_sigint = signal.getsignal(signal.SIGINT)
        for sig in STOP_SIGNALS:
            # A script's `cmd &` is started with SIGINT ignored: a Ctrl-C meant for the foreground is not for it
            if not (sig == signal.SIGINT and stop_signals._previous_sigint == signal.SIG_IGN):
                signal.signal(sig, stop_signals._note)
        if processes.launched():
            processes.die_with_parent(signal.SIGTERM)
        return stop_signals

    def restore_ctrl_c(self) -> None:
        """Ctrl-C as it was before install (KeyboardInterrupt, say), for a caller in the same process (a notebook,
        the tests) once the training has returned."""
        signal.signal(signal.SIGINT, self._previous_sigint)

    def _note(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked decode worker (it inherits the handler): its parent stops it
            return
        if signum == signal.SIGINT:
            if not self.ctrl_c.pressed():  # one Ctrl-C delivered twice (pkill, and a launcher)
                return
            if self.ctrl_c.count > 1:
                _say_once(AT_ONCE)
                os._exit(EXIT_INTERRUPTED)  # at once: no cleanup that could wait on another process
            _say_once("Ctrl-C: stopping at the next step the processes agree on, with a checkpoint (Ctrl-C again "
                      "stops at once, without one)")
        if not self.received:
            self.received = signum

    def all_reduce(self, accelerator, problem: str = None) -> bool:
        """An all-reduce of the processes' stop signals: True on every rank when any rank got a stop signal, so that
        all stop after the same step (a lone rank stopping would leave the others waiting forever in the next
        all-reduce). problem: this rank's reason to stop with an error (an unreadable streamed file); if any rank
        has one, every rank raises it."""
        if accelerator.num_processes == 1:
            if problem:
                raise UserError(problem)
            return self.received != 0
        flags = torch.tensor([float(self.received != 0), float(problem is not None)], device=accelerator.device)
        signalled, problems = accelerator.reduce(flags, reduction="sum").tolist()
        if problems:
            said = [p for p in gather_object([problem]) if p]
            raise UserError(said[0], agreed=True)
        return signalled > 0

    def stop_run(self, accelerator, step: int, during: str = None) -> None:
        """Ends the run on a stop signal, its checkpoint saved: the trackers finished, then Preempted."""
        # accelerator.end_training(), with every process waiting for the main one's tracker to finish: torchrun stops
        # the others (SIGTERM, SIGKILL 30 s later) once one has exited, which would cut it short
        for tracker in accelerator.trackers:
            tracker.finish()
        accelerator.wait_for_everyone()
        accelerator.state.destroy_process_group()
        where = f" during {during}" if during else ""
        raise Preempted(f"stopping on {self.name()} at step {step}{where}: checkpoint saved; the same command "
                        f"resumes from it (exit code {EXIT_PREEMPTED})")

    def name(self) -> str:
        if self.received == signal.SIGINT:
            return "Ctrl-C (SIGINT)"
        return signal.Signals(self.received).name if self.received else "a signal on another process"


def _say_once(message: str) -> None:
    """A line from a signal handler, on the main process only: one write (no lock a handler could deadlock on), on a
    line of its own (the progress bar may be mid-line)."""
    if os.environ.get("RANK", "0") == "0":
        try:
            os.write(2, f"\n{message}\n".encode())  # fd 2: sys.stderr may be a wrapper without one (pytest)
        except OSError:
            pass
