import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from ssl_scripts import UserError
from ssl_scripts.evaluation import rotnet_protocol
from ssl_scripts.models.encoders import build_encoder


@pytest.fixture
def accelerator():
    AcceleratorState._reset_state(True)
    return Accelerator(cpu=True)


@pytest.mark.parametrize("model, expected", [
    ("nin", {"block1": 96 * 16 * 16, "block2": 192 * 8 * 8, "block3": 192 * 8 * 8, "block4": 192 * 8 * 8}),
    # ResNet-18's 64x32x32 and 128x16x16 maps hold more than 24576 values: pooled 2x2 once
    ("resnet18", {"stem": 64 * 16 * 16, "layer1": 64 * 16 * 16, "layer2": 128 * 8 * 8, "layer3": 256 * 8 * 8,
                  "layer4": 512 * 4 * 4}),
    ("simple_cnn", {"block1": 32 * 16 * 16, "block2": 64 * 8 * 8}),
])
def test_block_features_have_the_expected_shapes(accelerator, model, expected):
    encoder = build_encoder(model).eval()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    features = rotnet_protocol.block_features(accelerator, encoder, images, batch_size=2)
    assert {name: f.shape for name, f in features.items()} == {name: (5, d) for name, d in expected.items()}
    assert rotnet_protocol.feature_dims(encoder, list(expected)) == list(expected.values())
    assert all(f.dtype == torch.bfloat16 for f in features.values())


def test_block_features_are_the_maps_of_each_block_and_flip_mirrors_the_images(accelerator):
    encoder = build_encoder("nin").eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    x = images.float() / 255
    with torch.no_grad():
        maps = encoder.block_features(x)
        mirrored = encoder.block_features(x.flip(3))
    features = rotnet_protocol.block_features(accelerator, encoder, images, 2, ["block1", "block4"], dtype=torch.float32)
    assert list(features) == ["block1", "block4"]
    assert torch.allclose(features["block1"], maps[0].flatten(1), atol=1e-5)
    assert torch.allclose(features["block4"], maps[3].flatten(1), atol=1e-5)
    flipped = rotnet_protocol.block_features(accelerator, encoder, images, 2, ["block2"], flip=True, dtype=torch.float32)
    assert torch.allclose(flipped["block2"], mirrored[1].flatten(1), atol=1e-5)
    assert not torch.allclose(flipped["block2"], maps[1].flatten(1), atol=1e-3)


def test_unknown_block_names_what_exists():
    with pytest.raises(UserError, match="choose from stem, layer1"):
        rotnet_protocol.check_blocks(build_encoder("resnet18"), ["block1"])


def test_flatten_map_pools_only_maps_over_the_cap():
    x = torch.arange(2 * 4 * 8 * 8, dtype=torch.float32).view(2, 4, 8, 8)
    assert torch.equal(rotnet_protocol.flatten_map(x, max_dim=256), x.flatten(1))
    pooled = rotnet_protocol.flatten_map(x, max_dim=255)
    assert pooled.shape == (2, 4 * 4 * 4)
    assert pooled[0, 0] == x[0, 0, :2, :2].mean()
    assert rotnet_protocol.flatten_map(x, max_dim=10).shape == (2, 4)  # pooled down to 1x1, never past it


def separable(n_per_class=60, dim=48, classes=10, seed=0):
    """Gaussian clusters around class centres that are the same for every split: linearly separable."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0)) * 4
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed + 1)), labels


def test_both_classifiers_reach_100_percent_on_linearly_separable_features():
    (xtr, ytr), (xte, yte) = separable(), separable(n_per_class=20, seed=1)
    results = rotnet_protocol.train_classifiers({"a": [xtr]}, ytr, {"a": xte}, yte, epochs=10, batch_size=32)
    assert results["a"]["nonlinear"] > 0.99 and results["a"]["linear"] > 0.99


def test_classifiers_trained_on_shuffled_labels_are_near_chance():
    (xtr, ytr), (xte, yte) = separable(), separable(n_per_class=20, seed=1)
    shuffled = ytr[torch.randperm(len(ytr), generator=torch.Generator().manual_seed(0))]
    results = rotnet_protocol.train_classifiers({"a": [xtr]}, shuffled, {"a": xte}, yte, epochs=10, batch_size=32)
    assert results["a"]["nonlinear"] < 0.35 and results["a"]["linear"] < 0.35


def test_the_mirrored_view_is_drawn_for_about_half_the_samples():
    # The first view carries no information, the second separates the classes: only the draws of the second
    # can teach the classifier, and the test features are like the second view.
    (xtr, ytr), (xte, yte) = separable(), separable(n_per_class=20, seed=1)
    blank = torch.zeros_like(xtr)
    results = rotnet_protocol.train_classifiers({"a": [blank, xtr]}, ytr, {"a": xte}, yte, ["linear"], epochs=10,
                                       batch_size=32)
    assert results["a"]["linear"] > 0.9
    only_blank = rotnet_protocol.train_classifiers({"a": [blank]}, ytr, {"a": xte}, yte, ["linear"], epochs=10, batch_size=32)
    assert only_blank["a"]["linear"] < 0.35


def test_probes_leave_the_global_random_stream_alone(monkeypatch):
    (xtr, ytr) = separable(n_per_class=10)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    seeded = []  # a CUDA generator seeded is not restored by fork_rng(devices=[])
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda *a: seeded.append(a))
    rotnet_protocol.train_classifiers({"a": [xtr]}, ytr, {"a": xtr}, ytr, epochs=1, batch_size=16)
    assert torch.equal(torch.rand(3), expected) and seeded == []


def test_probe_encoder_reports_every_block_and_classifier(accelerator):
    from ssl_scripts.data.image_data import make_synthetic

    data = make_synthetic(n_train=64, n_test=16)
    results = rotnet_protocol.probe_encoder(accelerator, build_encoder("simple_cnn"), data, epochs=2, batch_size=16,
                                   train_subset=torch.arange(32))
    assert set(results) == {"block1", "block2"}
    assert all(set(r) == {"nonlinear", "linear"} and all(0 <= a <= 1 for a in r.values()) for r in results.values())


def test_table_puts_untrained_next_to_trained_and_the_paper_last():
    trained = {"block1": {"nonlinear": 0.8, "linear": 0.7}, "block2": {"nonlinear": 0.9, "linear": 0.75}}
    untrained = {"block1": {"nonlinear": 0.5, "linear": 0.4}, "block2": {"nonlinear": 0.45, "linear": 0.35}}
    table = rotnet_protocol.format_table(trained, untrained, {"block1": 24576, "block2": 12288}, rotnet_protocol.PAPER_NIN_NONLINEAR)
    lines = table.splitlines()
    assert lines[0] == ("| block | features | nonlinear (trained) | linear (trained) | nonlinear (untrained) "
                        "| linear (untrained) | paper nonlinear |")
    assert lines[2] == "| block1 | 24576 | 80.00 | 70.00 | 50.00 | 40.00 | 85.07 |"
    assert lines[3] == "| block2 | 12288 | 90.00 | 75.00 | 45.00 | 35.00 | 89.06 |"
