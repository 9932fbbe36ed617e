"""Dashboard media drawn with PIL (no plotting library needed): one picture for W&B and TensorBoard alike. A
task draws its own pictures with these (ssl_scripts/tasks/rotation.py's examples grid).

Each function returns a Picture or Histogram; Run.log hands them to whichever tracker the run uses.
"""
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Tableau's 10 colours, the palette plots of CIFAR classes are usually drawn in.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
GOOD, BAD = (44, 160, 44), (214, 39, 40)


@dataclass
class Picture:
    pixels: np.ndarray  # H x W x 3, uint8
    caption: str = ""


@dataclass
class Histogram:
    values: np.ndarray


def font(size: int):
    return ImageFont.load_default(size=size)


def confusion_matrix(true: torch.Tensor, predicted: torch.Tensor, names: list) -> Picture:
    """Counts of true (rows) x predicted (columns), shaded by the share of each row."""
    n = len(names)
    counts = torch.bincount(true.flatten().cpu() * n + predicted.flatten().cpu(), minlength=n * n).view(n, n)
    share = counts / counts.sum(1, keepdim=True).clamp(min=1)
    cell, margin = 64, 48
    canvas = Image.new("RGB", (margin + n * cell, margin + n * cell), "white")
    draw = ImageDraw.Draw(canvas)
    # The axes' titles: "predicted" over the columns' names, "true" written upwards left of the rows' names.
    grid = n * cell
    draw.text((margin + grid // 2, 1), "predicted", fill="black", font=font(12), anchor="mt")
    title = Image.new("RGB", (grid, 14), "white")
    ImageDraw.Draw(title).text((grid // 2, 1), "true", fill="black", font=font(12), anchor="mt")
    canvas.paste(title.rotate(90, expand=True), (1, margin))
    for i in range(n):
        draw.text((17, margin + i * cell + cell // 2 - 6), names[i], fill="black", font=font(12))
        draw.text((margin + i * cell + 8, 20), names[i], fill="black", font=font(12))
        for j in range(n):
            level = int(255 * (1 - share[i, j]))
            x, y = margin + j * cell, margin + i * cell
            draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=(level, level, 255), outline=(200, 200, 200))
            draw.text((x + 8, y + cell // 2 - 6), str(int(counts[i, j])), font=font(12),
                      fill="white" if share[i, j] > 0.5 else "black")
    return Picture(np.asarray(canvas), "rows: true angle, columns: predicted angle; shade: share of the row")


def pca_2d(x: torch.Tensor) -> torch.Tensor:
    """The first two principal components of the rows of x."""
    x = x.float() - x.float().mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return x @ v[:2].T


def scatter(points: torch.Tensor, labels: torch.Tensor, caption: str, size: int = 400) -> Picture:
    """Points coloured by class (the palette's order is class index order)."""
    points, labels = points.float().cpu(), labels.cpu()
    low, high = points.min(0).values, points.max(0).values
    xy = ((points - low) / (high - low).clamp(min=1e-9) * (size - 20) + 10).round().int().tolist()
    canvas = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(canvas)
    for (x, y), label in zip(xy, labels.tolist()):
        draw.ellipse([x - 2, size - y - 2, x + 2, size - y + 2], fill=PALETTE[label % len(PALETTE)])
    for c in range(int(labels.max()) + 1):
        draw.rectangle([6, 6 + 14 * c, 16, 16 + 14 * c], fill=PALETTE[c % len(PALETTE)])
        draw.text((20, 5 + 14 * c), str(c), fill="black", font=font(11))
    return Picture(np.asarray(canvas), caption)
