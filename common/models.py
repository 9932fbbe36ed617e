"""Encoders (the product), heads (thrown away after training), and encoder export/import.

An Encoder takes float RGB images in [0, 1], shape (N, 3, H, W), normalizes them itself and returns (N, D)
features, so an exported encoder needs nothing but its own folder to be used.
"""
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torchvision.models import resnet18

from common import UserError
from common.config import MODELS

CIFAR_MEAN = [125.3 / 255, 123.0 / 255, 113.9 / 255]  # RotNet's normalization, the default without data stats
CIFAR_STD = [63.0 / 255, 62.1 / 255, 66.7 / 255]


class Encoder(nn.Module):
    """Normalization, then conv blocks (kept separate so per-block features can be probed), then pooling."""

    def __init__(self, name: str, blocks: list, pool: str, image_size: int, mean=None, std=None, block_names=None,
                 memory_format=torch.contiguous_format):
        super().__init__()
        self.name, self.pool, self.image_size = name, pool, image_size
        self.block_names = block_names or [f"block{i}" for i in range(1, len(blocks) + 1)]
        self.register_buffer("mean", torch.tensor(mean or CIFAR_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std or CIFAR_STD).view(1, 3, 1, 1))
        self.blocks = nn.ModuleList(blocks)
        self.memory_format = torch.contiguous_format  # of the conv weights; inputs are converted to match
        with torch.no_grad():
            self.feature_dim = self.eval()(torch.zeros(1, 3, image_size, image_size)).shape[1]
        self.train()
        self.set_memory_format(memory_format)

    def block_features(self, x: torch.Tensor) -> list:
        """Feature maps after each conv block (named in self.block_names)."""
        x = ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)
        maps = []
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block_features(x)[-1]
        return x.flatten(1) if self.pool == "flatten" else x.mean(dim=(2, 3))

    def set_memory_format(self, memory_format) -> "Encoder":
        """The layout of the conv weights and of the maps (NCHW: torch.contiguous_format; NHWC:
        torch.channels_last); only speed depends on it. build_encoder chooses it per model (MEMORY_FORMATS)."""
        self.to(memory_format=memory_format)
        self.memory_format = memory_format
        return self

    def config(self) -> dict:
        return {"model": self.name, "image_size": self.image_size, "feature_dim": self.feature_dim,
                "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}


def conv_bn_relu(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=(kernel - 1) // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def nin_blocks() -> list:
    """RotNet's Network-in-Network, 4 blocks (gidariss/FeatureLearningRotNet, NetworkInNetwork.py)."""
    return [
        nn.Sequential(conv_bn_relu(3, 192, 5), conv_bn_relu(192, 160, 1), conv_bn_relu(160, 96, 1),
                      nn.MaxPool2d(3, stride=2, padding=1)),
        nn.Sequential(conv_bn_relu(96, 192, 5), conv_bn_relu(192, 192, 1), conv_bn_relu(192, 192, 1),
                      nn.AvgPool2d(3, stride=2, padding=1)),
        nn.Sequential(conv_bn_relu(192, 192, 3), conv_bn_relu(192, 192, 1), conv_bn_relu(192, 192, 1)),
        nn.Sequential(conv_bn_relu(192, 192, 3), conv_bn_relu(192, 192, 1), conv_bn_relu(192, 192, 1)),
    ]


def resnet18_blocks() -> list:
    """torchvision's ResNet-18 with the CIFAR stem: 3x3 conv, stride 1, no max-pool."""
    net = resnet18()
    stem = nn.Sequential(nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False), net.bn1, net.relu)
    return [stem, net.layer1, net.layer2, net.layer3, net.layer4]


def simple_cnn_blocks() -> list:
    """The seed tutorial's SimpleCNN convolutions; its features are the flattened last map (4096-d at 32 px).

    The seed's conv, relu, max-pool, with the max-pool first: max-pooling commutes with relu (max(relu(a), relu(b))
    = relu(max(a, b))), so maps and gradients are the same, but relu and its backward run on a quarter of the
    values (~15% of a training step on CPU). The parameter names are the seed layout's (blocks.N.0.*)."""
    return [nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(inplace=True)),
            nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(inplace=True))]


# The layout each encoder is built in, chosen by measurement: channels_last where it is not slower. On GPUs it is
# what tensor cores want for bf16/fp16 convolutions. On this project's 2-core CPU (fp32), against NCHW: training
# step (forward, backward, AdamW) simple_cnn 1.2x, nin 1.29x, resnet18 1.00x; eval forward simple_cnn 2.5x, nin
# 1.44x, resnet18 1.08x. One choice for every device, so no caller branches on it.
MEMORY_FORMATS = {"simple_cnn": torch.channels_last, "resnet18": torch.channels_last, "nin": torch.channels_last}


def build_encoder(model: str, image_size: int = 32, mean=None, std=None, memory_format=None) -> Encoder:
    """memory_format: None for the model's own (MEMORY_FORMATS); the benchmark's seed asks for the tutorial's NCHW."""
    builders = {"simple_cnn": (simple_cnn_blocks, "flatten", None),
                "resnet18": (resnet18_blocks, "avg", ["stem", "layer1", "layer2", "layer3", "layer4"]),
                "nin": (nin_blocks, "avg", None)}  # NIN's block1..block4 are the paper's conv blocks 1-4
    if model not in builders:
        raise UserError(f"unknown model {model!r}: choose one of {', '.join(MODELS)}")
    blocks, pool, names = builders[model]
    return Encoder(model, blocks(), pool, image_size, mean, std, names, memory_format or MEMORY_FORMATS[model])


class FeatureLinear(nn.Linear):
    """nn.Linear (the same parameters) that also takes a flattening encoder's last map as it is: Linear on
    map.flatten(1) is one convolution whose kernel covers the whole map, the same sums in another order. On CPU
    oneDNN runs that convolution ~2x faster than Linear's BLAS matmul (simple_cnn's 4096->128: 2.6 against 4.8 ms
    forward + backward at batch 256), and a channels_last map needs no copy into (C, H, W) order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return F.conv2d(x, self.weight.view(self.out_features, *x.shape[1:]), self.bias).flatten(1)
        return super().forward(x)


def mlp(dims: list) -> nn.Sequential:
    layers = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers += [(FeatureLinear if i == 0 else nn.Linear)(d_in, d_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers[:-1])


def rotation_head(encoder: Encoder) -> nn.Module:
    # simple_cnn keeps the seed's fc(4096->128->4); the others use a linear classifier as RotNet's NIN does.
    if encoder.name == "simple_cnn":
        return mlp([encoder.feature_dim, 128, 4])
    return nn.Linear(encoder.feature_dim, 4)


def projection_head(encoder: Encoder, embedding_dim: int) -> nn.Module:
    # simple_cnn keeps the seed's fc(4096->128->128); the others a 512-wide MLP as SimCLR-style heads use.
    hidden = 128 if encoder.name == "simple_cnn" else 512
    return mlp([encoder.feature_dim, hidden, embedding_dim])


class EncoderWithHead(nn.Module):
    def __init__(self, encoder: Encoder, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head
        first = head[0] if isinstance(head, nn.Sequential) else head
        # The encoder's features are its last map flattened: a FeatureLinear takes the map itself.
        self.head_takes_map = encoder.pool == "flatten" and isinstance(first, FeatureLinear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head_takes_map:
            return self.head(self.encoder.block_features(x)[-1])
        return self.head(self.encoder(x))


# ------------------------------------------------------------------------------------------- export
def save_encoder(encoder: Encoder, directory: str, **extra) -> None:
    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, os.path.join(directory, "encoder.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({**encoder.config(), **extra}, f, indent=2)


def load_encoder(path: str, device="cpu") -> Encoder:
    """Rebuilds an exported encoder from OUTPUT_DIR/final (or the path of a file inside it), in eval mode."""
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    config_path = os.path.join(directory, "config.json")
    if not os.path.exists(config_path):
        raise UserError(f"{directory!r} has no config.json: pass the final/ folder a training run wrote")
    with open(config_path) as f:
        config = json.load(f)
    encoder = build_encoder(config["model"], config["image_size"], config["mean"], config["std"])
    encoder.load_state_dict(load_file(os.path.join(directory, "encoder.safetensors")))
    return encoder.to(device).eval()
