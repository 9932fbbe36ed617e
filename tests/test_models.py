import pytest
import torch

from common import UserError
from common.models import EncoderWithHead, build_encoder, load_encoder, rotation_head, save_encoder

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
    assert EncoderWithHead(encoder, rotation_head(encoder))(x).shape == (2, 4)


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


def test_load_encoder_names_a_wrong_path(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_encoder(str(tmp_path))
