"""Progress of the long waits besides training (an evaluation's features, k-NN and linear probe, evaluate.py's
classifiers): a bar on a terminal that goes when done, and nothing where stderr is redirected (a Slurm log, a file),
so that logs and metrics.jsonl hold results only."""
import sys

from tqdm.auto import tqdm


def on_terminal(iterable=None, desc: str = "", total: int = None, show: bool = True):
    """tqdm over iterable (or a bar of `total` to update), shown only when stderr is a terminal and show (e.g. on
    one process of several)."""
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, mininterval=0.5,
                disable=not (show and sys.stderr.isatty()))
