"""A momentum (EMA) copy of named modules, BYOL's target and MoCo's key encoder: never in an optimizer, moved toward
the online modules after every optimizer step, identically on every process (their weights are), and saved with
the model (it is a submodule of the head)."""
import copy
import math

import torch
import torch.nn as nn


class MomentumCopy(nn.Module):
    """Frozen copies of `modules` (name -> module), applied in their order: forward(x) = last(...(first(x)))."""

    def __init__(self, **modules: nn.Module):
        super().__init__()
        self.copies = nn.ModuleDict({name: copy.deepcopy(module) for name, module in modules.items()})
        self.copies.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.copies.values():
            x = module(x)
        return x

    @torch.no_grad()
    def update(self, momentum: float, **online: nn.Module) -> None:
        """copy = momentum * copy + (1 - momentum) * online, parameter by parameter (buffers, e.g. batch norm's
        running statistics, stay the copy's own, as in BYOL's and solo-learn's code)."""
        for name, module in online.items():
            for copied, trained in zip(self.copies[name].parameters(), module.parameters(), strict=True):
                copied.lerp_(trained.detach(), 1 - momentum)


def cosine_momentum(base: float, final: float, step: int, total_steps: int) -> float:
    """BYOL's schedule: from `base` at step 0 to `final` at the last step, on a cosine
    (tau = final - (final - base) * (cos(pi * step / total) + 1) / 2)."""
    progress = min(1.0, step / max(1, total_steps))
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2
