"""The files of a file dataset, listed: an image folder's train/<class>/ and test/<class>/ (scan_imagefolder), or
unlabeled images at any depth or listed in a file, some held out of training (scan_images).
"""
import os

import torch

from ssl_scripts import UserError
from ssl_scripts.data.decode import IMAGE_EXTENSIONS

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
    """Unlabeled images, in scan_imagefolder's form (label -1, no classes): list_images's, in the same order on every
    node. A seeded share of them, fixed by the list, is held out of training as the "test" split, for the pretext's
    metrics."""
    paths = list_images(data_dir)
    held = held_out_count(len(paths))
    if len(paths) < 2 * held:
        raise UserError(f"{data_dir!r} holds {len(paths)} image(s): --dataset images needs at least "
                        f"{2 * HELD_OUT_MIN} ({HELD_OUT_MIN} are held out of training for the pretext's metrics)")
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(0))
    test = set(order[:held].tolist())
    split = {"train": [(p, -1) for i, p in enumerate(paths) if i not in test],
             "test": [(p, -1) for i, p in enumerate(paths) if i in test]}
    return split, []


def list_images(data_dir: str) -> list:
    """Every image file under a folder at any depth (hidden files and folders skipped, symlinks followed, sorted by
    path), or the files a list names (one path per line, relative to the list's folder; in the list's order)."""
    if os.path.isfile(data_dir):
        return _listed_images(data_dir)
    if os.path.isdir(data_dir):
        return _images_under(data_dir)
    raise UserError(f"--data-dir {data_dir!r} does not exist: pass a folder of images (any layout) or a text "
                    f"file that lists image paths, one per line")


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
