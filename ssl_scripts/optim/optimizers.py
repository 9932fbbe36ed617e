"""The optimizers --optimizer names, and their options: a new one is a function here and an entry in OPTIMIZERS."""
import torch

from ssl_scripts.models.options import recipe_defaults


def sgd(parameters, args) -> torch.optim.Optimizer:
    """RotNet's: SGD with Nesterov momentum 0.9."""
    return torch.optim.SGD(parameters, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)


def adamw(parameters, args) -> torch.optim.Optimizer:
    """AdamW (the original tutorial's Adam, with decoupled weight decay)."""
    return torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay)


OPTIMIZERS = {"sgd": sgd, "adamw": adamw}


def make_optimizer(args, model) -> torch.optim.Optimizer:
    return OPTIMIZERS[args.optimizer](model.parameters(), args)


def add_options(group) -> None:
    """--optimizer, --lr and --weight-decay, in the optimization group (ssl_scripts/training/options.py)."""
    group.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default=None,
                       help=" ".join(f"{name}: {(fn.__doc__ or name).splitlines()[0]}"
                                     for name, fn in OPTIMIZERS.items())
                            + f" (default: the model's recipe, {recipe_defaults('optimizer')})")
    group.add_argument("--lr", type=float, default=None,
                       help=f"the peak learning rate (default: the model's recipe, {recipe_defaults('lr')})")
    group.add_argument("--weight-decay", type=float, default=None,
                       help="the optimizer's weight decay (default: the method's recipe, else 5e-4, RotNet's)")


def option_checks(args) -> list:
    """(ok, message) checks of add_options's options, the recipe's defaults decided (see config.require)."""
    return [(args.lr > 0, f"--lr must be > 0 (got {args.lr})"),
            (args.weight_decay >= 0, f"--weight-decay must be >= 0 (got {args.weight_decay})")]
