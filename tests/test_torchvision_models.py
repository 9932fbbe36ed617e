"""torchvision's classification models as encoders (--model torchvision:NAME, and resnet50): the classifier removed,
the stem following the image size as resnet18's does, the named stages as the blocks evaluate.py probes."""
import pytest
import torch
import torchvision

from ssl_scripts import UserError
from ssl_scripts.models import torchvision_models
from ssl_scripts.models.encoders import build_encoder, model_spec
from helpers import parse
from helpers.flops import forward_gflops


def torchvision_features(name):
    """torchvision's own network with its last Linear removed: what the encoder is at torchvision's stem."""
    net = torchvision.models.get_model(name, weights=None)
    for path, _, _ in torchvision_models.classifier(net):
        net.set_submodule(path, torch.nn.Identity())
    return net


# model: (torchvision name, block whose map follows the stem, its side at 32 px (the small-image stem), at 224 px)
STEMS = {"resnet50": ("resnet50", "layer1", 32, 56), "torchvision:resnet50": ("resnet50", "layer1", 32, 56),
         "torchvision:efficientnet_b0": ("efficientnet_b0", "features_1", 32, 112)}


@pytest.mark.parametrize("model", sorted(STEMS))
def test_the_stem_follows_the_image_size_and_costs_torchvisions_flops_at_224(model):
    name, block, side_32, side_224 = STEMS[model]
    small, large = build_encoder(model, 32).eval(), build_encoder(model, 224).eval()
    assert (small.stem, large.stem) == ("cifar", "imagenet")
    for encoder, side in ((small, side_32), (large, side_224)):
        with torch.no_grad():
            maps = encoder.block_features(torch.rand(1, 3, encoder.image_size, encoder.image_size))
        assert maps[encoder.block_names.index(block)].shape[-1] == side
    ours, theirs = forward_gflops(large, 224), forward_gflops(torchvision_features(name), 224)
    assert ours == pytest.approx(theirs, rel=0.01), f"{ours:.2f} GFLOP per image, torchvision's {theirs:.2f}"
    # The small-image stem keeps 4x (resnet: 16x with the max-pool) the positions: more FLOPs per pixel.
    assert forward_gflops(small, 32) > 2 * forward_gflops(torchvision_features(name), 32)


@pytest.mark.parametrize("model, dim, blocks", [
    ("resnet50", 2048, ["stem", "layer1", "layer2", "layer3", "layer4"]),
    ("torchvision:resnet50", 2048, ["stem", "layer1", "layer2", "layer3", "layer4"]),
    ("torchvision:efficientnet_b0", 1280, [f"features_{i}" for i in range(9)]),
    ("torchvision:mobilenet_v3_small", 1024, [f"features_{i}" for i in range(13)]),
    ("torchvision:regnet_x_400mf", 400, ["stem", "block1", "block2", "block3", "block4"]),
    ("torchvision:vit_b_16", 768, ["features"]),  # no (N, C, H, W) stages: its class token alone
])
def test_a_torchvision_model_gives_pooled_features_and_its_stages(model, dim, blocks):
    encoder = build_encoder(model, 32)
    x = torch.rand(2, 3, 32, 32)
    assert encoder.feature_dim == dim and encoder(x).shape == (2, dim)
    assert encoder.block_names == blocks
    with torch.no_grad():
        maps = encoder.eval().block_features(x)
        pooled = encoder(x)
    assert len(maps) == len(blocks) and all(m.dim() == 4 for m in maps)
    if model.endswith("resnet50"):  # the last stage's map, average-pooled, is the features
        torch.testing.assert_close(maps[-1].mean(dim=(2, 3)), pooled)


def test_the_classifier_is_the_last_linear_and_the_dropout_before_it():
    net = torchvision.models.efficientnet_b0(weights=None)
    assert [p for p, _, _ in torchvision_models.classifier(net)] == ["classifier.0", "classifier.1"]
    assert [p for p, _, _ in torchvision_models.classifier(torchvision.models.resnet18())] == ["fc"]
    googlenet = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)  # dropout: an attribute
    assert [p for p, _, _ in torchvision_models.classifier(googlenet)] == ["dropout", "fc"]
    with pytest.raises(UserError, match="squeezenet's is a convolution"):
        build_encoder("torchvision:squeezenet1_0", 32)


def test_the_stems_of_patch_embeddings_are_kept():
    assert build_encoder("torchvision:convnext_tiny", 32).stem == "imagenet"
    assert "kernel_size=(3, 3), stride=1," in build_encoder("torchvision:regnet_x_400mf", 32).lines[1]


def test_unknown_torchvision_names_are_one_line():
    with pytest.raises(UserError, match="torchvision has no classification model 'resnet51'.*list_models"):
        build_encoder("torchvision:resnet51", 32)
    with pytest.raises(UserError, match="unknown model 'vit'.*torchvision:NAME"):
        build_encoder("vit")


def test_python_path_reaches_the_module():
    net = torchvision.models.efficientnet_b0(weights=None)
    for path in ("features.0.0", "classifier.1", "avgpool"):
        assert eval(torchvision_models.python_path(path), {"model": net}) is net.get_submodule(path)


def test_building_the_stem_decision_draws_no_random_numbers():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    torchvision_models.stem_of.cache_clear()
    torchvision_models.stem_of("torchvision:efficientnet_b0", 32, 64)
    assert torch.equal(torch.rand(3), expected)


def test_the_recipes_are_stated_by_family():
    assert model_spec("resnet50").recipe == {"optimizer": "sgd", "lr": 0.1, "schedule": "step"}
    assert model_spec("torchvision:efficientnet_b0").recipe["optimizer"] == "sgd"
    assert model_spec("torchvision:vit_b_16").recipe == {"optimizer": "adamw", "lr": 5e-4, "schedule": "cosine"}
    args = parse(["--model", "torchvision:vit_b_16"])
    assert (args.optimizer, args.lr) == ("adamw", 5e-4)


@pytest.mark.parametrize("model, size, message", [
    ("torchvision:vit_b_16", 40, "vit_b_16 cannot run on 40 px images .*indivisible by patch size"),
    ("torchvision:inception_v3", 32, "inception_v3 cannot run on 32 px images"),
    ("torchvision:mnasnet0_5", 32, "not supported: its weights cannot be loaded back from safetensors"),
])
def test_a_model_that_cannot_run_is_refused_in_one_line(model, size, message):
    with pytest.raises(UserError, match=message) as e:
        build_encoder(model, size)
    assert "\n" not in str(e.value)
