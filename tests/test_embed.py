"""embed.py: embeddings of a folder of images (rows in the file list's order, each the encoder's features of that
image alone), unreadable files skipped and counted, chunks kept across a stopped run, and each image's nearest
neighbours with their picture; the README's command run as written."""
import os
import re
import shutil

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image

from ssl_scripts.commands import embed
from ssl_scripts.data.folders import list_images, scan_images
from ssl_scripts.evaluation.neighbours import nearest_neighbours
from ssl_scripts.models.encoders import build_encoder, load_encoder, save_encoder
from helpers import REPO, accelerate_launch, run_script
from helpers.images import write_unlabeled_images

README = open(os.path.join(REPO, "README.md")).read()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A nested folder of JPEG and PNG images (RGB, grayscale, RGBA, palette; odd sizes) and one bad file, with a
    resnet18 encoder exported at 16 px (untrained: any weights tell the rows apart)."""
    root = tmp_path_factory.mktemp("embed")
    images = write_unlabeled_images(root / "photos", count=20, nested=True)
    (root / "photos" / "set1" / "broken.jpg").write_bytes(b"not a jpeg at all")
    whole = open(images[0], "rb").read()  # a JPEG cut short, as a copy that stopped half-way leaves it
    (root / "photos" / "set2" / "cut.jpg").write_bytes(whole[:len(whole) // 2])
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", 16)
    encoder(torch.rand(8, 3, 16, 16))  # batch-norm statistics off their start
    save_encoder(encoder.eval(), str(root / "run" / "final"))
    return root, images


def expected_rows(final, paths):
    encoder = load_encoder(str(final))
    with torch.no_grad():
        return torch.cat([encoder(encoder.transform(p)[None]) for p in paths]).numpy()


def test_the_nearest_neighbours_are_the_most_similar_others_in_any_block_size():
    torch.manual_seed(0)
    x = torch.randn(50, 8)
    normalized = torch.nn.functional.normalize(x, dim=1)
    similarity = normalized @ normalized.T
    similarity.fill_diagonal_(-2)
    expected_values, expected = similarity.topk(3, dim=1)
    for block_values in (50, 7 * 50, 2 ** 26):  # one query a block, 7, all at once
        found, values = nearest_neighbours(x, 3, block_values)
        assert torch.equal(found, expected) and torch.allclose(values, expected_values)
        assert not (found == torch.arange(50)[:, None]).any()
    assert nearest_neighbours(x[:3], 5)[0].shape == (3, 2)  # at most every other image


def test_list_images_is_what_dataset_images_trains_and_holds_out(tmp_path):
    expected = write_unlabeled_images(tmp_path, count=12, nested=True)
    assert list_images(str(tmp_path)) == expected
    split, _ = scan_images(str(tmp_path))
    assert sorted(p for s in split.values() for p, _ in s) == expected


@pytest.mark.e2e
def test_two_processes_embed_every_readable_file_in_order_with_neighbours(photos):
    root, images = photos
    out = root / "two"
    result = accelerate_launch("embed.py", "--encoder", root / "run" / "final", "--data-dir", root / "photos",
                               "--output-dir", out, "--chunk-size", "7", "--batch-size", "4", "--neighbours", "3",
                               "--neighbour-queries", "2", num_processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    listed = (out / "files.txt").read_text().splitlines()
    assert listed == images  # the bad file left out, the rest in the scan's order
    rows = np.load(out / "embeddings.npy")
    assert rows.dtype == np.float32 and rows.shape == (len(images), 512)
    np.testing.assert_allclose(rows, expected_rows(root / "run" / "final", listed), rtol=1e-4, atol=1e-5)
    skipped = sorted((out / "skipped.txt").read_text().splitlines())
    assert [line.split("\t")[0] for line in skipped] == [str(root / "photos" / "set1" / "broken.jpg"),
                                                          str(root / "photos" / "set2" / "cut.jpg")]
    assert result.stdout.count("skipped 2 unreadable file(s)") == 1 and not (out / "parts").exists()

    found, values = np.load(out / "neighbours.npy"), np.load(out / "neighbour_similarities.npy")
    normalized = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    similarity = normalized @ normalized.T
    np.fill_diagonal(similarity, -2)
    assert found.shape == values.shape == (len(images), 3)
    np.testing.assert_allclose(values, -np.sort(-similarity, axis=1)[:, :3], atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(similarity, found, axis=1), values, atol=1e-5)
    assert not (found == np.arange(len(images))[:, None]).any()
    tsv = [line.split("\t") for line in (out / "neighbours.tsv").read_text().splitlines()]
    assert tsv[5] == [listed[5], *(listed[i] for i in found[5])]
    with Image.open(out / "neighbours.png") as picture:  # 2 rows of 1 + 3 images of 64 px, 4 px apart
        assert picture.size == (4 * (64 + 4) + 4, 2 * (64 + 4) + 4)


def test_a_stopped_run_keeps_its_finished_chunks_and_ends_as_a_straight_one(photos, monkeypatch, capsys):
    root, images = photos
    options = ["--encoder", str(root / "run" / "final"), "--data-dir", str(root / "photos"), "--chunk-size", "8"]
    straight, stopped = root / "straight", root / "stopped"
    AcceleratorState._reset_state(True)
    embed.main([*options, "--output-dir", str(straight)])

    real, calls = embed.embed_chunk, []

    def stop_at_the_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a stop after the first chunk was written
        return real(*a, **kw)
    monkeypatch.setattr(embed, "embed_chunk", stop_at_the_second)
    AcceleratorState._reset_state(True)
    with pytest.raises(KeyboardInterrupt):
        embed.main([*options, "--output-dir", str(stopped)])
    assert len(os.listdir(next((stopped / "parts").iterdir()))) == 1
    resumed = []
    monkeypatch.setattr(embed, "embed_chunk", lambda *a, **kw: resumed.append(1) or real(*a, **kw))
    capsys.readouterr()
    AcceleratorState._reset_state(True)
    embed.main([*options, "--output-dir", str(stopped)])
    assert "resuming: 1 of this process's 3 chunk(s) already embedded" in capsys.readouterr().out
    assert len(resumed) == 2  # the finished chunk was not embedded again
    assert np.array_equal(np.load(stopped / "embeddings.npy"), np.load(straight / "embeddings.npy"))
    assert (stopped / "files.txt").read_text() == (straight / "files.txt").read_text()


@pytest.mark.e2e
def test_the_readmes_embed_command_runs_as_written(photos, tmp_path):
    root, images = photos
    command = re.search(r"^(accelerate launch embed\.py .*)$", README, re.M).group(1)
    encoder, data = re.search(r"--encoder (\S+)", command).group(1), re.search(r"--data-dir (\S+)", command).group(1)
    shutil.copytree(root / "run" / "final", tmp_path / encoder)
    shutil.copytree(root / "photos", tmp_path / data, symlinks=True)
    result = run_script(command.replace("embed.py", os.path.join(REPO, "embed.py"), 1).split(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / os.path.dirname(encoder) / "embeddings"  # the default: beside final/
    assert len((out / "files.txt").read_text().splitlines()) == len(images)
    assert (out / "neighbours.png").exists() and "written to" in result.stdout
