"""Progress of the long waits besides training (an evaluation's features, k-NN and linear probe, evaluate.py's
classifiers): a bar on a terminal that goes when done, and nothing where stderr is redirected (a Slurm log, a file),
so that logs and metrics.jsonl hold results only."""
import os
import stat
import sys

from tqdm.auto import tqdm


def stderr_reaches_a_terminal() -> bool:
    """stderr is a terminal, or a pipe while stdout is one: accelerate launch (1.16 on) copies its one process's
    stderr through a pipe of its own to the launcher's terminal."""
    if sys.stderr.isatty():
        return True
    try:
        return stat.S_ISFIFO(os.fstat(sys.stderr.fileno()).st_mode) and sys.stdout.isatty()
    except (AttributeError, OSError, ValueError):  # a wrapper without a file descriptor (pytest's capture)
        return False


def redraw_interval_s() -> float:
    """How often a long bar redraws: every second on a terminal, every 30 s in a log file (a Slurm log)."""
    return 1 if stderr_reaches_a_terminal() else 30


def close(bar) -> None:
    """bar.close(), which ends its line; where stderr is a pipe nobody reads (a killed accelerate launch), nothing:
    what follows (a stop's line on stdout) still goes out."""
    try:
        bar.close()
    except OSError:
        pass


def on_terminal(iterable=None, desc: str = "", total: int = None, show: bool = True):
    """tqdm over iterable (or a bar of `total` to update), shown only when stderr reaches a terminal and show (e.g. on
    one process of several)."""
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, mininterval=0.5,
                disable=not (show and stderr_reaches_a_terminal()))
