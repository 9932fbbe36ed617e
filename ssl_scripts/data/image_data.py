"""Every dataset's form in memory, ImageData: (N, 3, H, W) uint8 images and int64 labels, -1 where an image has
none (torchvision's STL-10 convention); the registry of --dataset's choices, and the generated set.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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

    @classmethod
    def from_tensors(cls, tensors: dict) -> "ImageData":
        """An ImageData of the tensors' fields (other entries left out)."""
        return cls(**{k: v for k, v in tensors.items() if k in cls.__dataclass_fields__})

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


def split_sizes_of(dataset: str, synthetic_size: int = 1024):
    """(train images, test images) of a generated or downloaded dataset, known before it is made or loaded (a file
    dataset's are counted by scanning it)."""
    if dataset == "synthetic":
        return synthetic_size, max(4, synthetic_size // 4)
    return {"stl10": (105_000, 8_000)}.get(dataset, (50_000, 10_000))


def split_sizes(args):
    return split_sizes_of(args.dataset, args.synthetic_size)
