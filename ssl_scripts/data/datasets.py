"""Datasets as uint8 tensors, and the order their batches are drawn in.

Every dataset is decoded once into (N, 3, H, W) uint8 plus int64 labels, -1 where an image has none (torchvision's
STL-10 convention); an image folder, a folder of unlabeled images and STL-10 into a cache file that every process of
a node maps. The labelled set that evaluates the encoder is the training dataset itself or another one
(--eval-dataset: load_evaluation). Training batches index that tensor where ssl_scripts/data/placement.py put it (on the device,
airbench's way, or in host memory) with index batches from a seeded loader; ssl_scripts/data/augment.py transforms them on
the device.
"""
import argparse
import atexit
import errno
import fcntl
import glob
import hashlib
import os
import shlex
import signal
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ssl_scripts import UserError
from ssl_scripts.data import placement
from ssl_scripts.outputs import files
from ssl_scripts.runtime import distributed, processes
from ssl_scripts.data.decode import DECODER, IMAGE_EXTENSIONS, _decode_or_none, decode_workers

# The names of the caches of decoded images in --cache-dir (imagefolder_cache, load_stl10).
CACHE_NAMES = ("imagefolder-*.pt", "stl10-*.pt")
# Train images a streamed split's evaluation sample holds (seeded): evaluations never decode the train split.
STREAM_EVAL_SAMPLE = 10_000


# Datasets read from files the user has (scanned, decoded once per node, streamable); the others are generated or
# downloaded by torchvision. LABELLED: every train image has a label (what --pairs label needs); EVALUATES_ITSELF:
# a labelled split to evaluate on (STL-10's 5,000 labelled train images beside its 100,000 unlabeled ones).
FILE_DATASETS = ("imagefolder", "images")
DOWNLOADED = ("cifar10", "cifar100", "stl10")  # by torchvision, into --data-dir when missing
LABELLED = ("cifar10", "cifar100", "imagefolder", "synthetic")
EVALUATES_ITSELF = LABELLED + ("stl10",)
# --dataset's choices, with their help.
DATASETS = {
    "cifar10": "torchvision's CIFAR-10, downloaded into --data-dir",
    "cifar100": "torchvision's CIFAR-100, downloaded into --data-dir",
    "stl10": "torchvision's STL-10 (its 100,000 unlabeled + 5,000 train images), downloaded into --data-dir",
    "imagefolder": "labelled images in --data-dir/train/<class>/ and test/<class>/",
    "images": "unlabeled images, any layout: a folder searched at any depth, or a text file listing their paths",
    "synthetic": "generated, for checks (--synthetic-size)",
}
DATASETS_TO_EVALUATE = EVALUATES_ITSELF + ("none",)
# --dataset images: the images held out of training for the pretext's own metrics (seeded, fixed by the list of
# files, not by --seed: runs of other seeds are scored on the same images): 2% of them, but HELD_OUT_ENOUGH where
# a tenth of the images allows (fewer make the metrics noise: one image of 10 moves an accuracy by 10 points),
# never more than a tenth (training keeps nine), at least HELD_OUT_MIN, at most HELD_OUT_MAX.
HELD_OUT_SHARE, HELD_OUT_ENOUGH, HELD_OUT_MOST = 0.02, 256, 0.1
HELD_OUT_MIN, HELD_OUT_MAX = 2, 10_000


def held_out_count(n_images: int) -> int:
    """How many of n_images --dataset images holds out of training (see HELD_OUT_SHARE)."""
    wanted = max(HELD_OUT_ENOUGH, int(n_images * HELD_OUT_SHARE))
    return min(HELD_OUT_MAX, max(HELD_OUT_MIN, min(wanted, int(n_images * HELD_OUT_MOST))))


@dataclass
class ImageData:
    train_images: torch.Tensor  # (N, 3, H, W) uint8
    train_labels: torch.Tensor  # (N,) int64; -1: no label
    test_images: torch.Tensor  # images never trained on: the test split, or the images held out (--dataset images)
    test_labels: torch.Tensor
    classes: list  # [] for unlabeled images
    skipped_images: int = 0
    # A streamed train split is never held whole: a seeded sample of it, decoded once, is what evaluation (k-NN
    # memory, linear probe) and the channel statistics use instead. None where the train split is held.
    sample_images: torch.Tensor = None
    sample_labels: torch.Tensor = None

    def evaluation_train(self):
        """(images, labels) that evaluation trains its probes on: the train split, or its sample when streamed."""
        if self.sample_images is not None:
            return self.sample_images, self.sample_labels
        return self.train_images, self.train_labels

    def labelled(self):
        """This dataset as a labelled evaluation set: itself if every image has a label; its labelled train images
        if they come first (STL-10's 5,000 before its 100,000 unlabeled: views, no copy); None if it has none."""
        if not self.classes:
            return None
        _, labels = self.evaluation_train()
        count = int((labels >= 0).sum())
        if count == len(labels):
            return self
        if count == 0 or bool((labels[:count] < 0).any()):
            raise ValueError("labelled train images must come before the unlabeled ones")
        return ImageData(self.train_images[:count], self.train_labels[:count], self.test_images, self.test_labels,
                         self.classes, self.skipped_images)

    def channel_stats(self):
        """Per-channel mean and std of the train split in [0, 1], for the encoder's built-in normalization."""
        # A seeded sample of the whole split (exact to 3 decimals, and quick): image folders are sorted by class,
        # so their first images are a few classes only.
        images = self.evaluation_train()[0]
        sample = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:20000]
        sums, squares = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        for chunk in sample.sort().values.split(256):  # never a float copy of the sample: 12 GB at 224 px
            x = images[chunk].double().div_(255)
            sums += x.sum(dim=(0, 2, 3))
            squares += x.square().sum(dim=(0, 2, 3))
        n = len(sample) * images.shape[2] * images.shape[3]
        mean = sums / n
        return mean.tolist(), ((squares - n * mean.square()) / (n - 1)).sqrt().tolist()


def read_dataset(args) -> ImageData:
    """The dataset --dataset names, loaded by this process (load_data and load_shared share the work of a node)."""
    if args.dataset == "synthetic":
        n_train, n_test = split_sizes(args)
        return make_synthetic(args.image_size, n_train=n_train, n_test=n_test)
    if args.dataset in ("cifar10", "cifar100"):
        from ssl_scripts.data import downloads
        return ImageData(**downloads.read_cifar(args.data_dir, args.image_size, int(args.dataset[5:])))
    if args.dataset == "stl10":
        return load_stl10(args.data_dir, args.image_size, args.cache_dir)
    return load_imagefolder(args.data_dir, args.image_size, args.cache_dir, args.skip_bad_images,
                            scan=SCANS[args.dataset])


# ----------------------------------------------------------------------------------------------- sources
def load_stl10(data_dir: str, image_size: int, cache_dir: str) -> ImageData:
    """STL-10 (its 5,000 labelled train images, then its 100,000 unlabeled ones, labelled -1; its 8,000 test
    images), read from torchvision's files once per node into a cache that the node's processes map (3 GB each
    otherwise)."""
    from ssl_scripts.data import downloads
    key = hashlib.sha256(repr(("stl10", os.path.abspath(data_dir), image_size)).encode()).hexdigest()[:20]
    return decoded_once(os.path.join(cache_dir, f"stl10-{key}.pt"),
                        lambda: _image_data(downloads.read_stl10(data_dir, image_size)),
                        sum(split_sizes_of("stl10")) * 3 * image_size ** 2)


def _image_data(tensors: dict) -> ImageData:
    return ImageData(**{k: v for k, v in tensors.items() if k in ImageData.__dataclass_fields__})


def make_synthetic(image_size: int = 32, n_train: int = 1024, n_test: int = 256, n_classes: int = 10) -> ImageData:
    """Small, seeded, learnable data: each class is a smooth random pattern (not rotation-symmetric) plus noise."""
    g = torch.Generator().manual_seed(1234)
    templates = F.interpolate(torch.rand(n_classes, 3, 4, 4, generator=g), size=(image_size, image_size),
                              mode="bilinear", align_corners=False)

    def sample(n):
        labels = torch.arange(n) % n_classes
        labels = labels[torch.randperm(n, generator=g)]
        images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
        for chunk in torch.arange(n).split(4096):  # CIFAR-sized sets without a float copy of the whole set
            x = templates[labels[chunk]] + 0.15 * torch.randn(len(chunk), 3, image_size, image_size, generator=g)
            images[chunk] = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        return images, labels

    (xtr, ytr), (xte, yte) = sample(n_train), sample(n_test)
    return ImageData(xtr, ytr, xte, yte, [f"class{i}" for i in range(n_classes)])


# ------------------------------------------------------------------------------------------ image folders
def scan_imagefolder(data_dir: str):
    """Lists (path, class index) for train/ and test/; classes are the sub-folders of train/."""
    if not os.path.isdir(data_dir):
        raise UserError(f"data dir {data_dir!r} does not exist: pass --data-dir with train/<class>/ and test/<class>/")
    splits = {}
    for split in ("train", "test"):
        root = os.path.join(data_dir, split)
        if not os.path.isdir(root):
            raise UserError(f"{data_dir!r} has no {split}/ folder: an image folder needs "
                            f"{split}/<class>/<image> files (ImageFolder layout)")
        classes = {}
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.is_dir():
                paths = sorted(f.path for f in os.scandir(entry.path)
                               if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS))
                if paths:
                    classes[entry.name] = paths
        if not classes:
            raise UserError(f"{root!r} has no class folders with images: put images in {split}/<class>/")
        splits[split] = classes
    class_names = list(splits["train"])
    missing = [c for c in splits["test"] if c not in splits["train"]]
    if missing:
        raise UserError(f"test classes {missing} have no train/ folder in {data_dir!r}: "
                        f"every test class must also be a train class")
    index = {c: i for i, c in enumerate(class_names)}
    labelled = {s: [(p, index[c]) for c, paths in splits[s].items() for p in paths] for s in splits}
    return labelled, class_names


def scan_images(data_dir: str):
    """Unlabeled images, in scan_imagefolder's form (label -1, no classes): every image file under a folder at any
    depth (hidden files and folders skipped, symlinks followed, sorted by path: the same order on every node), or
    the files a list names (one path per line, relative to the list's folder; in the list's order). A seeded
    share of them, fixed by the list, is held out of training as the "test" split, for the pretext's metrics."""
    if os.path.isfile(data_dir):
        paths = _listed_images(data_dir)
    elif os.path.isdir(data_dir):
        paths = _images_under(data_dir)
    else:
        raise UserError(f"--data-dir {data_dir!r} does not exist: pass a folder of images (any layout) or a text "
                        f"file that lists image paths, one per line")
    held = held_out_count(len(paths))
    if len(paths) < 2 * held:
        raise UserError(f"{data_dir!r} holds {len(paths)} image(s): --dataset images needs at least "
                        f"{2 * HELD_OUT_MIN} ({HELD_OUT_MIN} are held out of training for the pretext's metrics)")
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(0))
    test = set(order[:held].tolist())
    split = {"train": [(p, -1) for i, p in enumerate(paths) if i not in test],
             "test": [(p, -1) for i, p in enumerate(paths) if i in test]}
    return split, []


def _images_under(folder: str) -> list:
    paths, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:  # a symlink back up the tree
            dirs.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        paths += [os.path.join(root, n) for n in names
                  if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)]
    if not paths:
        raise UserError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {folder!r}")
    return sorted(paths)


def _listed_images(list_file: str) -> list:
    base = os.path.dirname(os.path.abspath(list_file))
    with open(list_file, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    paths = [os.path.join(base, line) for line in lines if line and not line.startswith("#")]
    if not paths:
        raise UserError(f"{list_file!r} lists no images: put one image path per line")
    return paths


# How each file dataset is scanned: (labelled files of "train" and "test", class names).
SCANS = {"imagefolder": scan_imagefolder, "images": scan_images}


def imagefolder_cache(data_dir: str, image_size: int, cache_dir: str, skip_bad: bool, labelled: dict) -> str:
    """The cache's path for a scanned folder (scan_imagefolder's labelled files): a digest of every file's path,
    size and mtime (one stat per file: 60k on CIFAR-10, 1.3M on ImageNet, so one process computes it for all)."""
    stats = [(p, *_size_and_mtime(p)) for s in ("train", "test") for p, _ in labelled[s]]
    key = repr((os.path.abspath(data_dir), image_size, skip_bad, DECODER, stats))
    key = hashlib.sha256(key.encode()).hexdigest()[:20]
    return os.path.join(cache_dir, f"imagefolder-{key}.pt")


def _size_and_mtime(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:  # a listed file that is missing: unreadable when decoded (--skip-bad-images drops it)
        return -1, -1
    return st.st_size, st.st_mtime_ns


def load_imagefolder(data_dir: str, image_size: int, cache_dir: str, skip_bad: bool = False,
                     cache_path: str = None, needed: int = 0, scan=scan_imagefolder) -> ImageData:
    """The folder's images, memory-mapped from the cache (decoded into it first if missing or damaged): every
    process of a node maps the same file, so the node holds one copy, in its page cache. scan: how the folder is
    read (SCANS)."""
    scanned = None
    if cache_path is None:
        scanned = scan(data_dir)
        cache_path = imagefolder_cache(data_dir, image_size, cache_dir, skip_bad, scanned[0])
        needed = sum(len(scanned[0][s]) for s in scanned[0]) * 3 * image_size ** 2
    return decoded_once(cache_path, lambda: decode_imagefolder(data_dir, image_size, skip_bad,
                                                               scanned or scan(data_dir)), needed)


def cache_places(cache_path: str) -> list:
    """Where a cache may be: the --cache-dir path, then node-local fallbacks for when it cannot be written there (a
    full disk or quota): /dev/shm, then the job's temporary dir. The same list on every process of a node."""
    name = os.path.basename(cache_path)
    local = [d for d in ("/dev/shm", tempfile.gettempdir()) if os.path.isdir(d)]
    return [cache_path] + [os.path.join(d, "ssl-scripts", name) for d in dict.fromkeys(local)]


def _first_mapped(places: list):
    """The first of these caches that loads, memory-mapped; None if none does (missing, or damaged: a killed writer
    leaves only its temporary), and it is decoded again."""
    for path in places:
        try:
            return ImageData(**torch.load(path, weights_only=True, mmap=True))
        except Exception:
            continue
    return None


def decoded_once(cache_path: str, decode, needed: int = 0) -> ImageData:
    """The cache at cache_path (or a node-local fallback) memory-mapped; built first with decode() if none exists.

    One process decodes; every other process of its node, and of the other nodes where the cache dir is shared,
    waits for the cache file by waiting on a file lock (not in a collective, whose timeout a long decode would
    pass) and then maps it. If the cache cannot be written in --cache-dir, the decoder writes it to a node-local
    place instead, said in one line, where its node's other processes find it: still one decode and one copy per
    node. Where it fits nowhere (needed: its bytes, if known), the run stops with one line before anything is
    decoded."""
    places = cache_places(cache_path)
    data = _first_mapped(places)
    if data is not None:
        return data
    with _decoder_lock(places):
        data = _first_mapped(places)  # the lock's previous holder may have written it
        if data is not None:
            return data
        if needed:
            free = {os.path.dirname(p): files.free_bytes(os.path.dirname(p)) for p in places}
            if all(room < needed for room in free.values()):
                where = ", ".join(f"{d!r} {files.size(room, exact=False)}" for d, room in free.items())
                raise UserError(f"the decoded images take {files.size(needed, exact=False)} and fit in no cache "
                                f"place of this node (free: {where}): free space, or pass --cache-dir on a disk "
                                f"with room (or --data-placement stream, which needs no cache)")
        data = decode()
        problems = []
        for path in places:
            try:
                files.save_tensors(vars(data), path)
            except files.WriteFailed as e:
                problems.append(e.problem)
                continue
            if path == cache_path:
                print(_cache_written(path), flush=True)
            else:
                print(f"warning: decoded images not cached in --cache-dir: {problems[0]}; cached for this run in "
                      f"{path!r} instead, which this node's processes share (removed when this process exits; "
                      f"the next start decodes again unless --cache-dir has room)", flush=True)
                atexit.register(files.remove, path)
            return ImageData(**torch.load(path, weights_only=True, mmap=True))  # the decoded copy goes
    raise UserError(f"the decoded images could not be cached anywhere on this node ({'; '.join(problems)}): free "
                    f"space, or pass --cache-dir on a disk with room")


def _cache_written(path: str) -> str:
    """Where the new cache is, what such caches take in --cache-dir, and how to delete them (nothing else does)."""
    folder = os.path.dirname(path)
    caches = [p for name in CACHE_NAMES for p in glob.glob(os.path.join(glob.escape(folder), name))]
    total = sum(os.path.getsize(p) for p in caches)
    patterns = " ".join(shlex.quote(folder) + "/" + name for name in CACHE_NAMES)
    return (f"cached the decoded images in {path!r} ({files.size(os.path.getsize(path), exact=False)}); "
            f"{folder!r} keeps such caches across runs ({files.size(total, exact=False)} now): `rm -f {patterns}` "
            f"deletes them safely while no run is starting (a run decodes again what it misses)")


class _decoder_lock:
    """An exclusive lock (fcntl.lockf, which NFS passes to its server) beside the cache: the one decoder holds it,
    the others wait for it. Taken next to the first place whose folder can be written. The file is removed by its
    holder on release; a waiter that then gets the lock of a removed file takes the one the path names now."""

    def __init__(self, places: list):
        self.places, self.fd, self.path = places, None, None

    def __enter__(self):
        for place in self.places:
            if self._lock(place + ".lock", place):
                return self
        raise UserError(f"cannot create a lock file beside the image cache in any of "
                        f"{[os.path.dirname(p) for p in self.places]}: pass a writable --cache-dir")

    def _lock(self, path: str, place: str) -> bool:
        said = False
        while True:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                return False
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EAGAIN):  # no POSIX locks on this file system
                    os.close(fd)
                    return False
                if not said:
                    print(f"waiting for another process to decode the images into {place!r}", flush=True)
                    said = True
                fcntl.lockf(fd, fcntl.LOCK_EX)  # until it is done, or has died
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                self.fd, self.path = fd, path
                return True
            os.close(fd)  # its holder removed it after we opened it

    def __exit__(self, *exc):
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)


def decode_imagefolder(data_dir: str, image_size: int, skip_bad: bool = False, scanned=None) -> ImageData:
    """Every image decoded straight into one preallocated uint8 tensor per split (no list of arrays, no stacked
    or permuted copy), by a pool of processes, with a progress bar. scanned: the scan's answer (SCANS), if known."""
    labelled, classes = scanned or scan_imagefolder(data_dir)
    tensors, skipped = {}, 0
    total = sum(len(labelled[s]) for s in ("train", "test"))
    print(f"decoding {total} images of {data_dir}", flush=True)
    workers = decode_workers()  # the node's other processes wait meanwhile: all of this one's CPUs decode
    with fork_pool(workers) as pool, \
            tqdm(total=total, desc="decode", unit="img", mininterval=1 if sys.stderr.isatty() else 30) as bar:
        for split in ("train", "test"):
            jobs = labelled[split]
            images = torch.empty((len(jobs), 3, image_size, image_size), dtype=torch.uint8)
            labels = torch.empty(len(jobs), dtype=torch.int64)
            kept, bad = 0, []
            decoded = pool.map(_decode_or_none, [(p, image_size) for p, _ in jobs], chunksize=256)
            for (path, label), image in zip(jobs, decoded):
                if isinstance(image, np.ndarray):
                    images[kept], labels[kept] = torch.from_numpy(image).permute(2, 0, 1), label
                    kept += 1
                else:
                    bad.append((path, image))
                bar.update()
            where = f"{split}/" if classes else f"the {'held-out' if split == 'test' else 'training'} images"
            if bad and not skip_bad:
                raise UserError(f"cannot read image {bad[0][0]!r} ({bad[0][1]}); fix or remove it, or pass "
                                f"--skip-bad-images ({len(bad)} unreadable file(s) in {where})")
            if not kept:
                raise UserError(f"no readable images in {where} of {data_dir!r}")
            skipped += len(bad)
            # Unreadable files leave the end unused: a copy then, as torch.save would write the whole storage.
            tensors[f"{split}_images"] = images if kept == len(jobs) else images[:kept].clone()
            tensors[f"{split}_labels"] = labels if kept == len(jobs) else labels[:kept].clone()
    return ImageData(**tensors, classes=classes, skipped_images=skipped)


def fork_pool(workers: int) -> ProcessPoolExecutor:
    """Decode workers forked from this process, killed by the kernel when it exits: a training stopped at once
    (a second Ctrl-C, a kill) leaves none behind, holding memory or a GPU's handles."""
    return ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=processes.die_with_parent,
                               initargs=(signal.SIGKILL, os.getpid()))


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
        for k, image in enumerate(self._pool.map(_decode_or_none, jobs, chunksize=max(1, len(jobs) // self.workers))):
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
        sample_cache = imagefolder_cache(data_dir, image_size, cache_dir, True, evaluated)
    needed = sum(map(len, evaluated.values())) * 3 * image_size ** 2
    # Unreadable files are left out of the sample (a train one stops the training when a batch reaches it).
    sample = decoded_once(sample_cache, lambda: decode_imagefolder(data_dir, image_size, True, (evaluated, classes)),
                          needed)
    workers = max(1, decode_workers() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    train = StreamedImages([p for p, _ in labelled["train"]], image_size, workers)
    train_labels = torch.tensor([label for _, label in labelled["train"]], dtype=torch.int64)
    return ImageData(train, train_labels, sample.test_images, sample.test_labels, classes,
                     sample_images=sample.train_images, sample_labels=sample.train_labels)


# ------------------------------------------------------------------------------------- for the training loop
def split_sizes_of(dataset: str, synthetic_size: int = 1024):
    """(train images, test images) of a generated or downloaded dataset, known before it is made or loaded (a file
    dataset's are counted by scanning it)."""
    if dataset == "synthetic":
        return synthetic_size, max(4, synthetic_size // 4)
    return {"stl10": (105_000, 8_000)}.get(dataset, (50_000, 10_000))


def split_sizes(args):
    return split_sizes_of(args.dataset, args.synthetic_size)


def load_train_split(args, accelerator):
    """The dataset (host memory, uint8) and its train split where --data-placement puts it (a TrainImages, which
    gives batches on the device). The main process scans the file system once for all (a file dataset's list of
    files, the cache's name, the placement), before anything large is allocated; every process uses its answer, so
    ranks never disagree over what a shared folder holds. Then one process per node decodes (see decoded_once)."""
    def plan():
        folder = args.dataset in FILE_DATASETS
        scanned = SCANS[args.dataset](args.data_dir) if folder else None
        n_train, n_test = (len(scanned[0]["train"]), len(scanned[0]["test"])) if folder else split_sizes(args)
        image_bytes = 3 * args.image_size ** 2
        # A mapped cache is one copy per node; a generated or downloaded dataset, one per process of the node.
        cached = folder or args.dataset == "stl10"
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        host_bytes = (n_train + n_test) * image_bytes * (1 if cached else processes)
        sharing = placement.processes_per_device(accelerator.device)
        on_gpu = accelerator.device.type == "cuda"
        eval_bytes = placement.evaluation_bytes(args, evaluated_images(args, n_train, n_test), sharing) if on_gpu else 0
        chosen, why = placement.choose(args.data_placement, n_train * image_bytes, host_bytes, accelerator.device,
                                       placement.device_free_bytes(accelerator.device),
                                       placement.host_available_bytes(), streamable=folder,
                                       processes_per_device=sharing, eval_bytes=eval_bytes)
        # Streamed folders need no cache of the train split, nor its stat of every file: only of their sample's.
        if chosen == "stream":
            cache_path = imagefolder_cache(args.data_dir, args.image_size, args.cache_dir, True,
                                           {"train": stream_sample(scanned[0]), "test": scanned[0]["test"]})
        elif folder:
            cache_path = imagefolder_cache(args.data_dir, args.image_size, args.cache_dir, args.skip_bad_images,
                                           scanned[0])
        else:
            cache_path = None
        train, test = (files.size(n * image_bytes, exact=False) for n in (n_train, n_test))
        if args.dataset == "images":
            where = "listed in" if os.path.isfile(args.data_dir) else "under"
            found = (f"{n_train + n_test:,} unlabeled images {where} {args.data_dir} at {args.image_size} px: "
                     f"{n_train:,} train + {n_test:,} held out for the pretext's metrics ({train} + {test} as uint8)")
            if n_test < HELD_OUT_ENOUGH:
                found += f"; the pretext's metrics rest on {n_test:,} images: noisy ({HELD_OUT_ENOUGH} steady them)"
        else:
            found = f"{n_train:,} train + {n_test:,} test images at {args.image_size} px ({train} + {test} as uint8)"
        line = f"data: {found}; placement {chosen} (--data-placement {args.data_placement}): {why}"
        if args.dataset not in DOWNLOADED:  # a download's line waits for its files: a failed one claims no images
            print(line, flush=True)
        return cache_path, chosen, (scanned if chosen == "stream" else None), (n_train + n_test) * image_bytes, line
    cache_path, chosen, scanned, decoded_bytes, line = distributed.on_main_process_for_all(accelerator, plan)
    if chosen == "stream":
        dataset = stream_imagefolder(args.data_dir, args.image_size, scanned, sample_cache=cache_path)
    elif cache_path:
        dataset = load_imagefolder(args.data_dir, args.image_size, args.cache_dir, args.skip_bad_images,
                                   cache_path, decoded_bytes, scan=SCANS[args.dataset])
    else:
        dataset = load_generated(args, accelerator)
        if args.dataset in DOWNLOADED and accelerator.is_main_process:
            print(line, flush=True)
    if dataset.skipped_images and accelerator.is_main_process:
        print(f"warning: {dataset.skipped_images} unreadable image file(s) of {args.data_dir!r} left out "
              f"(--skip-bad-images); results.json counts them as skipped_images", flush=True)
    return dataset, placement.TrainImages(dataset.train_images, chosen, accelerator.device)


def evaluated_images(args, n_train: int, n_test: int) -> int:
    """How many images an evaluation encodes (k-NN memory, probe data and test), for the memory it needs."""
    if args.eval_dataset == "none":
        return 0
    if evaluates_itself(args):
        if args.dataset == "stl10":
            return 5_000 + n_test
        return min(n_train, STREAM_EVAL_SAMPLE) + n_test if args.data_placement == "stream" else n_train + n_test
    if args.eval_dataset == "imagefolder":
        return sum(map(len, scan_imagefolder(args.eval_data_dir)[0].values()))
    return sum(split_sizes_of(args.eval_dataset, args.synthetic_size))


def evaluates_itself(args) -> bool:
    """Whether the labelled evaluation set is the training dataset's own."""
    return args.eval_dataset == args.dataset and args.eval_data_dir in (None, args.data_dir)


def load_evaluation(args, accelerator, dataset: ImageData = None):
    """The labelled set the encoder is evaluated on (--eval-dataset; an ImageData whose every image has a label), at
    the training's --image-size, or None (--eval-dataset none, --skip-eval). dataset: the training dataset, if
    loaded. Says once what the evaluation will use."""
    if getattr(args, "skip_eval", False):
        return None
    if args.eval_dataset == "none":
        held_out = f" on its {len(dataset.test_images):,} held-out images" if dataset is not None else ""
        accelerator.print(f"evaluation: none (--eval-dataset none): no labelled images, so no k-NN or linear probe; "
                          f"the pretext's own metrics only{held_out}. For them, pass --eval-dataset cifar10 (or "
                          f"imagefolder --eval-data-dir DIR, ...)", flush=True)
        return None
    if evaluates_itself(args):
        return (dataset or load_shared(args, accelerator)).labelled()
    options = dict(vars(args), dataset=args.eval_dataset, data_dir=args.eval_data_dir or "./data")
    labelled = load_shared(argparse.Namespace(**options), accelerator).labelled()
    accelerator.print(f"evaluation: on the labelled images of {args.eval_dataset} {options['data_dir']} "
                      f"({len(labelled.train_labels):,} train + {len(labelled.test_labels):,} test images, "
                      f"{len(labelled.classes)} classes) at {args.image_size} px", flush=True)
    return labelled


def images_evaluated(labelled: ImageData, dataset: ImageData) -> int:
    """The images an evaluation encodes: the labelled set's probe and test images, and the pretext's held-out ones."""
    labelled_images = len(labelled.evaluation_train()[1]) + len(labelled.test_labels) if labelled is not None else 0
    return labelled_images + len(dataset.test_images)


def evaluation_summary(args, labelled: ImageData, dataset: ImageData) -> dict:
    """What results.json says of the evaluation: the labelled set (or none) and the images the pretext's own
    metrics are measured on."""
    summary = {"labelled": "none" if labelled is None else args.eval_dataset,
               "pretext_images": 0 if args.skip_eval else len(dataset.test_images)}
    if labelled is not None:
        summary.update(data_dir=args.data_dir if evaluates_itself(args) else args.eval_data_dir or "./data",
                       classes=len(labelled.classes), train_images=len(labelled.evaluation_train()[1]),
                       test_images=len(labelled.test_labels))
    if args.skip_eval:
        summary["skipped"] = True
    return summary


def load_shared(args, accelerator) -> ImageData:
    """The dataset, with the file system scanned once (by the main process) and a file dataset decoded once per
    node: for entry points that need no placement (evaluate.py, an evaluation set)."""
    if args.dataset not in FILE_DATASETS:
        return load_generated(args, accelerator)
    cache_path = distributed.on_main_process_for_all(accelerator, lambda: imagefolder_cache(
        args.data_dir, args.image_size, args.cache_dir, args.skip_bad_images, SCANS[args.dataset](args.data_dir)[0]))
    return load_imagefolder(args.data_dir, args.image_size, args.cache_dir, args.skip_bad_images, cache_path,
                            scan=SCANS[args.dataset])


def load_generated(args, accelerator) -> ImageData:
    """The synthetic set or a dataset torchvision downloads. That is downloaded (into a --data-dir that may be
    shared) by the main process alone, then checked by the first process of each other node, then read by all."""
    if args.dataset in DOWNLOADED:
        with accelerator.main_process_first():
            with accelerator.local_main_process_first():
                return read_dataset(args)
    return read_dataset(args)


def micro_batch_size(args, num_processes: int) -> int:
    """Images per process per micro-batch: --batch-size is the global batch of one optimizer step, so a recipe
    means the same (samples per step, steps per epoch, lr) on any number of processes."""
    parts = num_processes * args.grad_accum
    if args.batch_size % parts:
        raise UserError(f"--batch-size {args.batch_size} (images per optimizer step, over all processes) does not "
                        f"divide into {num_processes} processes x {args.grad_accum} accumulation steps: "
                        f"use a multiple of {parts}")
    return args.batch_size // parts


def index_loader(accelerator, args, num_samples: int, on_draw=None):
    """Batches of sample indices for this process's micro-batches; the train split is indexed where it is placed
    (placement.TrainImages: on the device, in host memory, or decoded from its files). Pinned on a GPU, so
    Accelerate's copy of each batch to the device does not make the host wait.

    The loader gets a generator of its own: without one, every new iterator draws a seed from the global RNG (at
    the start of an epoch; mid-epoch after a resume), shifting the augmentations a resumed run draws.

    on_draw(indices): called with each batch as the loader draws it, one batch ahead of the one training uses
    (TrainImages.read_ahead starts decoding a streamed batch there)."""
    if num_samples < args.batch_size:
        raise UserError(f"the train split ({num_samples} images) is smaller than one --batch-size "
                        f"({args.batch_size}): lower it")
    batch = micro_batch_size(args, accelerator.num_processes)
    # Per process: Accelerate's prepare shards the sampler, each process taking every num_processes-th batch.
    return torch.utils.data.DataLoader(SampleIndices(num_samples), batch_size=batch, shuffle=True, drop_last=True,
                                       generator=torch.Generator().manual_seed(0),
                                       pin_memory=accelerator.device.type == "cuda",
                                       collate_fn=on_draw or _as_drawn)


class SampleIndices(torch.utils.data.Dataset):
    """The indices 0..n-1, a batch fetched as one tensor: the DataLoader's default would fetch each index as a
    tensor of its own and stack them, a cost every step pays at small batches."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(index)

    def __getitems__(self, indices: list) -> torch.Tensor:
        return torch.tensor(indices)


def _as_drawn(indices: torch.Tensor) -> torch.Tensor:
    return indices
