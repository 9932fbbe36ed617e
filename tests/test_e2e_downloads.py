"""STL-10 and CIFAR-100 trained on through `accelerate launch`, from small files in their own formats (only the
MD5 check skipped, downloads refused: tests/helpers/dataset_files.py)."""
import json

import pytest

from helpers import accelerate_command, python_script, run_script
from helpers import checksum_skipping_env, write_cifar100, write_stl10

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("dataset, script", [("stl10", "train_rotation.py"), ("cifar100", "train_siamese.py")])
def test_a_downloaded_dataset_trains_and_evaluates_on_its_labelled_splits(tmp_path, dataset, script):
    if dataset == "stl10":  # unlabeled + train trained on; train / test evaluated on
        write_stl10(tmp_path / "data", n_train=20, n_test=10, n_unlabeled=44)
        trained, evaluated = 64, {"classes": 10, "train_images": 20, "test_images": 10}
    else:
        write_cifar100(tmp_path / "data", n_train=60, n_test=20)
        trained, evaluated = 60, {"classes": 100, "train_images": 60, "test_images": 20}
    out = tmp_path / "out"
    options = ["--dataset", dataset, "--data-dir", tmp_path / "data", "--cache-dir", tmp_path / "cache",
               "--image-size", "16", "--model", "simple_cnn", "--batch-size", "16", "--max-steps", "4",
               "--knn-k", "3", "--linear-probe-epochs", "2", "--report-to", "none", "--output-dir", out,
               *(["--pairs", "augment"] if script == "train_siamese.py" else [])]
    result = run_script(accelerate_command(script, *options, num_processes=2), env=checksum_skipping_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["evaluation"] == {"labelled": dataset, "data_dir": str(tmp_path / "data"), **evaluated,
                                     "pretext_images": evaluated["test_images"]}
    assert 0 <= results["eval/knn_acc"] <= 1 and 0 <= results["eval/linear_probe_acc"] <= 1
    assert results["epochs"] == pytest.approx(4 / (trained // 16))  # every train image, the unlabeled ones too


def test_label_pairs_on_stl10_are_one_line(tmp_path):
    result = python_script("train_siamese.py", "--dataset", "stl10", "--data-dir", tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--dataset stl10 has unlabeled ones: use --pairs augment" in result.stderr
