"""The decode-once cache: a file dataset decoded by one process per node into a file in --cache-dir that every
process of the node memory-maps (one copy per node, in its page cache), named by a digest of its files.
"""
import atexit
import contextlib
import glob
import hashlib
import os
import shlex
import tempfile

import numpy as np
import torch
from tqdm.auto import tqdm

from ssl_scripts import UserError
from ssl_scripts.data.decode import decode_or_problem, decode_workers, fork_pool
from ssl_scripts.data.folders import scan_imagefolder
from ssl_scripts.data.image_data import ImageData
from ssl_scripts.models.image_input import DECODER
from ssl_scripts.runtime import files
from ssl_scripts.runtime import filelock
from ssl_scripts.runtime.progress import redraw_interval_s

# The names of the caches of decoded images in --cache-dir (imagefolder_cache, load_stl10).
CACHE_NAMES = ("imagefolder-*.pt", "stl10-*.pt")


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


def decode_imagefolder(data_dir: str, image_size: int, skip_bad: bool = False, scanned=None) -> ImageData:
    """Every image decoded straight into one preallocated uint8 tensor per split (no list of arrays, no stacked
    or permuted copy), by a pool of processes, with a progress bar. scanned: the scan's answer (SCANS), if known."""
    labelled, classes = scanned or scan_imagefolder(data_dir)
    tensors, skipped = {}, 0
    total = sum(len(labelled[s]) for s in ("train", "test"))
    print(f"decoding {total} images of {data_dir}", flush=True)
    workers = decode_workers()  # the node's other processes wait meanwhile: all of this one's CPUs decode
    with fork_pool(workers) as pool, \
            tqdm(total=total, desc="decode", unit="img", mininterval=redraw_interval_s()) as bar:
        for split in ("train", "test"):
            jobs = labelled[split]
            images = torch.empty((len(jobs), 3, image_size, image_size), dtype=torch.uint8)
            labels = torch.empty(len(jobs), dtype=torch.int64)
            kept, bad = 0, []
            decoded = pool.map(decode_or_problem, [(p, image_size) for p, _ in jobs], chunksize=256)
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
    with decoder_lock(places):
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


@contextlib.contextmanager
def decoder_lock(places: list):
    """An exclusive lock beside the cache (runtime/filelock.py): the one decoder holds it, the others wait for it.
    Taken next to the first place whose folder can be written and locked."""
    for place in places:
        path = place + ".lock"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = filelock.acquire(path, on_busy=lambda _fd, place=place: print(
                f"waiting for another process to decode the images into {place!r}", flush=True))
        except OSError:  # not writable there, or no POSIX locks: the next place
            continue
        try:
            yield
        finally:
            filelock.release(path, fd)
        return
    raise UserError(f"cannot create a lock file beside the image cache in any of "
                    f"{[os.path.dirname(p) for p in places]}: pass a writable --cache-dir")


def _cache_written(path: str) -> str:
    """Where the new cache is, what such caches take in --cache-dir, and how to delete them (nothing else does)."""
    folder = os.path.dirname(path)
    caches = [p for name in CACHE_NAMES for p in glob.glob(os.path.join(glob.escape(folder), name))]
    total = sum(os.path.getsize(p) for p in caches)
    patterns = " ".join(shlex.quote(folder) + "/" + name for name in CACHE_NAMES)
    return (f"cached the decoded images in {path!r} ({files.size(os.path.getsize(path), exact=False)}); "
            f"{folder!r} keeps such caches across runs ({files.size(total, exact=False)} now): `rm -f {patterns}` "
            f"deletes them safely while no run is starting (a run decodes again what it misses)")
