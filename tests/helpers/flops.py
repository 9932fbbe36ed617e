"""FLOPs of one forward pass, for the stem tests of tests/test_models.py and tests/test_torchvision_models.py."""
import torch


def forward_gflops(module, image_size):
    """GFLOP of one image's forward pass in eval mode (torch.utils.flop_counter.FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module.eval()(torch.rand(1, 3, image_size, image_size))
    return counter.get_total_flops() / 1e9
