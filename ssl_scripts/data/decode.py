"""The pools of processes that decode many image files (the decode-once cache's, a streamed split's, embed.py's),
each file with ssl_scripts.models.image_input.decode_image, and which files are images."""
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from ssl_scripts.models.image_input import decode_image
from ssl_scripts.runtime import processes

# The files --dataset imagefolder and images take as images (by name).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def decode_workers() -> int:
    """The CPUs this process may run on (Slurm and taskset restrict them), not all of the machine's."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def fork_pool(workers: int) -> ProcessPoolExecutor:
    """Decode workers forked from this process, killed by the kernel when it exits: a training stopped at once
    (a second Ctrl-C, a kill) leaves none behind, holding memory or a GPU's handles."""
    return ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=processes.die_with_parent,
                               initargs=(signal.SIGKILL, os.getpid()))


def decode_or_problem(job):
    """decode_image(*job) for a pool's map: the pixels, or the problem as one line (the caller skips or stops)."""
    path, size = job
    try:
        return decode_image(path, size)
    except Exception as e:  # PIL raises OSError, UnidentifiedImageError, ValueError, SyntaxError ...
        return f"{type(e).__name__}: {e}"
