"""The datasets torchvision downloads, read into uint8 tensors.

Each reader returns a plain dict: train_images and test_images (N, 3, H, W) uint8, contiguous; train_labels and
test_labels int64 (-1: no label); classes (the class names). torchvision downloads the files into data_dir if they
are not there yet (and checks their MD5); any failure to download or read them is a UserError.
"""
import contextlib
import os

import torch
import torch.nn.functional as F

from ssl_scripts import UserError

# Images resized at a time: a float copy of a whole set would be 4x its uint8 size at the new size (30 GB for
# CIFAR's 60,000 images at 224 px).
RESIZE_CHUNK = 1024
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def read_cifar(data_dir: str, image_size: int, num_classes: int) -> dict:
    """CIFAR-10 or CIFAR-100 (num_classes 10 or 100; the 100 fine labels): 50,000 train and 10,000 test images."""
    from torchvision.datasets import CIFAR10, CIFAR100

    if num_classes not in (10, 100):
        raise ValueError(f"CIFAR has 10 or 100 classes, not {num_classes}")
    name, dataset = f"CIFAR-{num_classes}", (CIFAR10 if num_classes == 10 else CIFAR100)
    with _user_error(name, data_dir, "imagefolder --data-dir at a folder with train/<class>/ and test/<class>/"):
        splits = [dataset(root=data_dir, train=train, download=True) for train in (True, False)]
    # torchvision's (N, 32, 32, 3) is a view of the files' (N, 3, 32, 32): permuted back, contiguous as it is.
    images = [_resized(torch.from_numpy(s.data).permute(0, 3, 1, 2), image_size) for s in splits]
    labels = [torch.tensor(s.targets, dtype=torch.int64) for s in splits]
    return {"train_images": images[0], "train_labels": labels[0], "test_images": images[1],
            "test_labels": labels[1], "classes": list(splits[0].classes)}


def read_stl10(data_dir: str, image_size: int) -> dict:
    """STL-10 as self-supervised learning uses it: train_images holds its 5,000 labelled train images first, then
    its 100,000 unlabeled ones (labelled -1); labelled_train says how many lead. test: its 8,000 labelled images."""
    # The splits are read one by one into a tensor made for them: torchvision's "train+unlabeled" concatenates
    # them into a copy that keeps the files' column-major layout, so a contiguous tensor would be a second copy
    # of 3 GB. Each split costs torchvision an MD5 pass over all the files.
    train = _stl10_split(data_dir, "train")
    unlabeled = _stl10_split(data_dir, "unlabeled")[0]
    labelled = len(train[0])
    train_images = torch.empty(labelled + len(unlabeled), 3, image_size, image_size, dtype=torch.uint8)
    _resize_into(train_images[:labelled], train[0])
    _resize_into(train_images[labelled:], unlabeled)
    del unlabeled
    train_labels = torch.cat([train[1], torch.full((len(train_images) - labelled,), -1, dtype=torch.int64)])
    test_images, test_labels, _ = _stl10_split(data_dir, "test")
    return {"train_images": train_images, "train_labels": train_labels, "labelled_train": labelled,
            "test_images": _resized(test_images, image_size), "test_labels": test_labels, "classes": train[2]}


def _stl10_split(data_dir: str, split: str):
    """(images: a (N, 3, 96, 96) uint8 view of torchvision's array, not contiguous; labels 0..9 int64 or None;
    class names)."""
    from torchvision.datasets import STL10

    with _user_error("STL-10", data_dir, "images --data-dir at a folder of its images (any layout)"):
        dataset = STL10(root=data_dir, split=split, download=True)
    # torchvision reads the labels 1..10 of the files as 0..9; the unlabeled split's are all -1.
    labels = None if split == "unlabeled" else torch.from_numpy(dataset.labels).to(torch.int64)
    return torch.from_numpy(dataset.data), labels, list(getattr(dataset, "classes", STL10_CLASSES))


@contextlib.contextmanager
def _user_error(name: str, data_dir: str, instead: str):
    """Turns a failure of torchvision's download or read into a UserError that says in one line what to do, and
    removes the folders torchvision made for the download if they are still empty (./data/ from a first try)."""
    made, folder = [], os.path.abspath(data_dir)
    while not os.path.exists(folder):
        made.append(folder)  # innermost first
        folder = os.path.dirname(folder)
    try:
        yield
    except MemoryError:  # not the files' fault
        raise
    except Exception as e:  # network errors come in many types; the fix is the same
        for folder in made:
            with contextlib.suppress(OSError):  # not empty (a partial download): kept, the next try replaces it
                os.rmdir(folder)
        why = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"could not load or download {name} into {data_dir!r} ({why}); download it there, "
                        f"or point --dataset {instead}") from e


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """images (any strides) as a contiguous (N, 3, size, size) uint8 tensor: one copy at most."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.contiguous()
    out = torch.empty(len(images), 3, size, size, dtype=torch.uint8)
    _resize_into(out, images)
    return out


def _resize_into(out: torch.Tensor, images: torch.Tensor) -> None:
    if images.shape[-2:] == out.shape[-2:]:
        out.copy_(images)
        return
    for start in range(0, len(images), RESIZE_CHUNK):
        out[start:start + RESIZE_CHUNK] = resize_uint8(images[start:start + RESIZE_CHUNK], out.shape[-1])


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)
