"""Small copies of the files torchvision downloads (CIFAR-10, CIFAR-100, STL-10), written in the real formats, and
the patch that lets torchvision take them as its own: its MD5 check, skipped (the files are not the real ones)
while everything else, the check that the files exist included, runs as it does.

Tests in this process: `with checksums_skipped(), downloads_refused(): ...`. Scripts run in a subprocess:
run_script(..., env=checksum_skipping_env(tmp_path)).
"""
import contextlib
import os
import pickle
from unittest import mock

import numpy as np

CIFAR100_FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle "
    "caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant "
    "flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man "
    "maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train "
    "trout "
    "tulip turtle wardrobe whale willow_tree wolf woman worm").split()
CIFAR100_COARSE = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees "
    "vehicles_1 vehicles_2").split()
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def _pickle(path, obj):
    # The real files were pickled by Python 2, whose str keys torchvision's encoding="latin1" reads as str.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _images(rng, n, size):
    return rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)


def write_cifar10(root, n_train=50, n_test=20, seed=0):
    """root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}: the train images spread over the five
    batches. Returns {"train": (images (N, 3, 32, 32) uint8, labels), "test": (...), "classes": [...]}."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    written = {"classes": CIFAR10_CLASSES}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = _images(rng, n, 32), rng.integers(0, 10, size=n)
        written[split] = (images, labels)
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        for i, part in enumerate(np.array_split(np.arange(n), len(names))):
            _pickle(os.path.join(folder, names[i]), {
                "batch_label": f"{names[i]} of 5" if split == "train" else "testing batch 1 of 1",
                "labels": labels[part].tolist(), "data": images[part].reshape(len(part), 3072),
                "filenames": [f"image_{j}.png" for j in part]})
    _pickle(os.path.join(folder, "batches.meta"),
            {"num_cases_per_batch": 10000, "label_names": CIFAR10_CLASSES, "num_vis": 3072})
    return written


def write_cifar100(root, n_train=60, n_test=20, seed=0):
    """root/cifar-100-python/{train,test,meta}. The coarse labels are not the real grouping of the fine ones, only
    different from them. Returns {"train": (images (N, 3, 32, 32) uint8, fine labels), "test": (...),
    "classes": the 100 fine names}."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    written = {"classes": CIFAR100_FINE}
    for split, n in (("train", n_train), ("test", n_test)):
        images, fine = _images(rng, n, 32), rng.integers(0, 100, size=n)
        written[split] = (images, fine)
        _pickle(os.path.join(folder, split), {
            "filenames": [f"image_{j}.png" for j in range(n)], "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": fine.tolist(), "coarse_labels": ((fine + 1) % 20).tolist(),
            "data": images.reshape(n, 3072)})  # rows of 1,024 red, then green, then blue values, row-major
    _pickle(os.path.join(folder, "meta"), {"fine_label_names": CIFAR100_FINE, "coarse_label_names": CIFAR100_COARSE})
    return written


def write_stl10(root, n_train=20, n_test=10, n_unlabeled=30, seed=0):
    """root/stl10_binary/{train,test,unlabeled}_X.bin, {train,test}_y.bin, class_names.txt, fold_indices.txt. As in
    the real files, each image is its red, green and blue 96x96 planes, each stored column by column, and the labels
    are 1..10. Returns {"train": (images (N, 3, 96, 96) uint8 in (channel, row, column) order, labels 0..9),
    "test": (...), "unlabeled": images, "classes": [...]}."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "stl10_binary")
    os.makedirs(folder, exist_ok=True)
    written = {"classes": STL10_CLASSES}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        images = _images(rng, n, 96)
        images.transpose(0, 1, 3, 2).tofile(os.path.join(folder, f"{split}_X.bin"))  # column-major planes
        if split == "unlabeled":
            written[split] = images
            continue
        labels = rng.integers(0, 10, size=n)
        (labels + 1).astype(np.uint8).tofile(os.path.join(folder, f"{split}_y.bin"))
        written[split] = (images, labels)
    with open(os.path.join(folder, "class_names.txt"), "w") as f:
        f.write("\n".join(STL10_CLASSES) + "\n")
    with open(os.path.join(folder, "fold_indices.txt"), "w") as f:  # 10 folds of train indices, one a line
        f.write("".join(" ".join(map(str, rng.permutation(n_train)[:max(1, n_train // 5)])) + " \n"
                        for _ in range(10)))
    return written


def _md5_skipped(fpath, md5, **kwargs):
    return True


def _download_refused(url, *args, **kwargs):
    raise RuntimeError(f"download of {url} refused: the test's files should have been found")


@contextlib.contextmanager
def checksums_skipped():
    """torchvision takes any file that exists for the real one: only its MD5 comparison is patched (check_integrity,
    which every dataset calls, still requires the file)."""
    import torchvision.datasets.utils

    with mock.patch.object(torchvision.datasets.utils, "check_md5", _md5_skipped):
        yield


@contextlib.contextmanager
def downloads_refused():
    """A download by torchvision (its download_url, which CIFAR and STL-10 download through) raises at once, naming
    the URL: a test without the files fails; it never waits on the network nor fetches the real dataset."""
    import torchvision.datasets.utils

    with mock.patch.object(torchvision.datasets.utils, "download_url", _download_refused):
        yield


# The sitecustomize module a subprocess imports at startup (site does, from the first sys.path entry that has one):
# it patches torchvision.datasets.utils as it is first imported, so a process that never uses torchvision does not
# pay for importing it, then runs the sitecustomize it shadows, if any.
_SITECUSTOMIZE = '''\
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

REFUSE_DOWNLOADS = {refuse}


def _md5_skipped(fpath, md5, **kwargs):
    return True


def _download_refused(url, *args, **kwargs):
    raise RuntimeError(f"download of {{url}} refused: the test's files should have been found")


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "torchvision.datasets.utils":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            module.check_md5 = _md5_skipped
            if REFUSE_DOWNLOADS:
                module.download_url = _download_refused
        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchOnImport())

_here = os.path.dirname(os.path.abspath(__file__))
_shadowed = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here])
if _shadowed is not None:
    _shadowed.loader.exec_module(importlib.util.module_from_spec(_shadowed))
'''


def checksum_skipping_env(tmp_path, refuse_downloads=True) -> dict:
    """Environment variables under which every Python process (accelerate launch's workers too) applies
    checksums_skipped(), and downloads_refused() unless refuse_downloads is False: a sitecustomize.py in a folder
    put first on PYTHONPATH. For run_script(..., env=...)."""
    folder = os.path.join(str(tmp_path), "checksums_skipped")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "sitecustomize.py"), "w") as f:
        f.write(_SITECUSTOMIZE.format(refuse=bool(refuse_downloads)))
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": folder + (os.pathsep + path if path else "")}
