import pytest
import torch

from ssl_scripts import UserError
from ssl_scripts.models.encoders import (MODELS, Encoder, EncoderWithHead, FeatureLinear, build_encoder, load_encoder,
                           save_encoder, simple_cnn_blocks)
from helpers import parse
from helpers.flops import forward_gflops
from ssl_scripts.tasks import TASKS


def task_head(task, encoder, *options):
    return TASKS[task].head(parse(["--model", encoder.name, *options], task), encoder)

EXPECTED = {  # model: (feature dim, channels of each block's map, spatial side of each block's map) at 32 px
    "simple_cnn": (4096, [32, 64], [16, 8]),
    "resnet18": (512, [64, 64, 128, 256, 512], [32, 32, 16, 8, 4]),
    "nin": (192, [96, 192, 192, 192], [16, 8, 8, 8]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_output_shapes(name):
    dim, channels, sides = EXPECTED[name]
    encoder = build_encoder(name, 32)
    x = torch.rand(2, 3, 32, 32)
    assert encoder.feature_dim == dim and encoder(x).shape == (2, dim)
    maps = encoder.block_features(x)
    assert [m.shape[1] for m in maps] == channels and [m.shape[-1] for m in maps] == sides
    assert EncoderWithHead(encoder, task_head("rotation", encoder))(x).shape == (2, 4)


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown model 'vit'.*simple_cnn"):
        build_encoder("vit")


@pytest.mark.parametrize("name", ["simple_cnn", "resnet18"])
def test_load_encoder_round_trip(tmp_path, name):
    torch.manual_seed(0)
    encoder = build_encoder(name, 32, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
    encoder(torch.rand(8, 3, 32, 32))  # move batch-norm statistics away from their initial values
    encoder.eval()
    save_encoder(encoder, str(tmp_path / "final"))
    loaded = load_encoder(str(tmp_path / "final"))
    x = torch.rand(4, 3, 32, 32)
    assert not loaded.training
    assert torch.equal(loaded(x), encoder(x))
    assert loaded.config() == encoder.config() and loaded.config()["mean"] == pytest.approx([0.4, 0.5, 0.6])
    assert torch.equal(load_encoder(str(tmp_path / "final" / "encoder.safetensors"))(x), encoder(x))


@pytest.mark.parametrize("image_size, stem, layer1_side", [(32, "cifar", 32), (64, "cifar", 64), (96, "imagenet", 24),
                                                           (224, "imagenet", 56)])
def test_resnet18_stem_follows_the_image_size(image_size, stem, layer1_side):
    """The CIFAR stem (3x3, stride 1, no max-pool) up to 64 px; above, torchvision's 7x7/2 + max-pool, so a 224 px
    forward costs what torchvision's ResNet-18 does (the CIFAR stem there: 54.4 GFLOP against 3.6)."""
    from torchvision.models import resnet18
    encoder = build_encoder("resnet18", image_size)
    if stem == "imagenet":
        torchvision_net = resnet18()
        torchvision_net.fc = torch.nn.Identity()
        ours, theirs = forward_gflops(encoder, image_size), forward_gflops(torchvision_net, image_size)
        assert ours == pytest.approx(theirs, rel=0.1), f"{ours:.2f} GFLOP per image, torchvision's {theirs:.2f}"
    maps = encoder.eval().block_features(torch.rand(1, 3, image_size, image_size))
    assert [m.shape[-1] for m in maps[1:]] == [layer1_side, layer1_side // 2, layer1_side // 4, layer1_side // 8]
    assert encoder.config()["stem"] == stem


def test_an_exported_224px_resnet18_round_trips(tmp_path):
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", 224)
    encoder(torch.rand(2, 3, 224, 224))  # move batch-norm statistics away from their initial values
    encoder.eval()
    save_encoder(encoder, str(tmp_path / "final"))
    loaded = load_encoder(str(tmp_path / "final"))
    x = torch.rand(1, 3, 224, 224)
    assert loaded.config() == encoder.config() and loaded.config()["stem"] == "imagenet"
    assert torch.equal(loaded(x), encoder(x))


def old_resnet18_export(directory, image_size):
    """An export of resnet18 as it was before the stem followed the image size: the CIFAR stem at every size, and
    no "stem" in its config.json."""
    import json
    from torchvision.models import resnet18
    net = resnet18()
    stem = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False), net.bn1, net.relu)
    blocks = [stem, net.layer1, net.layer2, net.layer3, net.layer4]
    encoder = Encoder("resnet18", blocks, "avg", image_size, block_names=MODELS["resnet18"].block_names).eval()
    save_encoder(encoder, directory)
    with open(f"{directory}/config.json") as f:
        config = json.load(f)
    config.pop("stem", None)
    with open(f"{directory}/config.json", "w") as f:
        json.dump(config, f)
    return encoder


@pytest.mark.parametrize("image_size", [32, 224])
def test_an_export_of_the_old_cifar_stem_loads_as_it_was_trained_at_every_size(tmp_path, image_size):
    # Before the stem followed the image size, resnet18 had the CIFAR stem at every size: an export without a
    # recorded stem is rebuilt with it, also at 224 px, where a new run gets torchvision's.
    old = old_resnet18_export(str(tmp_path), image_size)
    x = torch.rand(2, 3, image_size, image_size)
    loaded = load_encoder(str(tmp_path))
    assert loaded.stem == "cifar" and loaded.blocks[1][0].conv1.stride == (1, 1)
    # the same network (NCHW here, channels_last there: equal within float tolerance)
    torch.testing.assert_close(loaded(x), old(x), rtol=1e-4, atol=1e-5)


def test_load_encoder_names_a_wrong_path(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_encoder(str(tmp_path))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_feature_linear_on_a_map_is_linear_on_the_flattened_map(memory_format):
    torch.manual_seed(0)
    layer = FeatureLinear(64 * 8 * 8, 16)
    feature_map = torch.randn(5, 64, 8, 8).contiguous(memory_format=memory_format).requires_grad_()
    flat = feature_map.detach().flatten(1).requires_grad_()  # flatten(1) of (C, H, W): the encoder's feature order
    out_map, out_flat = layer(feature_map), layer(flat)
    torch.testing.assert_close(out_map, out_flat, rtol=1e-4, atol=1e-5)
    grad = torch.randn_like(out_map)
    (w_map,) = torch.autograd.grad(out_map, layer.weight, grad)
    (w_flat,) = torch.autograd.grad(out_flat, layer.weight, grad)
    torch.testing.assert_close(w_map, w_flat, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("task", ["rotation", "siamese"])
def test_a_head_that_takes_the_map_gives_what_it_gives_on_features(task):
    torch.manual_seed(0)
    encoder = build_encoder("simple_cnn", 32)
    model = EncoderWithHead(encoder, task_head(task, encoder, "--embedding-dim", "32") if task == "siamese"
                            else task_head(task, encoder))
    assert model.head_takes_map  # otherwise this test would compare the same path twice
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(model(x), model.head(encoder(x)), rtol=1e-4, atol=1e-5)


def test_max_pool_before_relu_gives_the_seeds_maps_and_gradients():
    """simple_cnn runs conv, max-pool, relu; the tutorial ran conv, relu, max-pool: same values and gradients."""
    torch.manual_seed(0)
    ours = torch.nn.Sequential(*simple_cnn_blocks())
    seeds = torch.nn.Sequential(*[torch.nn.Sequential(block[0], block[2], block[1]) for block in ours])
    x = torch.randn(4, 3, 32, 32)
    out_ours, out_seeds = ours(x), seeds(x)
    assert torch.equal(out_ours, out_seeds)
    grads_ours = torch.autograd.grad(out_ours.square().sum(), list(ours.parameters()))
    grads_seeds = torch.autograd.grad(out_seeds.square().sum(), list(ours.parameters()))
    for a, b in zip(grads_ours, grads_seeds):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_encoders_are_built_in_their_memory_format_and_it_changes_no_value(name):
    torch.manual_seed(0)
    encoder = build_encoder(name, 32).eval()
    conv = next(m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=MODELS[name].memory_format)
    x = torch.rand(2, 3, 32, 32)
    nchw = build_encoder(name, 32, memory_format=torch.contiguous_format).eval()
    nchw.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(encoder(x), nchw(x), rtol=1e-4, atol=1e-5)


def test_a_registered_model_is_an_option_with_its_recipe(monkeypatch):
    """One entry in models.MODELS is all a new model needs: the parser and the recipe read it, and the tasks' heads
    fit its features (their widths are the tasks' own, by model name)."""
    from ssl_scripts.models.encoders import ModelSpec
    monkeypatch.setitem(MODELS, "tiny", ModelSpec(simple_cnn_blocks, "flatten", recipe={"optimizer": "sgd", "lr": 0.5,
                                                                                        "schedule": "cosine"}))
    args = parse(["--model", "tiny"])
    assert (args.optimizer, args.lr, args.schedule) == ("sgd", 0.5, "cosine")
    assert "tiny" in build_parser_help()
    encoder = build_encoder("tiny", 32)
    x = torch.rand(2, 3, 32, 32)
    assert EncoderWithHead(encoder, task_head("rotation", encoder))(x).shape == (2, 4)
    assert EncoderWithHead(encoder, task_head("siamese", encoder, "--embedding-dim", "4"))(x).projection.shape == (2, 4)


def build_parser_help():
    from ssl_scripts.config import build_parser
    return build_parser("t").format_help()


@pytest.mark.parametrize("name", ["simple_cnn", "torchvision:mobilenet_v3_small"])
def test_an_encoder_refuses_integer_pixels_and_another_size_in_one_line(name):
    from ssl_scripts.models.encoders import InputError
    encoder = build_encoder(name, 32).eval()
    with pytest.raises(InputError, match=r"takes float images in \[0, 1\], got torch.uint8: divide by 255") as e:
        encoder(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert "\n" not in str(e.value)
    for shape in [(1, 3, 300, 400), (3, 32, 32), (1, 1, 32, 32)]:
        with pytest.raises(InputError, match=r"takes \(N, 3, 32, 32\) images, got .*encoder.transform"):
            encoder(torch.rand(*shape))
    with pytest.raises(InputError):
        encoder.block_features(torch.rand(1, 3, 64, 64))  # what evaluate.py calls, too


def test_the_transform_decodes_as_training_does_from_a_path_or_a_pil_image(tmp_path):
    from PIL import Image
    from ssl_scripts.models.image_input import decode_image
    encoder = build_encoder("simple_cnn", 32)
    pixels = torch.randint(0, 256, (300, 400), dtype=torch.uint8).numpy()
    Image.fromarray(pixels, "L").save(tmp_path / "gray.png")
    from_path = encoder.transform(str(tmp_path / "gray.png"))
    assert from_path.shape == (3, 32, 32) and from_path.dtype == torch.float32
    expected = torch.from_numpy(decode_image(str(tmp_path / "gray.png"), 32).copy()).permute(2, 0, 1) / 255
    assert torch.equal(from_path, expected)
    with Image.open(tmp_path / "gray.png") as image:
        assert torch.equal(encoder.transform(image), from_path)
    assert encoder(from_path[None]).shape == (1, 4096)
