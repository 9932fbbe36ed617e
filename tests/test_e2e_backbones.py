"""The field's backbones trained for real through `accelerate launch` on 2 processes, then probed per block by
evaluate.py: resnet50 (train_rotation.py) and torchvision's EfficientNet-B0 by name (train_siamese.py), on 16 px
synthetic images (the small-image stems)."""
import json

import pytest

from helpers import accelerate_launch

pytestmark = pytest.mark.e2e

RUNS = {  # model: (script, its options, the blocks evaluate.py reports)
    "resnet50": ("train_rotation.py", [], ["stem", "layer1", "layer2", "layer3", "layer4"]),
    "torchvision:efficientnet_b0": ("train_siamese.py", ["--method", "simclr"], [f"features_{i}" for i in range(9)]),
}


@pytest.mark.parametrize("model", sorted(RUNS))
def test_a_backbone_trains_two_steps_on_two_processes_and_is_probed_per_block(tmp_path, model):
    script, options, blocks = RUNS[model]
    out = tmp_path / "run"
    trained = accelerate_launch(script, "--dataset", "synthetic", "--synthetic-size", "64", "--image-size", "16",
                                "--model", model, *options, "--batch-size", "8", "--max-steps", "2", "--skip-eval",
                                "--report-to", "none", "--output-dir", out, num_processes=2)
    assert trained.returncode == 0, trained.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 2
    config = json.loads((out / "final" / "config.json").read_text())
    assert (config["model"], config["stem"], config["image_size"]) == (model, "cifar", 16)
    assert (out / "final" / "torchvision.safetensors").exists()

    result = accelerate_launch("evaluate.py", "--encoder", out / "final", "--dataset", "synthetic",
                               "--synthetic-size", "64", "--classifiers", "linear", "--classifier-epochs", "2",
                               "--classifier-batch-size", "16", num_processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "probes.json").read_text())
    assert report["model"] == model and report["world_size"] == 2
    assert list(report["feature_dims"]) == blocks
    for network in ("trained", "untrained"):
        assert list(report[network]) == blocks
        assert all(0 <= block["linear"] <= 1 for block in report[network].values())
