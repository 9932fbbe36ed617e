"""Both scripts trained on unlabeled images (--dataset images) through `accelerate launch`, evaluated on another,
labelled set or on the pretext's own task alone; evaluate.py on the encoder they leave."""
import json

import pytest

from helpers import accelerate_launch, python_script, write_unlabeled_images

pytestmark = pytest.mark.e2e

SMALL_IMAGES = ["--dataset", "images", "--model", "simple_cnn", "--image-size", "16", "--batch-size", "16",
                "--knn-k", "3", "--linear-probe-epochs", "2", "--eval-batch-size", "64", "--report-to", "none",
                "--max-steps", "2"]
PRETEXT_METRIC = {"train_rotation.py": "eval/rotation_acc", "train_siamese.py": "eval/view_pair_auc"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """41 unlabeled images (one a symlink) of mixed formats and sizes, flat and nested; 4 are held out."""
    root = tmp_path_factory.mktemp("photos")
    for layout in ("flat", "nested"):
        write_unlabeled_images(root / layout, count=40, nested=layout == "nested")
    return root


def options(script):
    return [*SMALL_IMAGES, *(["--pairs", "augment"] if script == "train_siamese.py" else [])]


@pytest.mark.parametrize("script, layout", [("train_rotation.py", "flat"), ("train_siamese.py", "nested")])
def test_unlabeled_images_train_on_two_processes_and_evaluate_on_a_labelled_folder(tmp_path, photos, image_folder,
                                                                                    script, layout):
    out = tmp_path / "out"
    result = accelerate_launch(script, *options(script), "--data-dir", photos / layout, "--cache-dir",
                               tmp_path / "cache", "--eval-dataset", "imagefolder", "--eval-data-dir", image_folder,
                               "--output-dir", out, num_processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"data: 41 unlabeled images under {photos / layout} at 16 px: 37 train + 4 held "
                                    f"out"), result.stdout[:500]
    results = json.loads((out / "results.json").read_text())
    # k-NN and the probe used the labelled folder's 2 classes, 12 train and 6 test images
    assert results["evaluation"] == {"labelled": "imagefolder", "data_dir": str(image_folder), "classes": 2,
                                     "train_images": 12, "test_images": 6, "pretext_images": 4}
    for key in ("eval/knn_acc", "eval/linear_probe_acc"):
        assert round(results[key] * 6, 6) == round(results[key] * 6)  # a share of the 6 test images
    assert 0 <= results[PRETEXT_METRIC[script]] <= 1 and results["world_size"] == 2
    if script != "train_rotation.py":
        return
    # evaluate.py probes with labels: none here unless --eval-dataset names a labelled set
    refused = python_script("evaluate.py", "--encoder", out / "final", "--dataset", "images", "--data-dir",
                            photos / layout)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "pass --eval-dataset" in refused.stderr
    probed = python_script("evaluate.py", "--encoder", out / "final", "--dataset", "images", "--data-dir",
                           photos / layout, "--eval-dataset", "imagefolder", "--eval-data-dir", image_folder,
                           "--cache-dir", tmp_path / "cache", "--classifier-epochs", "1", "--classifier-batch-size",
                           "4", "--skip-untrained", "--blocks", "block1")
    assert probed.returncode == 0, probed.stderr[-3000:]
    report = json.loads((out / "probes.json").read_text())
    assert report["train_images"] == 12 and report["test_images"] == 6


@pytest.mark.parametrize("script, source", [("train_rotation.py", "list"), ("train_siamese.py", "flat")])
def test_with_no_labelled_set_the_pretext_metrics_alone_are_reported_and_said_once(tmp_path, photos, script, source):
    data_dir = photos / "flat"
    if source == "list":  # the nested images, by absolute path (relative ones: test_images.py)
        data_dir = tmp_path / "photos.txt"
        data_dir.write_text("\n".join(str(p) for p in sorted((photos / "nested").rglob("img*"))) + "\n")
    out = tmp_path / "out"
    result = accelerate_launch(script, *options(script), "--data-dir", data_dir, "--cache-dir", tmp_path / "cache",
                               "--output-dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("evaluation: none (--eval-dataset none)") == 1
    if source == "list":
        assert f"data: 40 unlabeled images listed in {data_dir}" in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["evaluation"] == {"labelled": "none", "pretext_images": 4}
    assert "eval/knn_acc" not in results and "eval/linear_probe_acc" not in results
    assert 0 <= results[PRETEXT_METRIC[script]] <= 1


def test_label_pairs_on_unlabeled_images_are_one_line(photos):
    result = python_script("train_siamese.py", "--dataset", "images", "--data-dir", photos / "flat")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: --pairs label needs a label for every train image")
