"""Each --dataset read into an ImageData: generated, downloaded by torchvision (the main process first), or read
from files and decoded once per node (the decode-once cache), with the file system scanned once for all ranks.
"""
import hashlib
import os

from ssl_scripts.data import cache
from ssl_scripts.data.folders import SCANS
from ssl_scripts.data.image_data import DOWNLOADED, FILE_DATASETS, ImageData, make_synthetic, split_sizes, split_sizes_of
from ssl_scripts.runtime import distributed


def read_dataset(args) -> ImageData:
    """The dataset --dataset names, loaded by this process (load_generated and load_shared share the work of a node)."""
    if args.dataset == "synthetic":
        n_train, n_test = split_sizes(args)
        return make_synthetic(args.image_size, n_train=n_train, n_test=n_test)
    if args.dataset in ("cifar10", "cifar100"):
        from ssl_scripts.data import downloads
        return ImageData(**downloads.read_cifar(args.data_dir, args.image_size, int(args.dataset[5:])))
    if args.dataset == "stl10":
        return load_stl10(args.data_dir, args.image_size, args.cache_dir)
    return cache.load_imagefolder(args.data_dir, args.image_size, args.cache_dir, args.skip_bad_images,
                                  scan=SCANS[args.dataset])


def load_stl10(data_dir: str, image_size: int, cache_dir: str) -> ImageData:
    """STL-10 (its 5,000 labelled train images, then its 100,000 unlabeled ones, labelled -1; its 8,000 test
    images), read from torchvision's files once per node into a cache that the node's processes map (3 GB each
    otherwise)."""
    from ssl_scripts.data import downloads
    key = hashlib.sha256(repr(("stl10", os.path.abspath(data_dir), image_size)).encode()).hexdigest()[:20]
    return cache.decoded_once(os.path.join(cache_dir, f"stl10-{key}.pt"),
                              lambda: ImageData.from_tensors(downloads.read_stl10(data_dir, image_size)),
                              sum(split_sizes_of("stl10")) * 3 * image_size ** 2)


def load_shared(args, accelerator) -> ImageData:
    """The dataset, with the file system scanned once (by the main process) and a file dataset decoded once per
    node: for entry points that need no placement (evaluate.py, an evaluation set)."""
    if args.dataset not in FILE_DATASETS:
        return load_generated(args, accelerator)
    cache_path = distributed.on_main_process_for_all(accelerator, lambda: cache.imagefolder_cache(
        args.data_dir, args.image_size, args.cache_dir, args.skip_bad_images, SCANS[args.dataset](args.data_dir)[0]))
    return cache.load_imagefolder(args.data_dir, args.image_size, args.cache_dir, args.skip_bad_images, cache_path,
                                  scan=SCANS[args.dataset])


def load_generated(args, accelerator) -> ImageData:
    """The synthetic set or a dataset torchvision downloads. That is downloaded (into a --data-dir that may be
    shared) by the main process alone, then checked by the first process of each other node, then read by all."""
    if args.dataset in DOWNLOADED:
        with accelerator.main_process_first():
            with accelerator.local_main_process_first():
                return read_dataset(args)
    return read_dataset(args)
