"""LARS (You, Gitman & Ginsburg 2017), as solo-learn's solo/utils/lars.py, and the parameter groups it is given:
weights adapted per layer, biases and normalization parameters excluded."""
import torch

# Modules all of whose parameters are excluded from adaptation and weight decay (solo-learn's exclude_bias_n_norm).
NORM_MODULES = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step per parameter tensor is scaled by a trust ratio, from "Large Batch Training of
    Convolutional Networks" (You, Gitman & Ginsburg 2017, https://arxiv.org/abs/1708.03888), written as solo-learn's
    solo/utils/lars.py (from Lightning Bolts) writes it, momentum in PyTorch's convention:

        v <- momentum * v + r * (g + wd * w),   r = eta * ||w|| / (||g|| + wd * ||w|| + eps),   w <- w - lr * v

    clip_lr: r becomes min(r / lr, 1) (the step's lr is then min(eta * ||w|| / ..., lr)), as solo-learn's recipes.
    A tensor whose ||w|| or ||g|| is 0, and every parameter of a group with "lars_exclude": True (biases,
    normalization, a classifier trained alongside), gets plain SGD with momentum: r = 1 and no weight decay."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02,
                 clip_lr: bool = False, eps: float = 1e-8):
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"LARS needs lr, momentum, weight_decay >= 0 and eta > 0 (got {lr}, {momentum}, "
                             f"{weight_decay}, {eta})")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      clip_lr=clip_lr, eps=eps, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if not group["lars_exclude"]:
                    update = self.adapted(param, group)
                buffer = self.state[param].get("momentum_buffer")
                if buffer is None:
                    buffer = self.state[param]["momentum_buffer"] = update.clone()
                else:
                    buffer.mul_(group["momentum"]).add_(update)
                param.add_(buffer, alpha=-group["lr"])
        return loss

    @staticmethod
    def adapted(param, group) -> torch.Tensor:
        """r * (g + wd * w) where ||w|| and ||g|| are both > 0, else g (without a host sync per tensor)."""
        grad, weight_decay = param.grad, group["weight_decay"]
        param_norm, grad_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(grad)
        trust_ratio = group["eta"] * param_norm / (grad_norm + weight_decay * param_norm + group["eps"])
        if group["clip_lr"] and group["lr"] > 0:  # at lr 0 nothing moves: the unclipped ratio is as good
            trust_ratio = torch.clamp(trust_ratio / group["lr"], max=1.0)
        adapted = grad.add(param, alpha=weight_decay).mul_(trust_ratio)
        return torch.where((param_norm > 0) & (grad_norm > 0), adapted, grad)


def parameter_groups(model, weight_decay: float) -> list:
    """The model's parameters that require grad, as LARS's groups: weights (adapted, decayed), then biases and every
    parameter of a normalization module (plain SGD with momentum, no weight decay); an empty group is left out."""
    excluded = {id(p) for module in model.modules() if isinstance(module, NORM_MODULES)
                for p in module.parameters(recurse=False)}
    excluded |= {id(p) for name, p in model.named_parameters() if p.ndim == 1 and name.rsplit(".", 1)[-1] == "bias"}
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trained if id(p) not in excluded]},
              {"params": [p for p in trained if id(p) in excluded], "weight_decay": 0.0, "lars_exclude": True}]
    return [group for group in groups if group["params"]]  # as solo-learn's, no empty group
