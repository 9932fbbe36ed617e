"""How every entry point ends: a UserError is one line on stderr and exit status 2, a preemption stop (a signal,
Ctrl-C in a training) one line and exit status 3 (the same command resumes), Ctrl-C elsewhere one line and 130;
never a traceback for any of them."""
import os
import signal
import sys

from tqdm.auto import tqdm

from ssl_scripts import Preempted, UserError
from ssl_scripts.runtime import processes# noqa: F401  (processes: reads the launcher's pid first)
from ssl_scripts.runtime import progress

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 3
EXIT_INTERRUPTED = 130  # the shell's code for a process ended by SIGINT
AT_ONCE = (f"second Ctrl-C: stopped at once, without a checkpoint; the same command resumes from the last one "
           f"(exit code {EXIT_INTERRUPTED})")


def run(main) -> None:
    try:
        _run(main)
    finally:
        # Ending now: a late stop signal (torchrun stops the other processes with SIGTERM once one has exited) must
        # not turn the exit status into death by that signal once Python's shutdown has reset the handlers.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)


def _run(main) -> None:
    try:
        main()
    except UserError as e:
        end_with_user_error(str(e), agreed=e.agreed)
    except Preempted as e:  # not an error: said once, where the run's progress goes
        _end_with(str(e), EXIT_PREEMPTED, sys.stdout, every_process=False)
    except KeyboardInterrupt:  # Ctrl-C where no stop handler is installed (evaluate.py, before a training's loop)
        _end_with("interrupted (Ctrl-C): stopped", EXIT_INTERRUPTED, sys.stderr, every_process=False)


def end_with_user_error(message: str, agreed: bool = False) -> None:
    """`error: message` on stderr and exit status 2, said once by the main process when agreed (see UserError)."""
    _end_with(f"error: {message}", EXIT_USER_ERROR, sys.stderr, every_process=not agreed)


def _end_with(message: str, status: int, stream, every_process: bool) -> None:
    for bar in list(getattr(tqdm, "_instances", [])):
        progress.close(bar)  # ends the progress bar's line, so the message starts a line of its own
    main_process = os.environ.get("RANK", "0") == "0"
    if every_process or main_process:
        # One write, so lines of several processes do not interleave; the other ranks start a new line, as rank
        # 0's progress bar may be mid-line on the same terminal.
        stream.write(f"{'' if main_process else chr(10)}{message}\n")
        stream.flush()
    sys.exit(status)
