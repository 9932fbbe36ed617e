"""The optimizers --optimizer names, and their options: a new one is a function here and an entry in OPTIMIZERS."""
import torch

from ssl_scripts.models.options import recipe_defaults
from ssl_scripts.optim.lars import LARS, parameter_groups


def sgd(parameters, args) -> torch.optim.Optimizer:
    """RotNet's: SGD with Nesterov momentum 0.9."""
    return torch.optim.SGD(parameters, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)


def adamw(parameters, args) -> torch.optim.Optimizer:
    """AdamW (the original tutorial's Adam, with decoupled weight decay)."""
    return torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay)


def lars(parameters, args) -> torch.optim.Optimizer:
    """LARS (You et al. 2017): SGD whose step per layer is scaled by eta*||w||/||g||; bias and batch norm excluded
    (groups with "lars_exclude": True get plain SGD with momentum 0.9; see ssl_scripts/optim/lars.py); the trust
    ratio clipped to 1 / lr, as solo-learn's CIFAR recipes (clip_lr: True)."""
    return LARS(parameters, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay, eta=args.lars_eta,
                clip_lr=True)


OPTIMIZERS = {"sgd": sgd, "adamw": adamw, "lars": lars}


def make_optimizer(args, model, extra_groups=()) -> torch.optim.Optimizer:
    """--optimizer over the model's parameters that require grad (a momentum copy's never reach it), then
    extra_groups (dicts with params, lr, weight_decay, and any key of their own: e.g. an online classifier's, with
    "lars_exclude"), whose parameters the model's groups leave out. LARS splits the model's into adapted weights and
    excluded biases and norms."""
    extra = [{**group, "params": [p for p in group["params"] if p.requires_grad]} for group in extra_groups]
    if args.optimizer == "lars":
        groups = parameter_groups(model, args.weight_decay)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    in_extra = {id(p) for group in extra for p in group["params"]}
    groups = [{**group, "params": [p for p in group["params"] if id(p) not in in_extra]} for group in groups]
    return OPTIMIZERS[args.optimizer]([group for group in groups + extra if group["params"]], args)


def add_options(group) -> None:
    """--optimizer, --lr, --weight-decay and --lars-eta, in the optimization group (ssl_scripts/training/options.py)."""
    group.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default=None,
                       help=" ".join(f"{name}: {(fn.__doc__ or name).splitlines()[0]}"
                                     for name, fn in OPTIMIZERS.items())
                            + f" (default: the method's recipe, else the model's: {recipe_defaults('optimizer')})")
    group.add_argument("--lr", type=float, default=None,
                       help=f"the peak learning rate (default: the method's recipe, else the model's: "
                            f"{recipe_defaults('lr')})")
    group.add_argument("--weight-decay", type=float, default=None,
                       help="the optimizer's weight decay (default: the method's recipe, else 5e-4, RotNet's)")
    group.add_argument("--lars-eta", type=float, default=0.02,
                       help="--optimizer lars's trust coefficient eta (solo-learn's CIFAR recipes: 0.02)")


def option_checks(args) -> list:
    """(ok, message) checks of add_options's options, the recipe's defaults decided (see config.require)."""
    return [(args.lr > 0, f"--lr must be > 0 (got {args.lr})"),
            (args.weight_decay >= 0, f"--weight-decay must be >= 0 (got {args.weight_decay})"),
            (args.lars_eta > 0, f"--lars-eta must be > 0 (got {args.lars_eta})")]
