"""Batched image transforms on the training device: the augmentations (one registry, AUGMENTATIONS: a new one is
a function here and an entry there; the first line of its docstring is its --augment help). Whole batches as
tensor ops, never per-image PIL. (RotNet's rotations are the rotation task's: ssl_scripts/tasks/rotation.py.)
"""
import math

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, pad: int) -> torch.Tensor:
    """RandomCrop(size, padding=pad) + RandomHorizontalFlip for a whole uint8 batch, as one gather along each
    image's flattened padded plane (on CPU several times faster than advanced indexing)."""
    n, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=dev)
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=dev)
    flip = torch.rand(n, 1, 1, device=dev) < 0.5
    cols = torch.arange(w, device=dev).view(1, 1, w)
    cols = torch.where(flip, w - 1 - cols, cols) + dx  # a flip is the crop's columns read backwards
    rows = torch.arange(h, device=dev).view(1, h, 1) + dy
    index = (rows * (w + 2 * pad) + cols).view(n, 1, h * w).expand(n, c, h * w)
    return padded.view(n, c, -1).gather(2, index).view(n, c, h, w)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """No augmentation: uint8 -> float in [0, 1] (the encoder normalizes, see models.Encoder)."""
    return images.float().div_(255)


def random_resized_crop_flip(x: torch.Tensor, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """RandomResizedCrop + RandomHorizontalFlip for a float batch: one affine grid_sample, per-image parameters."""
    n, dev = x.shape[0], x.device
    area = torch.empty(n, device=dev).uniform_(*scale)
    log_ratio = torch.empty(n, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    w = (area * log_ratio.exp()).sqrt().clamp(max=1)  # crop width and height as fractions of the image
    h = (area / log_ratio.exp()).sqrt().clamp(max=1)
    cx = (torch.rand(n, device=dev) * 2 - 1) * (1 - w)  # crop center, kept inside the image
    cy = (torch.rand(n, device=dev) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, device=dev) < 0.5, -1.0, 1.0)
    zero = torch.zeros(n, device=dev)
    theta = torch.stack([torch.stack([w * flip, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def color_jitter(x: torch.Tensor, strength=0.4, p=0.8, gray_p=0.2) -> torch.Tensor:
    """Brightness, contrast and saturation jitter (applied with probability p), then random grayscale."""
    n, dev = x.shape[0], x.device

    def factor():
        return torch.empty(n, 1, 1, 1, device=dev).uniform_(1 - strength, 1 + strength)

    jittered = x * factor()
    mean = grayscale(jittered).mean(dim=(1, 2, 3), keepdim=True)
    jittered = (jittered - mean) * factor() + mean
    gray = grayscale(jittered)
    jittered = (gray + (jittered - gray) * factor()).clamp(0, 1)
    x = torch.where(torch.rand(n, 1, 1, 1, device=dev) < p, jittered, x)
    return torch.where(torch.rand(n, 1, 1, 1, device=dev) < gray_p, grayscale(x), x)


def crop_flip(images: torch.Tensor) -> torch.Tensor:
    """RotNet's: a crop with 1/8 padding (4 px at 32) and a horizontal flip."""
    return to_float(random_crop_flip(images, pad=max(1, images.shape[-1] // 8)))


def simclr(images: torch.Tensor) -> torch.Tensor:
    """SimCLR's views: random resized crop 0.2-1, flip, color jitter 0.4, grayscale 0.2.

    A contrastive pair of two views of one image needs them, or the network matches views by their pixels alone."""
    return color_jitter(random_resized_crop_flip(to_float(images)))


# --augment's choices: uint8 batch -> augmented float batch in [0, 1].
AUGMENTATIONS = {"crop_flip": crop_flip, "simclr": simclr, "none": to_float}


def augment(images: torch.Tensor, kind: str = "crop_flip") -> torch.Tensor:
    """uint8 batch -> float batch in [0, 1], augmented as AUGMENTATIONS[kind] does."""
    return AUGMENTATIONS[kind](images)
