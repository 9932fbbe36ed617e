"""The train split, planned once by the main process (its files, its cache, where --data-placement puts it) and
then loaded by every process as the plan says, one decode per node.
"""
import os
from typing import NamedTuple

import torch

from ssl_scripts.data import cache, placement, sources, streaming
from ssl_scripts.data.evaluation_set import evaluated_images
from ssl_scripts.data.folders import HELD_OUT_ENOUGH, SCANS
from ssl_scripts.data.image_data import DOWNLOADED, FILE_DATASETS, split_sizes
from ssl_scripts.runtime import files
from ssl_scripts.runtime import distributed


class TrainSplitPlan(NamedTuple):
    """Where the train split lives and how every process reads it: the main process's answer, the same for all."""
    placement: str  # device, host or stream (placement.choose)
    cache_path: str  # the cache every process maps (stream: its evaluation sample's); None: generated or downloaded
    scanned: tuple  # stream: the folder's scan, whose list every rank streams; None otherwise
    decoded_bytes: int  # the whole dataset decoded, for the cache's room check
    line: str  # the data line: what was found, and where it goes


def plan(args, device: torch.device) -> TrainSplitPlan:
    """Scans a file dataset (its list of files, the cache's name) and chooses the placement against the memory
    free on this node, before anything large is allocated. The main process's work, for all of them."""
    folder = args.dataset in FILE_DATASETS
    scanned = SCANS[args.dataset](args.data_dir) if folder else None
    n_train, n_test = (len(scanned[0]["train"]), len(scanned[0]["test"])) if folder else split_sizes(args)
    image_bytes = 3 * args.image_size ** 2
    # A mapped cache is one copy per node; a generated or downloaded dataset, one per process of the node.
    cached = folder or args.dataset == "stl10"
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    host_bytes = (n_train + n_test) * image_bytes * (1 if cached else processes)
    sharing = placement.processes_per_device(device)
    on_gpu = device.type == "cuda"
    eval_bytes = placement.evaluation_bytes(args, evaluated_images(args, n_train, n_test), sharing) if on_gpu else 0
    chosen, why = placement.choose(args.data_placement, n_train * image_bytes, host_bytes, device,
                                   placement.device_free_bytes(device), placement.host_available_bytes(),
                                   streamable=folder, processes_per_device=sharing, eval_bytes=eval_bytes)
    # Streamed folders need no cache of the train split, nor its stat of every file: only of their sample's.
    if chosen == "stream":
        cache_path = cache.imagefolder_cache(args.data_dir, args.image_size, args.cache_dir, True,
                                             {"train": streaming.stream_sample(scanned[0]), "test": scanned[0]["test"]})
    elif folder:
        cache_path = cache.imagefolder_cache(args.data_dir, args.image_size, args.cache_dir, args.skip_bad_images,
                                             scanned[0])
    else:
        cache_path = None
    line = f"data: {_found(args, n_train, n_test)}; placement {chosen} (--data-placement {args.data_placement}): {why}"
    return TrainSplitPlan(chosen, cache_path, scanned if chosen == "stream" else None,
                          (n_train + n_test) * image_bytes, line)


def _found(args, n_train: int, n_test: int) -> str:
    """The data line's first part: the images found and their decoded size."""
    train, test = (files.size(n * 3 * args.image_size ** 2, exact=False) for n in (n_train, n_test))
    if args.dataset != "images":
        return f"{n_train:,} train + {n_test:,} test images at {args.image_size} px ({train} + {test} as uint8)"
    where = "listed in" if os.path.isfile(args.data_dir) else "under"
    found = (f"{n_train + n_test:,} unlabeled images {where} {args.data_dir} at {args.image_size} px: "
             f"{n_train:,} train + {n_test:,} held out for the pretext's metrics ({train} + {test} as uint8)")
    if n_test < HELD_OUT_ENOUGH:
        found += f"; the pretext's metrics rest on {n_test:,} images: noisy ({HELD_OUT_ENOUGH} steady them)"
    return found


def _plan_said(args, device: torch.device) -> TrainSplitPlan:
    """plan(), its data line said at once but a download's, which waits for its files: a failed one claims no
    images."""
    split = plan(args, device)
    if args.dataset not in DOWNLOADED:
        print(split.line, flush=True)
    return split


def load_train_split(args, accelerator):
    """The dataset (host memory, uint8) and its train split where --data-placement puts it (a TrainImages, which
    gives batches on the device). The main process plans for all, before anything large is allocated; every process
    uses its answer, so ranks never disagree over what a shared folder holds. Then one process per node decodes
    (see cache.decoded_once)."""
    split = distributed.on_main_process_for_all(accelerator, lambda: _plan_said(args, accelerator.device))
    if split.placement == "stream":
        dataset = streaming.stream_imagefolder(args.data_dir, args.image_size, split.scanned,
                                               sample_cache=split.cache_path)
    elif split.cache_path:
        dataset = cache.load_imagefolder(args.data_dir, args.image_size, args.cache_dir, args.skip_bad_images,
                                         split.cache_path, split.decoded_bytes, scan=SCANS[args.dataset])
    else:
        dataset = sources.load_generated(args, accelerator)
        if args.dataset in DOWNLOADED and accelerator.is_main_process:
            print(split.line, flush=True)
    if dataset.skipped_images and accelerator.is_main_process:
        print(f"warning: {dataset.skipped_images} unreadable image file(s) of {args.data_dir!r} left out "
              f"(--skip-bad-images); results.json counts them as skipped_images", flush=True)
    return dataset, placement.TrainImages(dataset.train_images, split.placement, accelerator.device)
