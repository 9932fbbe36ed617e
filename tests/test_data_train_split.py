"""The train split's plan (ssl_scripts/data/train_split.py): where it lives and how every process reads it, decided
by the main process alone, before anything is decoded."""
import torch

from ssl_scripts.data import cache, placement, streaming, train_split
from ssl_scripts.data.folders import scan_imagefolder
from helpers import parse

CPU = torch.device("cpu")


def options(image_folder, *extra):
    return parse(["--dataset", "imagefolder", "--data-dir", image_folder, "--cache-dir", image_folder / "cache",
                  "--image-size", "16", "--output-dir", image_folder / "out", "--skip-eval", *extra])


def test_a_generated_set_is_planned_without_a_cache_or_a_scan(tmp_path, capsys):
    args = parse(["--dataset", "synthetic", "--synthetic-size", "64", "--output-dir", tmp_path / "out"])
    plan = train_split.plan(args, CPU)
    assert (plan.placement, plan.cache_path, plan.scanned) == ("device", None, None)
    assert plan.decoded_bytes == (64 + 16) * 3 * 32 * 32
    assert plan.line.startswith("data: 64 train + 16 test images at 32 px") and "placement device" in plan.line
    assert capsys.readouterr().out == ""  # the plan says nothing: load_train_split says its line


def test_a_folder_held_in_memory_maps_the_cache_of_all_its_files(image_folder):
    args = options(image_folder, "--data-placement", "host")
    plan = train_split.plan(args, CPU)
    every_file = scan_imagefolder(str(image_folder))[0]
    assert plan.placement == "host" and plan.scanned is None
    assert plan.cache_path == cache.imagefolder_cache(str(image_folder), 16, str(image_folder / "cache"), False,
                                                      every_file)
    assert plan.decoded_bytes == 18 * 3 * 16 * 16
    assert not (image_folder / "cache").exists()  # planned, nothing decoded


def test_a_folder_too_large_for_memory_is_streamed_with_the_scan_and_its_samples_cache(image_folder, monkeypatch):
    monkeypatch.setattr(placement, "host_available_bytes", lambda: 1000)  # far less than the 13.5 KiB decoded
    args = options(image_folder)
    plan = train_split.plan(args, CPU)
    scanned = scan_imagefolder(str(image_folder))
    assert plan.placement == "stream" and plan.scanned == scanned
    sample = {"train": streaming.stream_sample(scanned[0]), "test": scanned[0]["test"]}
    assert plan.cache_path == cache.imagefolder_cache(str(image_folder), 16, str(image_folder / "cache"), True,
                                                      sample)
    assert "placement stream (--data-placement auto)" in plan.line
