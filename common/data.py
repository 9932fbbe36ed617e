"""Datasets as uint8 tensors, and the order their batches are drawn in.

Every dataset is decoded once into (N, 3, H, W) uint8 plus int64 labels (an image folder into a cache file that
every process maps). Training batches index that tensor where common/placement.py put it (on the device,
airbench's way, or in host memory) with index batches from a seeded loader; common/augment.py transforms them on
the device.
"""
import hashlib
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from common import UserError, distributed, files, placement

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


@dataclass
class ImageData:
    train_images: torch.Tensor  # (N, 3, H, W) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list
    skipped_files: int = 0

    def channel_stats(self):
        """Per-channel mean and std of the train split in [0, 1], for the encoder's built-in normalization."""
        # A seeded sample of the whole split (exact to 3 decimals, and quick): image folders are sorted by class,
        # so their first images are a few classes only.
        sample = torch.randperm(len(self.train_images), generator=torch.Generator().manual_seed(0))[:20000]
        sums, squares = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        for chunk in sample.sort().values.split(256):  # never a float copy of the sample: 12 GB at 224 px
            x = self.train_images[chunk].double().div_(255)
            sums += x.sum(dim=(0, 2, 3))
            squares += x.square().sum(dim=(0, 2, 3))
        n = len(sample) * self.train_images.shape[2] * self.train_images.shape[3]
        mean = sums / n
        return mean.tolist(), ((squares - n * mean.square()) / (n - 1)).sqrt().tolist()


def load_dataset(args) -> ImageData:
    if args.dataset == "synthetic":
        n_train, n_test = decoded_sizes(args)
        return make_synthetic(args.image_size, n_train=n_train, n_test=n_test)
    if args.dataset == "cifar10":
        return load_cifar10(args.data_dir, args.image_size)
    return load_imagefolder(args.data_dir, args.image_size, args.cache_dir, args.skip_bad_images)


# ----------------------------------------------------------------------------------------------- sources
def load_cifar10(data_dir: str, image_size: int) -> ImageData:
    from torchvision.datasets import CIFAR10

    try:
        splits = [CIFAR10(root=data_dir, train=train, download=True) for train in (True, False)]
    except Exception as e:  # network errors come in many types; the fix is the same
        raise UserError(f"could not load or download CIFAR-10 into {data_dir!r} ({e}); download it there, "
                        f"or point --dataset imagefolder --data-dir at a folder with train/ and test/") from e
    images = [torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous() for s in splits]
    labels = [torch.tensor(s.targets, dtype=torch.int64) for s in splits]
    if image_size != 32:
        images = [resize_uint8(x, image_size) for x in images]
    return ImageData(images[0], labels[0], images[1], labels[1], list(splits[0].classes))


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


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
def decode_image(path: str, size: int) -> np.ndarray:
    """Any PIL-readable image -> (size, size, 3) uint8: converted to RGB, shorter side resized, center-cropped."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.load()
        if img.mode != "RGB":
            # Palette and alpha images go through RGBA so transparency becomes its colour, not garbage.
            img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA", "LA") else img.convert("RGB")
        if img.size != (size, size):
            img = ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC)
        return np.asarray(img, dtype=np.uint8)


def decode_workers() -> int:
    """The CPUs this process may run on (Slurm and taskset restrict them), not all of the machine's."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _decode_or_none(job):
    path, size = job
    try:
        return decode_image(path, size)
    except Exception as e:  # PIL raises OSError, UnidentifiedImageError, ValueError, SyntaxError ...
        return f"{type(e).__name__}: {e}"


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


def imagefolder_cache(data_dir: str, image_size: int, cache_dir: str, skip_bad: bool, labelled: dict) -> str:
    """The cache's path for a scanned folder (scan_imagefolder's labelled files): a digest of every file's path,
    size and mtime (one stat per file: 60k on CIFAR-10, 1.3M on ImageNet, so one process computes it for all)."""
    stats = [(p, os.stat(p)) for s in ("train", "test") for p, _ in labelled[s]]
    key = hashlib.sha256(repr((os.path.abspath(data_dir), image_size, skip_bad,
                               [(p, st.st_size, st.st_mtime_ns) for p, st in stats])).encode()).hexdigest()[:20]
    return os.path.join(cache_dir, f"imagefolder-{key}.pt")


def load_imagefolder(data_dir: str, image_size: int, cache_dir: str, skip_bad: bool = False,
                     cache_path: str = None) -> ImageData:
    """The folder's images, memory-mapped from the cache (decoded into it first if missing or damaged): every
    process of a node maps the same file, so the node holds one copy, in its page cache."""
    scanned = None
    if cache_path is None:
        scanned = scan_imagefolder(data_dir)
        cache_path = imagefolder_cache(data_dir, image_size, cache_dir, skip_bad, scanned[0])
    if os.path.exists(cache_path):
        try:
            return ImageData(**torch.load(cache_path, weights_only=True, mmap=True))
        except Exception:
            pass  # a damaged cache is rebuilt below
    data = decode_imagefolder(data_dir, image_size, skip_bad, scanned)
    try:
        files.save_tensors(vars(data), cache_path)
    except files.WriteFailed as e:  # the cache only saves time: training goes on without it
        print(f"warning: decoded images not cached: {e.problem}; the next start decodes them again", flush=True)
        return data
    return ImageData(**torch.load(cache_path, weights_only=True, mmap=True))  # the decoded copy goes


def decode_imagefolder(data_dir: str, image_size: int, skip_bad: bool = False, scanned=None) -> ImageData:
    """Every image decoded straight into one preallocated uint8 tensor per split (no list of arrays, no stacked
    or permuted copy), by a pool of processes, with a progress bar. scanned: scan_imagefolder's answer, if known."""
    labelled, classes = scanned or scan_imagefolder(data_dir)
    tensors, skipped = {}, 0
    total = sum(len(labelled[s]) for s in ("train", "test"))
    print(f"decoding {total} images of {data_dir}", flush=True)
    workers = min(8, decode_workers())
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool, \
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
            if bad and not skip_bad:
                raise UserError(f"cannot read image {bad[0][0]!r} ({bad[0][1]}); fix or remove it, or pass "
                                f"--skip-bad-images ({len(bad)} unreadable file(s) in {split}/)")
            if not kept:
                raise UserError(f"no readable images in {os.path.join(data_dir, split)!r}")
            skipped += len(bad)
            # Unreadable files leave the end unused: a copy then, as torch.save would write the whole storage.
            tensors[f"{split}_images"] = images if kept == len(jobs) else images[:kept].clone()
            tensors[f"{split}_labels"] = labels if kept == len(jobs) else labels[:kept].clone()
    return ImageData(**tensors, classes=classes, skipped_files=skipped)


class StreamedImages:
    """An image folder's split as (N, 3, H, W) uint8 that is never held whole: images[indices] decodes those files
    (a pool of processes) with the same decode_image as the cache, so the pixels are the same. For folders larger
    than host memory (--data-placement stream)."""

    dtype, device = torch.uint8, torch.device("cpu")

    def __init__(self, paths: list, image_size: int, workers: int):
        self.paths, self.workers = paths, workers
        self.shape = (len(paths), 3, image_size, image_size)
        self._pool = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, indices):
        if isinstance(indices, int):
            return self[torch.tensor([indices])][0]
        indices = torch.as_tensor(indices).tolist()
        out = torch.empty((len(indices), *self.shape[1:]), dtype=torch.uint8)
        self.decode_into(indices, out)
        return out

    def decode_into(self, indices: list, out: torch.Tensor) -> None:
        if self._pool is None:  # forked on first use: after the process's own setup, never in a checkpoint
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("fork"))
        size = self.shape[-1]
        jobs = [(self.paths[i], size) for i in indices]
        for k, image in enumerate(self._pool.map(_decode_or_none, jobs, chunksize=max(1, len(jobs) // self.workers))):
            if not isinstance(image, np.ndarray):
                raise UserError(f"cannot read image {jobs[k][0]!r} ({image}): streamed images are read as training "
                                f"goes; fix or remove it, or decode the folder up front (--data-placement host "
                                f"--skip-bad-images)")
            out[k] = torch.from_numpy(image).permute(2, 0, 1)


def stream_imagefolder(data_dir: str, image_size: int) -> ImageData:
    """The folder's labels now and its images as they are needed (StreamedImages): nothing decoded up front."""
    labelled, classes = scan_imagefolder(data_dir)
    workers = max(1, decode_workers() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    splits = {split: (StreamedImages([p for p, _ in labelled[split]], image_size, workers),
                      torch.tensor([label for _, label in labelled[split]], dtype=torch.int64))
              for split in ("train", "test")}
    return ImageData(*splits["train"], *splits["test"], classes=classes)


# ------------------------------------------------------------------------------------- for the training loop
def decoded_sizes(args):
    """(train images, test images) of the synthetic set or CIFAR-10, known before they are made or loaded (an image
    folder's are counted by scanning it)."""
    if args.dataset == "synthetic":
        return args.synthetic_size, max(4, args.synthetic_size // 4)
    return 50_000, 10_000


def load_data(args, accelerator):
    """The dataset (host memory, uint8) and its train split where --data-placement puts it (a TrainImages, which
    gives batches on the device). The placement is chosen before anything large is allocated. Image folders are
    decoded by each node's first process first (the node's other processes then map its cache, which may be
    node-local); the main process computes the cache's name once for all."""
    def plan():
        folder = args.dataset == "imagefolder"
        labelled = scan_imagefolder(args.data_dir)[0] if folder else None
        n_train, n_test = (len(labelled["train"]), len(labelled["test"])) if folder else decoded_sizes(args)
        image_bytes = 3 * args.image_size ** 2
        # A mapped cache is one copy per node; a generated or downloaded dataset, one per process of the node.
        copies = 1 if folder else int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        host_bytes = (n_train + n_test) * image_bytes * copies
        chosen, why = placement.choose(args.data_placement, n_train * image_bytes, host_bytes, accelerator.device,
                                       placement.device_free_bytes(accelerator.device),
                                       placement.host_available_bytes(), streamable=folder)
        # Streamed folders need no cache, nor its stat of every file.
        cache_path = (imagefolder_cache(args.data_dir, args.image_size, args.cache_dir, args.skip_bad_images,
                                        labelled) if folder and chosen != "stream" else None)
        train, test = (files.size(n * image_bytes, exact=False) for n in (n_train, n_test))
        print(f"data: {n_train} train + {n_test} test images at {args.image_size} px ({train} + {test} as uint8); "
              f"placement {chosen} (--data-placement {args.data_placement}): {why}", flush=True)
        return cache_path, chosen
    cache_path, chosen = distributed.decided_by_main(accelerator, plan)
    if chosen == "stream":
        dataset = stream_imagefolder(args.data_dir, args.image_size)
    else:
        with accelerator.local_main_process_first():
            dataset = (load_imagefolder(args.data_dir, args.image_size, args.cache_dir, args.skip_bad_images,
                                        cache_path) if cache_path else load_dataset(args))
    if dataset.skipped_files and accelerator.is_main_process:
        print(f"warning: {dataset.skipped_files} unreadable image file(s) of {args.data_dir!r} left out "
              f"(--skip-bad-images); results.json counts them as skipped_images", flush=True)
    return dataset, placement.TrainImages(dataset.train_images, chosen, accelerator.device)


def micro_batch_size(args, num_processes: int) -> int:
    """Images per process per micro-batch: --batch-size is the global batch of one optimizer step, so a recipe
    means the same (samples per step, steps per epoch, lr) on any number of processes."""
    parts = num_processes * args.grad_accum
    if args.batch_size % parts:
        raise UserError(f"--batch-size {args.batch_size} (images per optimizer step, over all processes) does not "
                        f"divide into {num_processes} processes x {args.grad_accum} accumulation steps: "
                        f"use a multiple of {parts}")
    return args.batch_size // parts


def index_loader(accelerator, args, num_samples: int):
    """Batches of sample indices for this process's micro-batches; the images stay on the device and are indexed
    there. Pinned on a GPU, so Accelerate's copy of each batch to the device does not make the host wait.

    The loader gets a generator of its own: without one, every new iterator draws a seed from the global RNG (at
    the start of an epoch; mid-epoch after a resume), shifting the augmentations a resumed run draws."""
    if num_samples < args.batch_size:
        raise UserError(f"the train split ({num_samples} images) is smaller than one --batch-size "
                        f"({args.batch_size}): lower it")
    batch = micro_batch_size(args, accelerator.num_processes)
    # Per process: Accelerate's prepare shards the sampler, each process taking every num_processes-th batch.
    return torch.utils.data.DataLoader(torch.arange(num_samples), batch_size=batch, shuffle=True, drop_last=True,
                                       generator=torch.Generator().manual_seed(0),
                                       pin_memory=accelerator.device.type == "cuda")
