"""Self-supervised rotation prediction (RotNet, Gidaris et al. 2018): every image is rotated by 0/90/180/270 degrees
and the network learns to tell the angle; the encoder it leaves behind is judged by how well its frozen features
classify the labelled set (k-NN and linear probe, the loop's).

    accelerate launch --config_file accelerate_configs/cpu.yaml train_rotation.py --dataset synthetic \
        --model simple_cnn --max-steps 100
"""
import functools

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ssl_scripts.data import augment
from ssl_scripts.evaluation import frozen, media
from ssl_scripts.models import encoders
from ssl_scripts.tasks.task import Batch, Task

# The head's hidden width per model; a model not named here gets one linear layer (RotNet's). The original
# tutorial's simple_cnn head: fc(4096 -> 128 -> 4).
HEAD_HIDDEN = {"simple_cnn": 128}


def rotate(images: torch.Tensor, rotations_per_image: int = 4):
    """Rotations by k*90 degrees counter-clockwise, label k (0..3).

    rotations_per_image=4: all four copies of every image in the batch (RotNet); returns 4N samples ordered
    [all images at 0, all at 90, all at 180, all at 270]. rotations_per_image=1: one random k per image.
    """
    n = images.shape[0]
    if rotations_per_image == 4:
        rotated = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])
        labels = torch.arange(4, device=images.device).repeat_interleave(n)
        return rotated, labels
    labels = torch.randint(0, 4, (n,), device=images.device)
    # Each image's own rotation as one gather through a table of the four rotations' pixel orders: a boolean mask
    # per angle would make the host wait for the device to count its elements, and rotating every image four
    # times to keep one costs four times the copies.
    _, c, h, w = images.shape
    if h != w:
        raise ValueError(f"one rotation per image needs square images, got {h}x{w}")
    index = _rotation_orders(h, images.device)[labels].view(n, 1, h * w).expand(n, c, h * w)
    return images.flatten(2).gather(2, index).view(n, c, h, w), labels


@functools.lru_cache(maxsize=8)
def _rotation_orders(side: int, device: torch.device) -> torch.Tensor:
    """(4, side * side): where each pixel of an image rotated by k * 90 degrees comes from (made once per size)."""
    plane = torch.arange(side * side, device=device).view(side, side)
    return torch.stack([torch.rot90(plane, k).flatten() for k in range(4)])


class Rotation(Task):
    name = "rotation"
    description = __doc__.splitlines()[0]
    headline_metric = "eval/rotation_acc"
    must_match = ("rotations_per_image",)

    @classmethod
    def add_options(cls, parser) -> None:
        parser.add_argument("--rotations-per-image", type=int, choices=(1, 4), default=4,
                            help="4: all rotations of each image in one batch (RotNet); 1: one random rotation "
                                 "(the original tutorial's)")

    @classmethod
    def head(cls, args, encoder):
        hidden = HEAD_HIDDEN.get(encoder.name)
        return encoders.mlp([encoder.feature_dim, hidden, 4]) if hidden else torch.nn.Linear(encoder.feature_dim, 4)

    def make_batch(self, indices, epoch):
        images = augment.augment(self.train_source[indices], self.args.augment)
        return Batch(*rotate(images, self.args.rotations_per_image))

    def step(self, model, batch):
        logits = model(batch.inputs)
        return F.cross_entropy(logits, batch.targets), {"acc": (logits.argmax(1) == batch.targets).float().mean()}

    def evaluate(self, accelerator, model, labelled, between_batches=None):
        return rotation_metrics(accelerator, model, self.dataset.test_images, self.args.eval_batch_size,
                                between_batches)


def rotation_metrics(accelerator, model, images: torch.Tensor, batch_size: int, between_batches=None) -> dict:
    """eval/rotation_acc over all four rotations of every test image, with an example grid and the 4x4
    confusion matrix for the dashboard (main process only)."""
    def predict(x):
        return torch.stack([model(torch.rot90(x, k, dims=(2, 3))).argmax(1) for k in range(4)], dim=1)

    with frozen.evaluating(accelerator, model):
        predicted = frozen.map_batches(accelerator, predict, images, batch_size,
                                       between_batches=between_batches).long().cpu()
    if not accelerator.is_main_process:
        return {}
    true = torch.arange(4).expand_as(predicted)
    return {"eval/rotation_acc": (predicted == true).float().mean().item(),
            "eval/rotation_examples": rotation_examples(images, predicted),
            "eval/rotation_confusion": media.confusion_matrix(true, predicted, ["0°", "90°", "180°", "270°"])}


def rotation_examples(images: torch.Tensor, predicted: torch.Tensor, count: int = 16, columns: int = 8,
                      scale: int = 3) -> media.Picture:
    """Test image i shown at rotation i % 4, framed green when the predicted angle is right, red when wrong."""
    count = min(count, len(images))
    side = images.shape[-1] * scale
    cell_w, cell_h = side + 8, side + 26
    rows = (count + columns - 1) // columns
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(count):
        true = i % 4
        guess = int(predicted[i, true])
        tile = torch.rot90(images[i].cpu(), true, dims=(1, 2)).permute(1, 2, 0).numpy()
        tile = Image.fromarray(tile).resize((side, side), Image.NEAREST)
        x, y = (i % columns) * cell_w, (i // columns) * cell_h
        draw.rectangle([x, y, x + side + 7, y + side + 7], fill=media.GOOD if guess == true else media.BAD)
        canvas.paste(tile, (x + 4, y + 4))
        draw.text((x + 4, y + side + 9), f"{90 * true}° / {90 * guess}°", fill="black", font=media.font(12))
    return media.Picture(np.asarray(canvas), "test images at their true rotation; under each: true / predicted "
                                             "angle; frame green when right")
