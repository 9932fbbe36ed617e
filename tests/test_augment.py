"""The batched image transforms of ssl_scripts/data/augment.py."""
import torch

from ssl_scripts.data.augment import augment, random_crop_flip, to_float
from ssl_scripts.data.image_data import make_synthetic


def test_random_crop_flip_is_a_shifted_window_of_the_padded_image():
    torch.manual_seed(0)
    x = (torch.rand(32, 3, 8, 8) * 255).to(torch.uint8)
    out = random_crop_flip(x, pad=2)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for i in range(len(x)):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        plain = any(torch.equal(out[i], w) for w in windows)
        flipped = any(torch.equal(out[i], w.flip(-1)) for w in windows)
        assert plain or flipped
        flips += flipped and not plain
    assert 4 < flips < 28  # about half are flipped


def test_augment_returns_floats_in_unit_range():
    x = make_synthetic(image_size=16, n_train=20, n_test=10).train_images
    out = augment(x)
    assert out.dtype == torch.float32 and out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert torch.equal(to_float(x), x.float() / 255)


def test_resized_crop_at_full_scale_is_the_image_or_its_mirror():
    from ssl_scripts.data.augment import random_resized_crop_flip
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    out = random_resized_crop_flip(x, scale=(1, 1), ratio=(1, 1))
    for i in range(16):
        assert torch.allclose(out[i], x[i], atol=1e-5) or torch.allclose(out[i], x[i].flip(-1), atol=1e-5)


def test_resized_crop_zooms_in():
    from ssl_scripts.data.augment import random_resized_crop_flip
    x = torch.zeros(1, 1, 16, 16)
    x[..., 4:12, 4:12] = 1  # a bright center square covering 1/4 of the image
    torch.manual_seed(0)
    crops = random_resized_crop_flip(x.repeat(64, 1, 1, 1), scale=(0.05, 0.1))
    assert crops.mean() > 0.3  # small crops of a centered square are mostly square, not a shrunken copy


def test_color_jitter_keeps_range_and_is_identity_at_zero_strength():
    from ssl_scripts.data.augment import color_jitter
    x = torch.rand(32, 3, 8, 8)
    assert torch.allclose(color_jitter(x, strength=0.0, gray_p=0.0), x, atol=1e-6)
    out = color_jitter(x, strength=0.4, p=1.0, gray_p=1.0)
    assert 0 <= out.min() and out.max() <= 1
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])  # all grayscale


def test_simclr_views_of_one_image_differ():
    x = make_synthetic(n_train=16, n_test=4).train_images
    a, b = augment(x, "simclr"), augment(x, "simclr")
    assert a.shape == x.shape and a.dtype == torch.float32 and not torch.allclose(a, b)


def test_batched_augmentations_and_rotations_never_make_the_host_wait():
    # On `meta` tensors (a stand-in for a GPU): a value read by the host or a mask's size would show up here.
    from helpers import HostWaits
    from ssl_scripts.tasks.rotation import rotate
    images = torch.zeros(8, 3, 16, 16, dtype=torch.uint8, device="meta")
    with HostWaits() as waits:
        for kind in ("crop_flip", "simclr", "none"):
            x = augment(images, kind)
        for per_image in (4, 1):
            rotated, labels = rotate(x, per_image)
        alive = waits.alive()  # it did see what it sees: a detector that saw nothing would pass without this
    assert waits.seen == [] and alive and rotated.shape == (8, 3, 16, 16) and rotated.device.type == "meta"


def test_a_registered_augmentation_is_an_option(monkeypatch):
    """One entry in augment.AUGMENTATIONS is all a new augmentation needs: --augment offers it, augment() runs it."""
    from ssl_scripts.data import augment as augment_module
    from helpers import parse

    def invert(images):
        """1 - the image."""
        return 1 - to_float(images)
    monkeypatch.setitem(augment_module.AUGMENTATIONS, "invert", invert)
    assert parse(["--augment", "invert"]).augment == "invert"
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    assert torch.equal(augment(x, "invert"), torch.ones(2, 3, 4, 4))
