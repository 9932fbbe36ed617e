"""evaluate.py run for real through `accelerate launch`, on an encoder train_rotation.py exported."""
import json

import pytest

from helpers import accelerate_launch, python_script

pytestmark = pytest.mark.e2e


def test_rotnet_protocol_on_a_trained_nin_reports_every_block_trained_and_untrained(tmp_path):
    out = tmp_path / "nin"
    trained = accelerate_launch("train_rotation.py", "--dataset", "synthetic", "--synthetic-size", "256",
                                "--model", "nin", "--batch-size", "16", "--max-steps", "3", "--skip-eval",
                                "--report-to", "none", "--output-dir", out)
    assert trained.returncode == 0, trained.stderr[-3000:]

    result = accelerate_launch("evaluate.py", "--encoder", out / "final", "--dataset", "synthetic",
                               "--synthetic-size", "512", "--classifier-epochs", "8", "--classifier-batch-size", "64",
                               num_processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "probes.json").read_text())
    assert report["model"] == "nin" and report["world_size"] == 2
    assert report["train_images"] == 512 and report["test_images"] == 128
    assert report["feature_dims"] == {"block1": 24576, "block2": 12288, "block3": 12288, "block4": 12288}
    for network in ("trained", "untrained"):
        assert set(report[network]) == {"block1", "block2", "block3", "block4"}
        for block in report[network].values():
            assert set(block) == {"nonlinear", "linear"} and all(0 <= acc <= 1 for acc in block.values())
    # The synthetic classes are distinct colour patterns: block 1 of any NIN, trained 3 steps or not, tells them apart.
    assert report["trained"]["block1"]["linear"] > 0.9 and report["untrained"]["block1"]["linear"] > 0.9
    assert report["trained"] != report["untrained"]
    assert report["paper_nonlinear"]["block2"] == 0.8906

    table = (out / "probes.md").read_text()
    assert "| nonlinear (trained) | linear (trained) | nonlinear (untrained) | linear (untrained) |" in table
    assert table in result.stdout and result.stdout.count("| block2 | 12288 |") == 1  # printed once, by rank 0


def test_evaluate_refuses_what_is_not_an_exported_encoder(tmp_path):
    result = python_script("evaluate.py", "--encoder", tmp_path, "--dataset", "synthetic")
    assert result.returncode == 2
    assert "has no config.json: pass the final/ folder a training run wrote" in result.stderr
    assert "Traceback" not in result.stderr
