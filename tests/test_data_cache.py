"""The decode-once cache of an image folder (ssl_scripts/data/cache.py): decoded, named, mapped, invalidated."""
import os

import pytest
import torch

from ssl_scripts import UserError
from ssl_scripts.data.cache import load_imagefolder


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


def test_decoding_uses_the_cpus_this_process_may_run_on(image_folder, tmp_path, monkeypatch):
    # Under Slurm (or taskset) a process may run on 1 of the machine's 64 CPUs: 64 decoders would share it.
    import ssl_scripts.data.decode
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    workers = []
    real_pool = ssl_scripts.data.decode.ProcessPoolExecutor

    def counting_pool(max_workers, **kw):
        workers.append(max_workers)
        return real_pool(max_workers, **kw)
    monkeypatch.setattr(ssl_scripts.data.decode, "ProcessPoolExecutor", counting_pool)
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
    from ssl_scripts.data.cache import decode_imagefolder
    (image_folder / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    data = decode_imagefolder(str(image_folder), 16, skip_bad=True)
    assert data.train_images.shape == (12, 3, 16, 16) and data.skipped_images == 1
    assert data.train_images.untyped_storage().nbytes() == 12 * 3 * 16 * 16  # no unused tail
    assert data.train_labels.tolist() == [0] * 6 + [1] * 6


def test_a_cache_of_another_decoders_pixels_is_not_used(image_folder, tmp_path, monkeypatch):
    import ssl_scripts.data.cache
    from ssl_scripts.data.cache import imagefolder_cache
    from ssl_scripts.data.folders import scan_imagefolder
    files = scan_imagefolder(str(image_folder))[0]
    before = imagefolder_cache(str(image_folder), 16, str(tmp_path), False, files)
    monkeypatch.setattr(ssl_scripts.data.cache, "DECODER", "another-decoder")
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
