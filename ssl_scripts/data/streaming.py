"""A split too large for memory, decoded as training reads it (--data-placement stream): StreamedImages, and the
folder whose test split and seeded sample of the train split (evaluation's) are decoded once into the cache.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ssl_scripts import UserError
from ssl_scripts.data import cache
from ssl_scripts.data.decode import decode_or_problem, decode_workers, fork_pool
from ssl_scripts.data.folders import scan_imagefolder
from ssl_scripts.data.image_data import ImageData

# Train images a streamed split's evaluation sample holds (seeded): evaluations never decode the train split.
STREAM_EVAL_SAMPLE = 10_000


class StreamedImages:
    """An image folder's split as (N, 3, H, W) uint8 that is never held whole: images[indices] decodes those files
    (a pool of processes) with the same decode_image as the cache, so the pixels are the same. For folders larger
    than host memory (--data-placement stream). submit() decodes a batch on a reader thread instead, for training
    to read ahead (placement.TrainImages)."""

    dtype, device = torch.uint8, torch.device("cpu")

    def __init__(self, paths: list, image_size: int, workers: int):
        self.paths, self.workers = paths, workers
        self.shape = (len(paths), 3, image_size, image_size)
        self._pool = self._reader = None
        self.decoded = 0  # images decoded so far
        # The first unreadable file met while reading ahead, as one line: its image is zeros, and the run stops at
        # its next log or checkpoint step, where every process agrees (one rank raising would leave the others
        # waiting in a collective).
        self.problem = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, indices):
        if isinstance(indices, int):
            return self[torch.tensor([indices])][0]
        out = torch.empty((len(indices), *self.shape[1:]), dtype=torch.uint8)
        problem = self._decode_into(torch.as_tensor(indices).tolist(), out)
        if problem:
            raise UserError(problem)
        return out

    def submit(self, indices: list, pin: bool):
        """A Future of the batch of these images, decoded by the pool while this thread goes on, and put together
        by a reader thread in a new batch (pinned when `pin`, for a copy to the GPU without a wait)."""
        self._start_pool()
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="stream-reader")
        # Allocated here: pinned memory made on another thread would open a CUDA context on that thread's current
        # device, cuda:0, for every process.
        out = torch.empty((len(indices), *self.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        return self._reader.submit(self._read, indices, out)

    def _read(self, indices: list, out: torch.Tensor) -> torch.Tensor:
        problem = self._decode_into(indices, out)
        if problem and self.problem is None:
            self.problem = problem
        return out

    def _start_pool(self) -> None:
        """Forks the decode workers now, from the calling thread: the training thread (submit, images[indices]),
        after the process's own setup and before the reader thread exists (a fork of a threaded process can
        deadlock the child)."""
        if self._pool is None:
            self._pool = fork_pool(self.workers)
            self._pool.submit(int)  # a fork pool forks all its workers at its first job, on the thread that gives it

    def _decode_into(self, indices: list, out: torch.Tensor):
        """Decodes into out; an unreadable file's image is zeros, and the first one's line is returned."""
        self._start_pool()
        size, problem = self.shape[-1], None
        jobs = [(self.paths[i], size) for i in indices]
        for k, image in enumerate(self._pool.map(decode_or_problem, jobs, chunksize=max(1, len(jobs) // self.workers))):
            if isinstance(image, np.ndarray):
                out[k] = torch.from_numpy(image).permute(2, 0, 1)
            else:
                out[k] = 0
                problem = problem or (f"cannot read image {jobs[k][0]!r} ({image}): streamed images are read as "
                                      f"training goes; fix or remove it, or decode the folder up front "
                                      f"(--data-placement host --skip-bad-images)")
        self.decoded += len(indices)
        return problem


def stream_sample(labelled: dict, seed: int = 0) -> list:
    """The train files a streamed split's evaluation sample holds: STREAM_EVAL_SAMPLE of them, seeded, in order."""
    n = len(labelled["train"])
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:STREAM_EVAL_SAMPLE].sort().values
    return [labelled["train"][i] for i in chosen.tolist()]


def stream_imagefolder(data_dir: str, image_size: int, scanned=None, cache_dir: str = None,
                       sample_cache: str = None) -> ImageData:
    """The folder's labels now and its train images as they are needed (StreamedImages); the test split and a
    seeded sample of the train split (evaluation's) decoded once per node into a cache, as an image folder's are.
    scanned: scan_imagefolder's answer, as the main process saw it (every rank must stream the same list);
    sample_cache: the sample's cache path, as the main process named it."""
    labelled, classes = scanned or scan_imagefolder(data_dir)
    evaluated = {"train": stream_sample(labelled), "test": labelled["test"]}
    if sample_cache is None:
        sample_cache = cache.imagefolder_cache(data_dir, image_size, cache_dir, True, evaluated)
    needed = sum(map(len, evaluated.values())) * 3 * image_size ** 2
    # Unreadable files are left out of the sample (a train one stops the training when a batch reaches it).
    sample = cache.decoded_once(
        sample_cache, lambda: cache.decode_imagefolder(data_dir, image_size, True, (evaluated, classes)), needed)
    workers = max(1, decode_workers() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    train = StreamedImages([p for p, _ in labelled["train"]], image_size, workers)
    train_labels = torch.tensor([label for _, label in labelled["train"]], dtype=torch.int64)
    return ImageData(train, train_labels, sample.test_images, sample.test_labels, classes,
                     sample_images=sample.train_images, sample_labels=sample.train_labels)
