"""--dataset images: unlabeled images under a folder at any depth, or listed in a file (ssl_scripts/data/folders.py)."""
import pytest
import torch

from ssl_scripts import UserError
from ssl_scripts.data.cache import load_imagefolder
from ssl_scripts.data.folders import scan_images
from ssl_scripts.data.image_data import ImageData
from helpers import write_unlabeled_images


@pytest.mark.parametrize("nested", [False, True])
def test_every_image_at_any_depth_is_found_in_one_order_and_some_are_held_out(tmp_path, nested):
    expected = write_unlabeled_images(tmp_path, count=40, nested=nested)
    split, classes = scan_images(str(tmp_path))
    found = [p for p, _ in split["train"] + split["test"]]
    assert sorted(found) == expected and classes == []  # hidden files and folders and the text file left out
    assert [p for p, _ in split["train"]] == sorted(p for p, _ in split["train"])
    # 4: a tenth of the 40 images and the symlink (test_enough_images_are_held_out_...)
    assert len(split["test"]) == 4 and all(label == -1 for _, label in split["train"] + split["test"])
    assert scan_images(str(tmp_path)) == (split, classes)  # the held-out images are fixed by the files


def test_a_list_file_names_images_relative_to_itself_in_its_order(tmp_path):
    paths = write_unlabeled_images(tmp_path / "photos", count=12)
    listed = list(reversed(paths))
    (tmp_path / "list.txt").write_text("# my photos\n" + "\n".join(
        p.replace(str(tmp_path) + "/", "") for p in listed) + "\n\n")
    split, _ = scan_images(str(tmp_path / "list.txt"))
    held = {p for p, _ in split["test"]}
    assert [p for p, _ in split["train"]] == [p for p in listed if p not in held]


def test_too_few_images_or_none_say_what_is_needed(tmp_path):
    with pytest.raises(UserError, match="no image files"):
        scan_images(str(tmp_path))
    write_unlabeled_images(tmp_path, count=2)
    (tmp_path / "linked.jpg").unlink()
    with pytest.raises(UserError, match="needs at least 4"):
        scan_images(str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        scan_images(str(tmp_path / "missing"))


def test_unlabeled_images_decode_into_a_cache_with_no_labels(tmp_path):
    write_unlabeled_images(tmp_path / "photos", count=20, nested=True)
    data = load_imagefolder(str(tmp_path / "photos"), 16, str(tmp_path / "cache"), scan=scan_images)
    assert data.train_images.shape == (19, 3, 16, 16) and data.test_images.shape == (2, 3, 16, 16)
    assert bool((data.train_labels == -1).all()) and data.classes == [] and data.labelled() is None


def test_a_dataset_evaluates_on_its_labelled_train_images_only():
    images = torch.zeros(7, 3, 8, 8, dtype=torch.uint8)
    labels = torch.tensor([0, 1, 0, -1, -1, -1, -1])  # STL-10's order: labelled train images, then unlabeled
    data = ImageData(images, labels, images[:2], torch.tensor([0, 1]), ["a", "b"])
    labelled = data.labelled()
    assert labelled.train_labels.tolist() == [0, 1, 0] and labelled.train_images.data_ptr() == images.data_ptr()
    whole = ImageData(images, labels.clamp(min=0), images[:2], torch.tensor([0, 1]), ["a", "b"])
    assert whole.labelled() is whole


def test_an_unreadable_image_is_named_or_skipped_and_counted(tmp_path):
    write_unlabeled_images(tmp_path / "photos", count=20)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="cannot read image .*broken.jpg.*--skip-bad-images"):
        load_imagefolder(str(tmp_path / "photos"), 16, str(tmp_path / "cache"), scan=scan_images)
    data = load_imagefolder(str(tmp_path / "photos"), 16, str(tmp_path / "cache"), skip_bad=True, scan=scan_images)
    assert data.skipped_images == 1 and len(data.train_images) + len(data.test_images) == 21


@pytest.mark.parametrize("count, held", [(4, 2), (41, 4), (500, 50), (5_000, 256), (60_000, 1_200)])
def test_enough_images_are_held_out_for_the_pretext_metrics_and_training_keeps_nine_tenths(tmp_path, count, held):
    # 2% of 500 was 10 images: a rotation accuracy on them moves by 10 points with one image. Now 256 where a
    # tenth of the images allows it (a tenth below that), 2% above 12,800 images.
    for i in range(count):
        (tmp_path / f"{i:05d}.jpg").touch()  # only listed, never decoded
    split, _ = scan_images(str(tmp_path))
    assert len(split["test"]) == held and len(split["train"]) == count - held


def test_the_data_line_says_when_the_pretext_metrics_rest_on_few_images(tmp_path, capsys):
    from accelerate import Accelerator
    from ssl_scripts.data import train_split
    from helpers import parse
    write_unlabeled_images(tmp_path / "photos", count=40)
    args = parse(["--dataset", "images", "--data-dir", tmp_path / "photos", "--cache-dir", tmp_path / "cache",
                  "--image-size", "16", "--output-dir", tmp_path / "out"])
    train_split.load_train_split(args, Accelerator(cpu=True))
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("data: "))
    assert "37 train + 4 held out for the pretext's metrics" in line
    assert "the pretext's metrics rest on 4 images: noisy (256 steady them)" in line
