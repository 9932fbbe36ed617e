"""The rotation task (ssl_scripts/tasks/rotation.py): its rotations, head and step."""
import numpy as np
import torch

from ssl_scripts.evaluation import media
from ssl_scripts.tasks.rotation import rotate, rotation_examples


def asymmetric_images(n=3, size=8):
    return torch.arange(n * 3 * size * size, dtype=torch.float32).reshape(n, 3, size, size)


def test_rotations_are_exact_and_labelled_counterclockwise():
    x = asymmetric_images()
    rotated, labels = rotate(x, rotations_per_image=4)
    n = len(x)
    for k in range(4):
        block = rotated[k * n:(k + 1) * n]
        assert torch.equal(block, torch.rot90(x, k, dims=(2, 3)))
        assert (labels[k * n:(k + 1) * n] == k).all()
    # 90 degrees counter-clockwise: the top row read left to right becomes the left column read bottom-up.
    assert torch.equal(rotated[n, :, :, 0].flip(-1), x[0, :, 0, :])


def test_all_four_rotations_of_each_image_are_in_the_batch():
    x = asymmetric_images(n=5)
    rotated, labels = rotate(x, rotations_per_image=4)
    assert rotated.shape == (20, 3, 8, 8) and labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    for i in range(5):
        copies = [rotated[k * 5 + i] for k in range(4)]
        for k, copy in enumerate(copies):
            assert torch.equal(torch.rot90(copy, -k, dims=(1, 2)), x[i])


def test_one_rotation_per_image_matches_its_label():
    torch.manual_seed(0)
    x = asymmetric_images(n=64)
    rotated, labels = rotate(x, rotations_per_image=1)
    assert rotated.shape == x.shape and set(labels.tolist()) == {0, 1, 2, 3}
    for i in range(64):
        assert torch.equal(rotated[i], torch.rot90(x[i], int(labels[i]), dims=(1, 2)))


def test_rotation_examples_frame_right_and_wrong_predictions():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    predicted = torch.arange(4).repeat(16, 1)  # every angle right...
    predicted[1, 1] = 3  # ...except image 1, shown at 90 degrees and predicted 270
    picture = rotation_examples(images, predicted, columns=8, scale=3)
    assert picture.pixels.dtype == np.uint8 and picture.pixels.shape[2] == 3
    cell_w = 32 * 3 + 8
    assert tuple(picture.pixels[1, 1]) == media.GOOD  # image 0's frame
    assert tuple(picture.pixels[1, cell_w + 1]) == media.BAD  # image 1's frame
    # the tile is the image at its true rotation (image 2 at 180 degrees), upscaled
    tile = picture.pixels[4:4 + 96:3, 2 * cell_w + 4:2 * cell_w + 4 + 96:3]
    assert np.array_equal(tile, torch.rot90(images[2], 2, dims=(1, 2)).permute(1, 2, 0).numpy())
