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


def on_terminal(iterable=None, desc: str = "", total: int = None, show: bool = True):
    """tqdm over iterable (or a bar of `total` to update), shown only when stderr reaches a terminal and show (e.g. on
    one process of several)."""
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, mininterval=0.5,
                disable=not (show and stderr_reaches_a_terminal()))
