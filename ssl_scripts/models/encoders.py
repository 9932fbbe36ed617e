"""Encoders (the product), heads (thrown away after training), and encoder export/import.

An Encoder takes float RGB images in [0, 1], shape (N, 3, H, W), normalizes them itself and returns (N, D)
features, so an exported encoder needs nothing but its own folder to be used. Each model is one entry of MODELS
(its blocks, pooling, layout and optimizer recipe): a new model is a blocks function and an entry here. The heads
are the tasks' (ssl_scripts/tasks/).
"""
import functools
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torchvision.models import resnet18, resnet50

from ssl_scripts import UserError
from ssl_scripts.models import torchvision_models
from ssl_scripts.models.image_input import decode_image
from ssl_scripts.runtime import files

CIFAR_MEAN = [125.3 / 255, 123.0 / 255, 113.9 / 255]  # RotNet's normalization, the default without data stats
CIFAR_STD = [63.0 / 255, 62.1 / 255, 66.7 / 255]


class InputError(UserError, ValueError):
    """Images an encoder cannot use (integers, another size): one line saying what it takes."""


class Encoder(nn.Module):
    """Normalization, then conv blocks (kept separate so per-block features can be probed), then pooling."""

    def __init__(self, name: str, blocks, pool: str, image_size: int, mean=None, std=None, block_names=None,
                 memory_format=torch.contiguous_format, stem=None):
        super().__init__()
        self.name, self.pool, self.image_size, self.stem = name, pool, image_size, stem
        self.block_names = block_names or [f"block{i}" for i in range(1, len(blocks) + 1)]
        self.register_buffer("mean", torch.tensor(mean or CIFAR_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std or CIFAR_STD).view(1, 3, 1, 1))
        self.add_layers(blocks)
        self.memory_format = torch.contiguous_format  # of the conv weights; inputs are converted to match
        with torch.no_grad():
            self.feature_dim = self.eval()(torch.zeros(1, 3, image_size, image_size)).shape[1]
        self.train()
        self.set_memory_format(memory_format)

    def add_layers(self, blocks):
        self.blocks = nn.ModuleList(blocks)

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """x normalized into the weights' layout, once it is checked to be what this encoder was trained on (a uint8
        image gives features 255x too large, another size another network's: both refused in one line)."""
        size = self.image_size
        if not x.is_floating_point():
            raise InputError(f"the encoder takes float images in [0, 1], got {x.dtype}: divide by 255, or make each "
                             f"image with encoder.transform(path or PIL image)")
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != size or x.shape[3] != size:
            raise InputError(f"the encoder takes (N, 3, {size}, {size}) images, got {tuple(x.shape)}: make each "
                             f"image with encoder.transform(path or PIL image), which resizes and crops as training did")
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def block_features(self, x: torch.Tensor) -> list:
        """Feature maps after each conv block (named in self.block_names)."""
        x = self.normalized(x)
        maps = []
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block_features(x)[-1]
        return x.flatten(1) if self.pool == "flatten" else x.mean(dim=(2, 3))

    def transform(self, image) -> torch.Tensor:
        """A PIL image or an image file's path -> the (3, S, S) float tensor in [0, 1] this encoder takes, decoded as
        training decodes its files (RGB, shorter side resized, centre-cropped); stack several for a batch."""
        return torch.from_numpy(decode_image(image, self.image_size).copy()).permute(2, 0, 1).float().div_(255)

    def set_memory_format(self, memory_format) -> "Encoder":
        """The layout of the conv weights and of the maps (NCHW: torch.contiguous_format; NHWC:
        torch.channels_last); only speed depends on it. build_encoder chooses it per model (MODELS)."""
        self.to(memory_format=memory_format)
        self.memory_format = memory_format
        return self

    def config(self) -> dict:
        stem = {"stem": self.stem} if self.stem else {}  # what load_encoder rebuilds, for models with a stem choice
        return {"model": self.name, "image_size": self.image_size, "feature_dim": self.feature_dim,
                "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist(), **stem}

    def torchvision_form(self):
        """(the Python lines that rebuild this network from torchvision, {torchvision name: weight}), or None for a
        network torchvision does not have (simple_cnn, nin)."""
        spec = model_spec(self.name)
        if not spec.torchvision_builder:
            return None
        renamed = {}
        for key, value in self.state_dict().items():
            prefix = next((p for p in RESNET_TORCHVISION_NAMES if key.startswith(p)), None)
            if prefix:
                renamed[RESNET_TORCHVISION_NAMES[prefix] + key[len(prefix):]] = value
        return torchvision_models.resnet_lines(spec.torchvision_builder, self.stem), renamed


class TorchvisionEncoder(Encoder):
    """A torchvision classification model (torchvision_models.build), its classifier removed: its own forward gives
    the pooled features; its named stages' output maps, caught by forward hooks, are its blocks."""

    def __init__(self, name: str, net: nn.Module, stages: list, lines: list, image_size: int, mean=None, std=None,
                 memory_format=torch.channels_last, stem=None):
        self.stage_paths, self.lines = [path for _, path in stages], lines
        super().__init__(name, net, "net", image_size, mean, std, [n for n, _ in stages] or ["features"],
                         memory_format, stem)

    def add_layers(self, net):
        self.net = net

    def block_features(self, x: torch.Tensor) -> list:
        x = self.normalized(x)
        if not self.stage_paths:  # the pooled features as a 1x1 map, for evaluate.py's per-block protocol
            return [self.net(x).flatten(1)[:, :, None, None]]
        maps = {}
        hooks = [self.net.get_submodule(path).register_forward_hook(
            lambda module, inputs, output, path=path: maps.__setitem__(path, output)) for path in self.stage_paths]
        try:
            self.net(x)
        finally:
            for hook in hooks:
                hook.remove()
        return [maps[path] for path in self.stage_paths]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalized(x)).flatten(1)

    def torchvision_form(self):
        return self.lines, {k[len("net."):]: v for k, v in self.state_dict().items() if k.startswith("net.")}


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


# The CIFAR stem up to this size (CIFAR's 32 px, Tiny-ImageNet's 64), torchvision's above (STL-10's 96, ImageNet's
# 224), as solo-learn and lightly do: the CIFAR stem at 224 px costs 15x torchvision's FLOPs (docs/models.md).
CIFAR_STEM_MAX_SIZE = 64
RESNET_STEMS = {"cifar": "the CIFAR stem (3x3 conv, stride 1, no max-pool)",
                "imagenet": f"torchvision's stem (7x7 conv, stride 2, max-pool; the CIFAR one up to "
                            f"{CIFAR_STEM_MAX_SIZE} px)"}


def resnet18_stem(image_size: int) -> str:
    return "cifar" if image_size <= CIFAR_STEM_MAX_SIZE else "imagenet"


def resnet_blocks(builder, stem: str) -> list:
    """torchvision's ResNet (builder: resnet18, resnet50) with the given stem (RESNET_STEMS): "cifar" keeps the
    image's size into layer1, "imagenet" (torchvision's conv1, bn1, relu, maxpool) a quarter of its side."""
    net = builder()
    if stem == "cifar":
        first = nn.Sequential(nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False), net.bn1, net.relu)
    elif stem == "imagenet":
        first = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    else:
        raise UserError(f"unknown resnet stem {stem!r}: choose one of {', '.join(RESNET_STEMS)}")
    return [first, net.layer1, net.layer2, net.layer3, net.layer4]


# A built-in ResNet's parameter names -> torchvision's (the first block is the stem: its conv and batch norm).
RESNET_TORCHVISION_NAMES = {"blocks.0.0.": "conv1.", "blocks.0.1.": "bn1.",
                            **{f"blocks.{i}.": f"layer{i}." for i in range(1, 5)}}


def simple_cnn_blocks() -> list:
    """The tutorial's SimpleCNN convolutions; its features are the flattened last map (4096-d at 32 px).

    The tutorial's conv, relu, max-pool, with the max-pool first: max-pooling commutes with relu (max(relu(a), relu(b))
    = relu(max(a, b))), so maps and gradients are the same, but relu and its backward run on a quarter of the
    values (bench/RESULTS.md). The parameter names are the tutorial layout's (blocks.N.0.*)."""
    return [nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(inplace=True)),
            nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(inplace=True))]


# RotNet's recipe (SGD Nesterov, lr 0.1, step schedule): the default; explicit options always win.
ROTNET_RECIPE = {"optimizer": "sgd", "lr": 0.1, "schedule": "step"}
# The tutorial's simple_cnn has no batch norm, and with RotNet's recipe it learned nothing in an epoch on CIFAR-10
# (k-NN 0.507 against 0.509 untrained), where the tutorial's own Adam at 1e-3 gave 0.542.
TUTORIAL_RECIPE = {"optimizer": "adamw", "lr": 1e-3, "schedule": "constant"}


@dataclass(frozen=True)
class ModelSpec:
    blocks: Callable[..., list]  # the conv blocks, probed one by one by evaluate.py; given the stem if `stem` is set
    pool: str  # "flatten": the last map flattened (the tutorial's); "avg": global average pooling
    block_names: Optional[list] = None  # default block1..blockN
    # The layout it is built in, chosen by measurement (bench/RESULTS.md): channels_last where it is not slower,
    # which on GPUs is what tensor cores want for bf16/fp16 convolutions. One choice for every device, so no
    # caller branches on it.
    memory_format: torch.memory_format = torch.channels_last
    recipe: dict = field(default_factory=lambda: dict(ROTNET_RECIPE))  # optimizer, lr, schedule defaults
    stem: Optional[Callable[[int], str]] = None  # the stem an image size gets; None: one network at every size
    # The stem of exports and checkpoints written before their config.json recorded it (at every image size).
    unrecorded_stem: Optional[str] = None
    torchvision_builder: Optional[str] = None  # the torchvision builder of the same network (RESNET_TORCHVISION_NAMES)


RESNET_BLOCK_NAMES = ["stem", "layer1", "layer2", "layer3", "layer4"]


MODELS = {
    "simple_cnn": ModelSpec(simple_cnn_blocks, "flatten", recipe=TUTORIAL_RECIPE),  # the tutorial's network
    "resnet18": ModelSpec(functools.partial(resnet_blocks, resnet18), "avg", RESNET_BLOCK_NAMES, stem=resnet18_stem,
                          unrecorded_stem="cifar", torchvision_builder="resnet18"),
    # The standard ImageNet backbone of SSL papers, in resnet18's layout; its recipe is resnet18's (RotNet's).
    "resnet50": ModelSpec(functools.partial(resnet_blocks, resnet50), "avg", RESNET_BLOCK_NAMES, stem=resnet18_stem,
                          torchvision_builder="resnet50"),
    "nin": ModelSpec(nin_blocks, "avg"),  # NIN's block1..block4 are the paper's conv blocks 1-4
}


# torchvision's transformers learn with AdamW, not SGD (ViT, Swin, MaxViT; ConvNeXt too, with layer norm).
ADAMW_RECIPE = {"optimizer": "adamw", "lr": 5e-4, "schedule": "cosine"}
ADAMW_FAMILIES = ("vit_", "swin_", "maxvit_", "convnext_")


def model_spec(model: str) -> ModelSpec:
    if model.startswith(torchvision_models.PREFIX):
        name = torchvision_models.check_name(model)
        recipe = ADAMW_RECIPE if name.startswith(ADAMW_FAMILIES) else ROTNET_RECIPE
        return ModelSpec(None, "net", recipe=dict(recipe),
                         stem=lambda size: torchvision_models.stem_of(model, size, CIFAR_STEM_MAX_SIZE))
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}: choose one of {', '.join(MODELS)}, or torchvision:NAME (any "
                        f"torchvision classification model, e.g. torchvision:efficientnet_b0)")
    return MODELS[model]


def stem_for(model: str, image_size: int) -> Optional[str]:
    """The stem build_encoder gives `model` at `image_size` (None for a model without a stem choice)."""
    spec = model_spec(model)
    return spec.stem(image_size) if spec.stem else None


def build_encoder(model: str, image_size: int = 32, mean=None, std=None, memory_format=None, stem=None) -> Encoder:
    """memory_format: None for the model's own; the benchmark's tutorial pipeline asks for the tutorial's NCHW.
    stem: None for the one the image size gets (stem_for); an export's recorded one when it is rebuilt."""
    spec = model_spec(model)
    stem = (stem or stem_for(model, image_size)) if spec.stem else None
    if model.startswith(torchvision_models.PREFIX):
        net, stages, lines = torchvision_models.build(model, image_size, stem)
        try:  # the first forward, which measures the features, is where a size too small fails
            return TorchvisionEncoder(model, net, stages, lines, image_size, mean, std,
                                      memory_format or spec.memory_format, stem)
        except (RuntimeError, ValueError, AssertionError) as e:
            raise torchvision_models.too_small(model, image_size, e) from e
    blocks = spec.blocks(stem) if spec.stem else spec.blocks()
    return Encoder(model, blocks, spec.pool, image_size, mean, std, spec.block_names,
                   memory_format or spec.memory_format, stem)


def recorded_stem(config: dict) -> Optional[str]:
    """The stem of the network an export's or a checkpoint's config.json (its "model" and "image_size") was saved
    from: its "stem", or for one written before that was recorded, the model's unrecorded_stem."""
    return config.get("stem", model_spec(config["model"]).unrecorded_stem)


def stem_refusal(what: str, config: dict, now: str, then: str) -> UserError:
    """One line for a saved network whose stem is not `now`, the one this version builds at its image size."""
    old = recorded_stem(config)
    stems = torchvision_models.STEMS if config["model"].startswith(torchvision_models.PREFIX) else RESNET_STEMS
    return UserError(f"{what} holds {config['model']} with {stems.get(old, old)} at {config['image_size']} px, "
                     f"where this version builds {stems.get(now, now)}: {then}")


class FeatureLinear(nn.Linear):
    """nn.Linear (the same parameters) that also takes a flattening encoder's last map as it is: Linear on
    map.flatten(1) is one convolution whose kernel covers the whole map, the same sums in another order. On CPU
    oneDNN runs that convolution about twice as fast as Linear's BLAS matmul (bench/RESULTS.md), and a
    channels_last map needs no copy into (C, H, W) order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return F.conv2d(x, self.weight.view(self.out_features, *x.shape[1:]), self.bias).flatten(1)
        return super().forward(x)


def mlp(dims: list, batch_norm: bool = False, last_batch_norm: bool = False) -> nn.Sequential:
    """Linear (+ BatchNorm1d) + ReLU between every two widths of `dims`, a Linear last (+ a BatchNorm1d without
    affine parameters if batch_norm and last_batch_norm: SimSiam's projector); a Linear followed by batch norm has
    no bias. The first layer takes a flattening encoder's map too (FeatureLinear)."""
    layers = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        normalized = batch_norm and (last_batch_norm or not last)
        layers.append((FeatureLinear if i == 0 else nn.Linear)(d_in, d_out, bias=not normalized))
        if normalized:
            layers.append(nn.BatchNorm1d(d_out, affine=not last))
        if not last:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class EncoderWithHead(nn.Module):
    def __init__(self, encoder: Encoder, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head
        first = head[0] if isinstance(head, nn.Sequential) else getattr(head, "first_layer", head)
        # The encoder's features are its last map flattened: a FeatureLinear takes the map itself.
        self.head_takes_map = encoder.pool == "flatten" and isinstance(first, FeatureLinear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head_takes_map:
            return self.head(self.encoder.block_features(x)[-1])
        return self.head(self.encoder(x))


# ------------------------------------------------------------------------------------------- export
TORCHVISION_WEIGHTS = "torchvision.safetensors"


def save_encoder(encoder: Encoder, directory: str, **extra) -> None:
    """The encoder's weights and config, as one folder that replaces `directory` once complete (files.WriteFailed
    if it cannot be written: then `directory` is as it was). For a network torchvision has, also its weights under
    torchvision's names (TORCHVISION_WEIGHTS) and, in config.json's "torchvision", the lines that rebuild it."""
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    form = encoder.torchvision_form()
    plain = {}
    if form:
        lines, weights = form
        plain = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        extra = {**extra, "torchvision": {"weights": TORCHVISION_WEIGHTS, "build": lines,
                                          "input": "float RGB in [0, 1], normalized by mean and std"}}
    config = json.dumps({**encoder.config(), **extra}, indent=2)

    def write(folder):
        save_file(state, os.path.join(folder, "encoder.safetensors"))
        if plain:
            save_file(plain, os.path.join(folder, TORCHVISION_WEIGHTS))
        with open(os.path.join(folder, "config.json"), "w") as f:
            f.write(config)
    files.write_atomically(directory, write, files.tensor_bytes(state) + files.tensor_bytes(plain) + len(config),
                           folder=True)


def load_encoder(path: str, device="cpu") -> Encoder:
    """Rebuilds an exported encoder from OUTPUT_DIR/final (or the path of a file inside it), in eval mode."""
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    config_path = os.path.join(directory, "config.json")
    if not os.path.exists(config_path):
        raise UserError(f"{directory!r} has no config.json: pass the final/ folder a training run wrote")
    with open(config_path) as f:
        config = json.load(f)
    # The stem it was trained with; one exported before the stem was recorded had the model's unrecorded_stem.
    encoder = build_encoder(config["model"], config["image_size"], config["mean"], config["std"],
                            stem=recorded_stem(config))
    encoder.load_state_dict(load_file(os.path.join(directory, "encoder.safetensors")))
    return encoder.to(device).eval()
