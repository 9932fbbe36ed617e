import os

import pytest
import torch

from ssl_scripts import UserError
from ssl_scripts.data.datasets import load_imagefolder, make_synthetic


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


def test_corrupt_image_is_named_or_skipped(image_folder, tmp_path):
    bad = image_folder / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(UserError, match="broken.jpg.*--skip-bad-images"):
        load_imagefolder(str(image_folder), 16, str(tmp_path / "cache"))
    data = load_imagefolder(str(image_folder), 16, str(tmp_path / "cache"), skip_bad=True)
    assert data.skipped_images == 1 and len(data.train_images) == 12


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


def test_channel_statistics_sample_the_whole_split():
    # An image folder is sorted by class: here 15,000 black images, then 15,000 white ones.
    from ssl_scripts.data.datasets import ImageData
    images = torch.cat([torch.zeros(15000, 3, 4, 4), torch.full((15000, 3, 4, 4), 255.0)]).to(torch.uint8)
    labels = torch.cat([torch.zeros(15000), torch.ones(15000)]).long()
    mean, std = ImageData(images, labels, images[:2], labels[:2], ["black", "white"]).channel_stats()
    assert all(abs(m - 0.5) < 0.02 for m in mean) and all(abs(s - 0.5) < 0.02 for s in std)


def test_decoding_uses_the_cpus_this_process_may_run_on(image_folder, tmp_path, monkeypatch):
    # Under Slurm (or taskset) a process may run on 1 of the machine's 64 CPUs: 64 decoders would share it.
    import ssl_scripts.data.datasets
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    workers = []
    real_pool = ssl_scripts.data.datasets.ProcessPoolExecutor

    def counting_pool(max_workers, **kw):
        workers.append(max_workers)
        return real_pool(max_workers, **kw)
    monkeypatch.setattr(ssl_scripts.data.datasets, "ProcessPoolExecutor", counting_pool)
    load_imagefolder(str(image_folder), 16, str(tmp_path / "cache"))
    assert workers == [1]
    # and all of them where it may use many: the node's other processes only wait meanwhile (there were 8 at most)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    workers.clear()
    load_imagefolder(str(image_folder), 16, str(tmp_path / "other-cache"))
    assert workers == [16]


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


def test_every_process_maps_the_cache_instead_of_loading_a_copy(image_folder, tmp_path):
    """Memory-mapped (torch.load mmap=True), the cache's pages are shared by a node's processes: one copy."""
    cache = tmp_path / "cache"
    decoded = load_imagefolder(str(image_folder), 16, str(cache))
    [cached] = list(cache.iterdir())
    mapped = open("/proc/self/maps").read()
    assert str(cached) in mapped  # the decoding process, too, keeps the mapping, not its decoded copy
    again = load_imagefolder(str(image_folder), 16, str(cache))
    assert torch.equal(again.train_images, decoded.train_images)


def test_decoding_fills_one_tensor_per_split_and_leaves_out_unreadable_files(image_folder):
    from ssl_scripts.data.datasets import decode_imagefolder
    (image_folder / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    data = decode_imagefolder(str(image_folder), 16, skip_bad=True)
    assert data.train_images.shape == (12, 3, 16, 16) and data.skipped_images == 1
    assert data.train_images.untyped_storage().nbytes() == 12 * 3 * 16 * 16  # no unused tail
    assert data.train_labels.tolist() == [0] * 6 + [1] * 6


def test_channel_stats_in_chunks_equal_the_whole_sample_at_once():
    data = make_synthetic(32, n_train=1000, n_test=10)
    mean, std = data.channel_stats()
    x = data.train_images.double() / 255
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), x.mean(dim=(0, 2, 3)), rtol=0, atol=1e-9)
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), x.std(dim=(0, 2, 3)), rtol=0, atol=1e-9)


def test_a_cache_of_another_decoders_pixels_is_not_used(image_folder, tmp_path, monkeypatch):
    import ssl_scripts.data.datasets
    from ssl_scripts.data.datasets import imagefolder_cache, scan_imagefolder
    files = scan_imagefolder(str(image_folder))[0]
    before = imagefolder_cache(str(image_folder), 16, str(tmp_path), False, files)
    monkeypatch.setattr(ssl_scripts.data.datasets, "DECODER", "another-decoder")
    assert imagefolder_cache(str(image_folder), 16, str(tmp_path), False, files) != before


def test_an_image_changed_in_place_is_decoded_again_by_its_modification_time(image_folder, tmp_path, capsys):
    # The cache is keyed by each file's path, size and mtime (no file is read to check it): an edit that keeps
    # the size (raw formats such as BMP always do) is seen through the mtime alone.
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(2)
    old, new = (rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(2))
    bmp = image_folder / "train" / "dog" / "zz.bmp"  # the last train image: index 12
    Image.fromarray(old).save(bmp)
    mtime, size = bmp.stat().st_mtime_ns, bmp.stat().st_size
    cache = str(tmp_path / "cache")

    def load():
        data = load_imagefolder(str(image_folder), 16, cache)
        return data, capsys.readouterr().out.count("decoding 19 images")
    first, decoded = load()
    assert decoded == 1 and torch.equal(first.train_images[12], torch.from_numpy(old).permute(2, 0, 1))
    assert load()[1] == 0, "unchanged, yet decoded again"
    os.utime(bmp, ns=(mtime, mtime + 10 ** 9))  # touched: the same bytes, a new mtime
    touched, decoded = load()
    assert decoded == 1, "touched (new mtime), yet its old cache used"
    assert torch.equal(touched.train_images, first.train_images)
    Image.fromarray(new).save(bmp)  # new pixels, the same size
    os.utime(bmp, ns=(mtime, mtime + 2 * 10 ** 9))  # as a later edit's clock gives it (never that of the touch)
    assert bmp.stat().st_size == size
    changed, decoded = load()
    assert decoded == 1, "new pixels of the same size, yet the old cache used"
    assert torch.equal(changed.train_images[12], torch.from_numpy(new).permute(2, 0, 1))


def test_the_stream_decode_pool_is_forked_from_the_training_thread_before_the_reader_thread(image_folder, tmp_path):
    # Forking a threaded process can deadlock the child (Python 3.12 warns of it): the pool's workers are forked
    # by the thread that first reads ahead, the training thread, before the reader thread exists.
    import json
    import subprocess
    import sys
    script = f"""
import json, os, threading, torch
from ssl_scripts.data import datasets as data
from ssl_scripts.data import placement
dataset = data.stream_imagefolder({str(image_folder)!r}, 16, cache_dir={str(tmp_path / "cache")!r})
forks = []
os.register_at_fork(before=lambda: forks.append([t.name for t in [threading.current_thread(), *threading.enumerate()]]))
images = placement.TrainImages(dataset.train_images, "stream", torch.device("cpu"))
images.read_ahead(torch.tensor([0, 1, 2]))
assert torch.equal(images[torch.tensor([0, 1, 2])], dataset.sample_images[:3])
print(json.dumps([forks, dataset.train_images.workers]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    forks, workers = json.loads(result.stdout.splitlines()[-1])
    assert len(forks) == workers and all(threads[0] == "MainThread" for threads in forks), forks
    assert not [name for threads in forks for name in threads if name.startswith("stream-reader")], forks


def test_writing_a_cache_says_where_it_is_and_how_to_delete_it(image_folder, tmp_path, capsys):
    import subprocess
    cache = tmp_path / "my cache"  # a space: the command quotes the folder
    (cache).mkdir()
    (cache / "notes.pt").write_bytes(b"not ours")  # another file in --cache-dir: the command leaves it
    load_imagefolder(str(image_folder), 16, str(cache))
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("cached the decoded images")]
    assert len(said) == 1 and str(cache) in said[0] and "deletes them safely" in said[0], said
    command = said[0].split("`")[1]
    subprocess.run(command, shell=True, check=True)
    assert os.listdir(cache) == ["notes.pt"]
    load_imagefolder(str(image_folder), 16, str(cache))  # decoded again
    assert "cached the decoded images" in capsys.readouterr().out
    load_imagefolder(str(image_folder), 16, str(cache))  # mapped from the cache: nothing written, nothing said
    assert "cached the decoded images" not in capsys.readouterr().out
