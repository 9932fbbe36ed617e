"""ssl_scripts/data/downloads.py on small files in the real formats: never a download (any is refused, so a test whose files
torchvision does not take fails at once)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ssl_scripts import UserError
from ssl_scripts.data import downloads
from helpers import REPO
from helpers import (checksum_skipping_env, checksums_skipped, downloads_refused, write_cifar10,
                     write_cifar100, write_stl10)


@pytest.fixture
def offline():
    with checksums_skipped(), downloads_refused():
        yield


def test_read_cifar100_fine_labels_names_and_pixels(tmp_path, offline):
    written = write_cifar100(tmp_path, n_train=60, n_test=20)
    data = downloads.read_cifar(str(tmp_path), 32, 100)
    assert set(data) == {"train_images", "train_labels", "test_images", "test_labels", "classes"}
    for split in ("train", "test"):
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        assert images.dtype == torch.uint8 and images.is_contiguous() and labels.dtype == torch.int64
        assert images.shape == (len(written[split][0]), 3, 32, 32)
        assert torch.equal(images, torch.from_numpy(written[split][0]))
        assert labels.tolist() == written[split][1].tolist()  # the fine labels, not the coarse ones
    assert data["classes"] == written["classes"] and len(data["classes"]) == 100
    assert data["classes"][data["train_labels"][0]] == written["classes"][written["train"][1][0]]


def test_read_cifar10_joins_the_five_train_batches(tmp_path, offline):
    written = write_cifar10(tmp_path, n_train=23, n_test=7)
    data = downloads.read_cifar(str(tmp_path), 32, 10)
    assert torch.equal(data["train_images"], torch.from_numpy(written["train"][0]))
    assert data["train_labels"].tolist() == written["train"][1].tolist()
    assert torch.equal(data["test_images"], torch.from_numpy(written["test"][0]))
    assert data["classes"][:2] == ["airplane", "automobile"] and len(data["classes"]) == 10


def test_read_cifar_resizes_in_chunks_like_the_whole_set(tmp_path, offline, monkeypatch):
    written = write_cifar100(tmp_path, n_train=30, n_test=10)
    monkeypatch.setattr(downloads, "RESIZE_CHUNK", 7)  # several chunks, the last one short
    data = downloads.read_cifar(str(tmp_path), 48, 100)
    assert data["train_images"].shape == (30, 3, 48, 48) and data["test_images"].shape == (10, 3, 48, 48)
    assert data["train_images"].is_contiguous()
    assert torch.equal(data["train_images"], downloads.resize_uint8(torch.from_numpy(written["train"][0]), 48))


def test_read_stl10_labelled_train_first_then_unlabeled(tmp_path, offline):
    written = write_stl10(tmp_path, n_train=12, n_test=5, n_unlabeled=9)
    data = downloads.read_stl10(str(tmp_path), 96)
    assert data["labelled_train"] == 12
    images, labels = data["train_images"], data["train_labels"]
    assert images.shape == (21, 3, 96, 96) and images.dtype == torch.uint8 and images.is_contiguous()
    assert labels.dtype == torch.int64
    assert labels[:12].tolist() == written["train"][1].tolist()  # 0-based: 1..10 in the files
    assert labels[12:].tolist() == [-1] * 9
    assert torch.equal(images[:12], torch.from_numpy(written["train"][0]))
    assert torch.equal(images[12:], torch.from_numpy(written["unlabeled"]))
    assert torch.equal(data["test_images"], torch.from_numpy(written["test"][0]))
    assert data["test_labels"].tolist() == written["test"][1].tolist()
    assert data["classes"] == ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    # Straight from the bytes, as the dataset describes them: per image, the red, green and blue 96x96 planes, each
    # stored column by column, so pixel (row r, column c) of plane p is byte p*9216 + c*96 + r.
    raw = np.fromfile(tmp_path / "stl10_binary" / "unlabeled_X.bin", dtype=np.uint8)
    n, p, r, c = 4, 2, 5, 70
    assert images[12 + n, p, r, c] == raw[n * 27648 + p * 9216 + c * 96 + r] != raw[n * 27648 + p * 9216 + r * 96 + c]


def test_read_stl10_resizes_in_chunks_like_the_whole_set(tmp_path, offline, monkeypatch):
    written = write_stl10(tmp_path, n_train=5, n_test=4, n_unlabeled=11)
    monkeypatch.setattr(downloads, "RESIZE_CHUNK", 3)
    data = downloads.read_stl10(str(tmp_path), 40)
    assert data["train_images"].shape == (16, 3, 40, 40) and data["test_images"].shape == (4, 3, 40, 40)
    whole = torch.from_numpy(np.concatenate([written["train"][0], written["unlabeled"]]))
    assert torch.equal(data["train_images"], downloads.resize_uint8(whole, 40))
    assert torch.equal(data["test_images"], downloads.resize_uint8(torch.from_numpy(written["test"][0]), 40))


@pytest.mark.parametrize("read", [lambda d: downloads.read_cifar(d, 32, 100), lambda d: downloads.read_stl10(d, 96)],
                         ids=["cifar100", "stl10"])
def test_missing_files_are_one_line_saying_what_to_do(tmp_path, offline, read):
    with pytest.raises(UserError) as raised:
        read(str(tmp_path))
    message = str(raised.value)
    assert "\n" not in message and "download it there" in message and "--dataset" in message
    assert "refused" in message  # it got as far as downloading, which the test refuses


def test_written_files_need_the_checksum_patch(tmp_path):
    """The MD5 check is live without the patch (so the patch is what the other tests rely on, nothing else)."""
    write_cifar100(tmp_path)
    with downloads_refused(), pytest.raises(UserError, match="refused"):
        downloads.read_cifar(str(tmp_path), 32, 100)


def test_checksum_skipping_env_reaches_a_subprocess(tmp_path):
    written = write_stl10(tmp_path / "data", n_train=3, n_test=2, n_unlabeled=4)
    check = ("import sys; assert 'torchvision' not in sys.modules\n"  # patched on import, not imported at startup
             "from ssl_scripts.data import downloads\n"
             "import torchvision.datasets.utils as u\n"
             "assert u.check_md5.__name__ == '_md5_skipped' and u.download_url.__name__ == '_download_refused'\n"
             "data = downloads.read_stl10(sys.argv[1], 96)\n"
             "print(data['labelled_train'], data['train_labels'].tolist(), int(data['train_images'].sum()))\n")
    env = {**os.environ, **checksum_skipping_env(tmp_path)}
    done = subprocess.run([sys.executable, "-c", check, str(tmp_path / "data")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    total = int(written["train"][0].astype(np.int64).sum() + written["unlabeled"].astype(np.int64).sum())
    assert done.stdout.split("\n")[0] == f"3 {written['train'][1].tolist() + [-1] * 4} {total}"


@pytest.fixture
def no_network(monkeypatch):
    """Every URL fetch fails as with no network; torchvision's download_url itself runs (it makes the folder)."""
    import urllib.error
    import urllib.request

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", unreachable)


@pytest.mark.parametrize("read", [lambda d: downloads.read_cifar(d, 32, 10), lambda d: downloads.read_stl10(d, 96)],
                         ids=["cifar10", "stl10"])
def test_a_failed_download_leaves_no_folder_it_made(tmp_path, no_network, read):
    (tmp_path / "kept").mkdir()  # there before: stays, empty as it was
    for data_dir in (tmp_path / "new" / "data", tmp_path / "kept"):
        with pytest.raises(UserError, match="name resolution"):
            read(str(data_dir))
    assert sorted(os.listdir(tmp_path)) == ["kept"] and os.listdir(tmp_path / "kept") == []


def test_a_failed_download_prints_no_data_line(tmp_path, no_network, capsys):
    from accelerate import Accelerator
    from ssl_scripts.data import train_split
    from helpers import parse
    args = parse(["--dataset", "cifar10", "--data-dir", tmp_path / "data", "--cache-dir", tmp_path / "cache",
                  "--output-dir", tmp_path / "out"])
    with pytest.raises(UserError, match="could not load or download CIFAR-10"):
        train_split.load_train_split(args, Accelerator(cpu=True))
    assert "data: " not in capsys.readouterr().out and not (tmp_path / "data").exists()
    write_cifar10(tmp_path / "data", n_train=23, n_test=7)
    with checksums_skipped():  # the files there: read, then the line (the split sizes are CIFAR's)
        train_split.load_train_split(args, Accelerator(cpu=True))
    assert capsys.readouterr().out.startswith("data: 50,000 train + 10,000 test images at 32 px")
