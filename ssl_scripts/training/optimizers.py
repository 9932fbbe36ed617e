"""The optimizers --optimizer names: a new one is a function here and an entry in OPTIMIZERS."""
import torch


def sgd(parameters, args) -> torch.optim.Optimizer:
    """RotNet's: SGD with Nesterov momentum 0.9."""
    return torch.optim.SGD(parameters, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)


def adamw(parameters, args) -> torch.optim.Optimizer:
    """AdamW (the original tutorial's Adam, with decoupled weight decay)."""
    return torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay)


OPTIMIZERS = {"sgd": sgd, "adamw": adamw}


def make_optimizer(args, model) -> torch.optim.Optimizer:
    return OPTIMIZERS[args.optimizer](model.parameters(), args)
