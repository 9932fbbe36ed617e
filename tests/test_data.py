import os

import pytest
import torch

from common import UserError
from common.data import (augment, decode_image, load_imagefolder, make_synthetic, random_crop_flip, rotate,
                         to_float)


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


def test_synthetic_is_seeded_and_shaped():
    a, b = make_synthetic(), make_synthetic()
    assert torch.equal(a.train_images, b.train_images) and a.train_images.shape == (1024, 3, 32, 32)
    assert a.train_images.dtype == torch.uint8 and a.test_labels.shape == (256,)


def test_image_folder_converts_modes_and_sizes(image_folder, tmp_path):
    data = load_imagefolder(str(image_folder), 24, str(tmp_path / "cache"))
    assert data.classes == ["cat", "dog"]
    assert data.train_images.shape == (12, 3, 24, 24) and data.test_images.shape == (6, 3, 24, 24)
    assert data.train_images.dtype == torch.uint8
    assert data.train_labels.tolist() == [0] * 6 + [1] * 6


def test_image_folder_cache_is_used_and_invalidated(image_folder, tmp_path):
    cache = tmp_path / "cache"
    first = load_imagefolder(str(image_folder), 16, str(cache))
    files = os.listdir(cache)
    assert len(files) == 1
    again = load_imagefolder(str(image_folder), 16, str(cache))
    assert torch.equal(first.train_images, again.train_images) and os.listdir(cache) == files
    os.remove(image_folder / "train" / "cat" / "0.png")  # a changed folder must not reuse the old cache
    changed = load_imagefolder(str(image_folder), 16, str(cache))
    assert len(changed.train_images) == 11 and len(os.listdir(cache)) == 2


def test_grayscale_and_rgba_decode_to_rgb(tmp_path):
    from PIL import Image
    Image.new("L", (10, 20), 128).save(tmp_path / "g.png")
    Image.new("RGBA", (20, 10), (10, 20, 30, 255)).save(tmp_path / "a.png")
    g, a = decode_image(str(tmp_path / "g.png"), 8), decode_image(str(tmp_path / "a.png"), 8)
    assert g.shape == a.shape == (8, 8, 3)
    assert (g == 128).all() and (a == [10, 20, 30]).all()


def test_corrupt_image_is_named_or_skipped(image_folder, tmp_path):
    bad = image_folder / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(UserError, match="broken.jpg.*--skip-bad-images"):
        load_imagefolder(str(image_folder), 16, str(tmp_path / "cache"))
    data = load_imagefolder(str(image_folder), 16, str(tmp_path / "cache"), skip_bad=True)
    assert data.skipped_files == 1 and len(data.train_images) == 12


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("no_train", "no train/ folder"),
    ("no_classes", "no class folders"),
    ("test_only_class", "have no train/ folder"),
])
def test_bad_layouts_say_what_to_do(tmp_path, image_folder, layout, message):
    from PIL import Image
    root = image_folder
    if layout == "missing":
        root = tmp_path / "nowhere"
    elif layout == "no_train":
        root = tmp_path / "flat"
        (root / "test" / "cat").mkdir(parents=True)
    elif layout == "no_classes":
        root = tmp_path / "loose"
        (root / "train").mkdir(parents=True)
        (root / "test").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / "train" / "loose.png")
    else:
        (image_folder / "test" / "bird").mkdir()
        Image.new("RGB", (8, 8)).save(image_folder / "test" / "bird" / "0.png")
    with pytest.raises(UserError, match=message):
        load_imagefolder(str(root), 16, str(tmp_path / "cache"))


def test_resized_crop_at_full_scale_is_the_image_or_its_mirror():
    from common.data import random_resized_crop_flip
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    out = random_resized_crop_flip(x, scale=(1, 1), ratio=(1, 1))
    for i in range(16):
        assert torch.allclose(out[i], x[i], atol=1e-5) or torch.allclose(out[i], x[i].flip(-1), atol=1e-5)


def test_resized_crop_zooms_in():
    from common.data import random_resized_crop_flip
    x = torch.zeros(1, 1, 16, 16)
    x[..., 4:12, 4:12] = 1  # a bright center square covering 1/4 of the image
    torch.manual_seed(0)
    crops = random_resized_crop_flip(x.repeat(64, 1, 1, 1), scale=(0.05, 0.1))
    assert crops.mean() > 0.3  # small crops of a centered square are mostly square, not a shrunken copy


def test_color_jitter_keeps_range_and_is_identity_at_zero_strength():
    from common.data import color_jitter
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
    from conftest import HostWaits
    images = torch.zeros(8, 3, 16, 16, dtype=torch.uint8, device="meta")
    with HostWaits() as waits:
        for kind in ("crop_flip", "simclr", "none"):
            x = augment(images, kind)
        for per_image in (4, 1):
            rotated, labels = rotate(x, per_image)
    assert waits.seen == [] and rotated.shape == (8, 3, 16, 16) and rotated.device.type == "meta"


def test_one_rotation_per_image_rotates_each_by_its_label():
    x = asymmetric_images(n=64)
    rotated, labels = rotate(x, rotations_per_image=1)
    assert set(labels.tolist()) == {0, 1, 2, 3}
    for image, turned, k in zip(x, rotated, labels.tolist()):
        assert torch.equal(turned, torch.rot90(image, k, dims=(1, 2)))


def test_channel_statistics_sample_the_whole_split():
    # An image folder is sorted by class: here 15,000 black images, then 15,000 white ones.
    from common.data import ImageData
    images = torch.cat([torch.zeros(15000, 3, 4, 4), torch.full((15000, 3, 4, 4), 255.0)]).to(torch.uint8)
    labels = torch.cat([torch.zeros(15000), torch.ones(15000)]).long()
    mean, std = ImageData(images, labels, images[:2], labels[:2], ["black", "white"]).channel_stats()
    assert all(abs(m - 0.5) < 0.02 for m in mean) and all(abs(s - 0.5) < 0.02 for s in std)


def test_decoding_uses_the_cpus_this_process_may_run_on(image_folder, tmp_path, monkeypatch):
    # Under Slurm (or taskset) a process may run on 1 of the machine's 64 CPUs: 64 decoders would share it.
    import common.data
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    workers = []
    real_pool = common.data.ProcessPoolExecutor

    def counting_pool(max_workers, **kw):
        workers.append(max_workers)
        return real_pool(max_workers, **kw)
    monkeypatch.setattr(common.data, "ProcessPoolExecutor", counting_pool)
    load_imagefolder(str(image_folder), 16, str(tmp_path / "cache"))
    assert workers == [1]


def test_the_cache_is_written_under_a_name_no_other_writer_holds(image_folder, tmp_path):
    # Two nodes sharing the cache dir can run processes with the same pid: a pid-named temporary file of another
    # writer (here: one that is a directory) must not be reused.
    cache = tmp_path / "cache"
    load_imagefolder(str(image_folder), 16, str(cache))
    [cached] = list(cache.iterdir())
    cached.unlink()
    (cache / f"{cached.name}.tmp{os.getpid()}").mkdir()
    load_imagefolder(str(image_folder), 16, str(cache))
    assert cached.exists() and not [p for p in cache.iterdir() if ".tmp-" in p.name]
