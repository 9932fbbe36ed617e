"""train_siamese.py run for real through `accelerate launch` (CPU, gloo for two processes)."""
import json

import pytest

from helpers import SMALL, TRACKED, accelerate_launch, wandb_read, wandb_runs

pytestmark = pytest.mark.e2e


def test_two_processes_train_and_evaluate(tmp_path):
    out = tmp_path / "s2"
    result = accelerate_launch("train_siamese.py", *TRACKED, "--max-steps", "12", "--eval-at-start",
                               "--output-dir", out, num_processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] == 12
    for key in ("eval/knn_acc", "eval/linear_probe_acc", "eval/pair_auc"):
        assert 0 <= results[key] <= 1 and 0 <= results[f"{key}_init"] <= 1
    assert results["eval/pair_auc"] > 0.9  # synthetic classes are easy once same-class pairs are pulled together
    train_lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                   if "train/loss" in line]
    assert 0.3 < train_lines[-1]["train/positive_fraction"] < 0.7
    assert (out / "final" / "encoder.safetensors").exists()

    runs = wandb_runs(out)
    assert len(runs) == 1  # one W&B run for the two processes
    summary, history = wandb_read(runs[0])
    assert summary["summary"]["eval/pair_auc"] == results["eval/pair_auc"]
    final = history[-1]  # the media of the last evaluation, logged at the last step
    assert final["_step"] == 12
    for key in ("eval/distance_similar", "eval/distance_dissimilar"):
        assert final[f"{key}._type"] == "histogram" and sum(final[f"{key}.values"]) > 0
    # trained embeddings: same-class test pairs closer on average than different-class ones
    assert histogram_mean(final, "eval/distance_similar") < histogram_mean(final, "eval/distance_dissimilar")
    assert final["eval/embedding_pca._type"] == "image-file"


def histogram_mean(item, key):
    bins, counts = item[f"{key}.bins"], item[f"{key}.values"]
    centres = [(low + high) / 2 for low, high in zip(bins, bins[1:])]
    return sum(c * n for c, n in zip(centres, counts)) / sum(counts)


def test_bad_positive_fraction_is_one_line(tmp_path):
    result = accelerate_launch("train_siamese.py", *SMALL, "--positive-fraction", "1.5", "--output-dir", tmp_path)
    assert result.returncode != 0
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == \
        ["error: --positive-fraction must be within [0, 1] (got 1.5)"]


def test_a_class_with_one_image_is_one_error_line(image_folder, tmp_path):
    from helpers import python_script
    for extra in sorted((image_folder / "train" / "dog").glob("*.png"))[1:]:
        extra.unlink()  # dog keeps one train image
    result = python_script("train_siamese.py", "--dataset", "imagefolder", "--data-dir", image_folder, "--image-size",
                           "16", "--cache-dir", tmp_path / "cache", "--model", "simple_cnn", "--batch-size", "4",
                           "--knn-k", "3", "--report-to", "none", "--max-steps", "1", "--output-dir", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --pairs label needs at least two train images in every class, and dog has one: add images, or use "
        "--pairs augment")

