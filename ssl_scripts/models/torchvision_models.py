"""Any torchvision classification model as an encoder (--model torchvision:NAME), and the torchvision form of an
exported encoder: the lines that rebuild its network from torchvision alone, and its weights under torchvision's
own names (what a user outside this project loads with load_state_dict(strict=True)).

A torchvision model is built by torchvision's own builder with weights=None, its classifier (the last nn.Linear)
replaced by nn.Identity, so its own forward gives its pooled features. Its stem follows the image size as
resnet18's does: at CIFAR_STEM_MAX_SIZE px and below, a ResNet gets the CIFAR stem (3x3 conv, stride 1, no
max-pool) and any other model with an overlapping strided first convolution gets that convolution at stride 1;
patch-embedding stems (ConvNeXt, Swin, ViT: kernel = stride) are kept. Every change is one line of Python,
recorded in the export so a plain torchvision user rebuilds the same network.
"""
import functools

import torch
import torch.nn as nn
import torchvision

from ssl_scripts import UserError

PREFIX = "torchvision:"
# What some builders need beyond weights=None at a given image size (the rest take none).
BUILDER_OPTIONS = {"vit_": lambda size: {"image_size": size}, "maxvit_": lambda size: {"input_size": (size, size)},
                   "googlenet": lambda size: {"aux_logits": False, "init_weights": True},
                   "inception_v3": lambda size: {"aux_logits": False, "init_weights": True}}
# Models whose stages give maps in another layout than (N, C, H, W): probed on their pooled features alone.
NO_STAGE_MAPS = ("swin_", "vit_", "maxvit_")
BARE_LAYERS = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.Dropout)


def names() -> list:
    return torchvision.models.list_models(module=torchvision.models)


# torchvision's MNASNet refuses a state dict without its version metadata, which safetensors files never carry (its
# _load_from_state_dict): its checkpoints and exports could not be loaded again.
REFUSED = {"mnasnet": "its weights cannot be loaded back from safetensors (torchvision's MNASNet requires a "
                      "version in the state dict's metadata)"}
# Applied right before the classifier outside a Sequential, so not found beside it (classifier()).
DROPOUT_BEFORE_FC = (torchvision.models.GoogLeNet, torchvision.models.Inception3)
STEMS = {"cifar": "the small-image stem (the first convolution at stride 1; a ResNet's 3x3, no max-pool)",
         "imagenet": "torchvision's stem"}


def check_name(model: str) -> str:
    """The torchvision name of --model torchvision:NAME, or one line naming how to find the valid ones."""
    name = model[len(PREFIX):]
    refused = next((why for start, why in REFUSED.items() if name.startswith(start)), None)
    if refused:
        raise UserError(f"--model {model} is not supported: {refused}; choose another torchvision model")
    if name not in names():
        raise UserError(f"torchvision has no classification model {name!r}: pass --model torchvision:NAME with a "
                        f"name of torchvision.models.list_models(module=torchvision.models), e.g. "
                        f"torchvision:resnet50, torchvision:efficientnet_b0")
    return name


def builder_options(name: str, image_size: int) -> dict:
    return next((options(image_size) for start, options in BUILDER_OPTIONS.items() if name.startswith(start)), {})


def python_path(module_path: str) -> str:
    """'features.0.0' -> 'model.features[0][0]': a module's path as the Python that reaches it."""
    return "model" + "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in module_path.split("."))


def _is_resnet(net: nn.Module) -> bool:
    return isinstance(net, torchvision.models.ResNet)


def small_image_stem(net: nn.Module) -> list:
    """The stem changes for small images, applied to net, as (module path, replacement, its Python) in order."""
    if _is_resnet(net):
        conv = nn.Conv2d(3, net.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        return [("conv1", conv, f"torch.nn.Conv2d(3, {conv.out_channels}, kernel_size=3, stride=1, padding=1, "
                                f"bias=False)"), ("maxpool", nn.Identity(), "torch.nn.Identity()")]
    path, first = next(((p, m) for p, m in net.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if first is None or first.stride == (1, 1) or first.kernel_size == first.stride:  # none, or a patch embedding
        return []
    k, c_in, c_out = first.kernel_size, first.in_channels, first.out_channels
    conv = nn.Conv2d(c_in, c_out, k, stride=1, padding=first.padding, dilation=first.dilation, groups=first.groups,
                     bias=first.bias is not None)
    return [(path, conv, f"torch.nn.Conv2d({c_in}, {c_out}, kernel_size={k}, stride=1, padding={first.padding}, "
                         f"dilation={first.dilation}, groups={first.groups}, bias={first.bias is not None})")]


def classifier(net: nn.Module) -> list:
    """The classifier's removal, as small_image_stem's changes: the last nn.Linear (and a dropout just before it in
    the same Sequential) replaced by nn.Identity."""
    linears = [p for p, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(net).__name__} has no linear classifier to remove (squeezenet's is a convolution): "
                        f"choose another --model torchvision:NAME")
    last = linears[-1]
    parent_path, _, child = last.rpartition(".")
    parent = net.get_submodule(parent_path)
    paths = [last]
    if isinstance(parent, nn.Sequential) and child.isdigit() and int(child) > 0 \
            and isinstance(parent[int(child) - 1], nn.Dropout):
        paths.insert(0, f"{parent_path}.{int(child) - 1}")
    if isinstance(net, DROPOUT_BEFORE_FC):
        paths.insert(0, "dropout")
    return [(p, nn.Identity(), "torch.nn.Identity()") for p in paths]


def stages(name: str, net: nn.Module) -> list:
    """(block name, module path) of the stages whose output maps evaluate.py probes, in forward order; [] for a
    model without named (N, C, H, W) stages (then only its pooled features are probed)."""
    if name.startswith(NO_STAGE_MAPS):
        return []
    if _is_resnet(net):
        return [("stem", "maxpool")] + [(f"layer{i}", f"layer{i}") for i in range(1, 5)]
    if isinstance(net, torchvision.models.RegNet):
        return [("stem", "stem")] + [(n, f"trunk_output.{n}") for n, _ in net.trunk_output.named_children()]
    if isinstance(net, torchvision.models.ShuffleNetV2):
        return [(n, n) for n in ("maxpool", "stage2", "stage3", "stage4", "conv5")]
    features = getattr(net, "features", None)
    if isinstance(features, nn.Sequential):
        # Stages, not bare layers: VGG's and AlexNet's features are layers one by one (then: after each pool),
        # DenseNet's begin and end with some.
        kept = [n for n, m in features.named_children() if not isinstance(m, BARE_LAYERS)]
        return [(f"features_{n}", f"features.{n}") for n in kept]  # no dots: names of probe modules
    return []


def build(model: str, image_size: int, stem: str):
    """(network, its stages, the Python lines that rebuild it from torchvision) of --model torchvision:NAME with
    the given stem ("cifar": small_image_stem applied; "imagenet": torchvision's)."""
    name = check_name(model)
    options = builder_options(name, image_size)
    net = get_model(name, image_size)
    arguments = "".join(f", {k}={v!r}" for k, v in options.items())
    lines = [f"model = torchvision.models.get_model({name!r}, weights=None{arguments})"]
    changes = (small_image_stem(net) if stem == "cifar" else []) + classifier(net)
    for path, module, python in changes:
        net.set_submodule(path, module)
        lines.append(f"{python_path(path)} = {python}")
    return net, stages(name, net), lines


def get_model(name: str, image_size: int) -> nn.Module:
    """torchvision's builder with weights=None, or one line where it cannot build for this image size."""
    try:
        return torchvision.models.get_model(name, weights=None, **builder_options(name, image_size))
    except (ValueError, AssertionError, TypeError) as e:
        raise too_small(name, image_size, e) from e


def too_small(name: str, image_size: int, error: Exception) -> UserError:
    problem = " ".join(str(error).split())[:200]
    return UserError(f"torchvision's {name.removeprefix(PREFIX)} cannot run on {image_size} px images ({problem}): choose another "
                     f"--image-size or --model")


@functools.lru_cache(maxsize=None)
def stem_of(model: str, image_size: int, small_max: int) -> str:
    """The stem a torchvision model gets at image_size: "cifar" up to small_max px where small_image_stem changes
    anything, else "imagenet" (torchvision's own)."""
    if image_size > small_max:
        return "imagenet"
    name = check_name(model)
    with torch.random.fork_rng(devices=[]):  # the caller's random stream untouched
        net = get_model(name, image_size)
        return "cifar" if small_image_stem(net) else "imagenet"


def resnet_lines(builder: str, stem: str) -> list:
    """The lines that rebuild a built-in ResNet encoder (resnet18, resnet50) from torchvision."""
    lines = [f"model = torchvision.models.{builder}()"]
    if stem == "cifar":
        with torch.random.fork_rng(devices=[]):
            lines += [f"{python_path(p)} = {python}" for p, _, python in
                      small_image_stem(getattr(torchvision.models, builder)())]
    return lines + ["model.fc = torch.nn.Identity()"]
