"""The optimizers (ssl_scripts/optim/): LARS against its update rule written out here, its parameter groups, and
what make_optimizer hands every --optimizer."""
import copy

import pytest
import torch

from ssl_scripts import UserError
from ssl_scripts.optim.lars import LARS, parameter_groups
from ssl_scripts.optim.optimizers import OPTIMIZERS, make_optimizer
from helpers import parse

MOMENTUM, WEIGHT_DECAY, ETA, EPS = 0.9, 0.1, 0.02, 1e-8


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))


def backward(model, step):
    generator = torch.Generator().manual_seed(step)
    inputs, targets = torch.randn(16, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator)
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(inputs), targets).backward()


def by_hand(weights, velocities, lr, clip_lr, excluded):
    """One step of solo-learn's LARS (solo/utils/lars.py) with momentum in PyTorch's convention, in place."""
    for name, w in weights.items():
        g = w.grad
        if name in excluded or w.norm() == 0 or g.norm() == 0:
            update = g  # plain SGD with momentum, no weight decay
        else:
            local_lr = ETA * w.norm() / (g.norm() + WEIGHT_DECAY * w.norm() + EPS)
            if clip_lr:
                local_lr = min(local_lr / lr, 1.0)
            update = local_lr * (g + WEIGHT_DECAY * w)
        velocities[name] = update.clone() if name not in velocities else MOMENTUM * velocities[name] + update
        with torch.no_grad():
            w -= lr * velocities[name]


@pytest.mark.parametrize("clip_lr, lrs", [(False, (0.5, 0.25, 0.1)), (True, (0.5, 0.25, 0.1)),
                                          (True, (1e-3, 1e-3, 1e-3))])  # the last: every ratio clipped to 1
def test_lars_steps_as_its_rule_weights_adapted_biases_and_batch_norm_plain_sgd(clip_lr, lrs):
    model = tiny_model()
    reference = copy.deepcopy(model)
    optimizer = LARS(parameter_groups(model, WEIGHT_DECAY), lr=lrs[0], momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                     eta=ETA, clip_lr=clip_lr)
    weights, velocities = dict(reference.named_parameters()), {}
    excluded = {"0.bias", "1.weight", "1.bias", "2.bias"}
    for step, lr in enumerate(lrs):  # the lr changes as a schedule changes it: applied outside the momentum
        backward(model, step)
        backward(reference, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        by_hand(weights, velocities, lr, clip_lr, excluded)
        for name, param in model.named_parameters():
            torch.testing.assert_close(param, weights[name], rtol=1e-5, atol=1e-7, msg=f"{name} at step {step}")
    # Against SGD with the same groups: the same where every ratio clips to 1, else other steps for the weights.
    sgd_model = tiny_model()
    sgd = torch.optim.SGD(parameter_groups(sgd_model, WEIGHT_DECAY), lr=lrs[0], momentum=MOMENTUM,
                          weight_decay=WEIGHT_DECAY)
    for step, lr in enumerate(lrs):
        backward(sgd_model, step)
        for group in sgd.param_groups:
            group["lr"] = lr
        sgd.step()
    sgd_step, lars_step = (m[0].weight - tiny_model()[0].weight for m in (sgd_model, model))
    assert torch.allclose(sgd_step, lars_step, rtol=1e-3) == (lrs[0] == 1e-3)


def test_lars_gives_a_zero_weight_its_plain_gradient_step_as_solo_learn():
    weight = torch.nn.Parameter(torch.zeros(3, 2))
    weight.grad = torch.ones(3, 2)
    LARS([weight], lr=0.1, weight_decay=WEIGHT_DECAY).step()
    torch.testing.assert_close(weight.detach(), torch.full((3, 2), -0.1))


def test_parameter_groups_exclude_biases_and_every_normalization_parameter():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 4, 1, bias=False),
        torch.nn.GroupNorm(2, 4), torch.nn.Flatten(), torch.nn.Linear(4, 5), torch.nn.LayerNorm(5),
        torch.nn.Linear(5, 2))
    model[7].weight.requires_grad_(False)  # frozen: in no group
    main, excluded = parameter_groups(model, weight_decay=5e-4)
    names = {id(p): name for name, p in model.named_parameters()}
    assert {names[id(p)] for p in main["params"]} == {"0.weight", "2.weight", "5.weight"}
    assert {names[id(p)] for p in excluded["params"]} == {"0.bias", "1.weight", "1.bias", "3.weight", "3.bias",
                                                          "5.bias", "6.weight", "6.bias", "7.bias"}
    assert (excluded["weight_decay"], excluded["lars_exclude"]) == (0.0, True)
    assert "weight_decay" not in main and not main.get("lars_exclude")  # the optimizer's --weight-decay


class ModelWithMomentumCopy(torch.nn.Module):
    """A network, its momentum copy (never stepped) and an online classifier trained alongside."""

    def __init__(self):
        super().__init__()
        self.online = tiny_model()
        self.momentum_copy = copy.deepcopy(self.online).requires_grad_(False)
        self.classifier = torch.nn.Linear(3, 10)


@pytest.mark.parametrize("name", tuple(OPTIMIZERS))
def test_make_optimizer_steps_only_what_requires_grad_and_extra_groups_keep_their_lr(name):
    model = ModelWithMomentumCopy()
    args = parse(["--optimizer", name, "--lr", "0.1"])
    extra = {"params": model.classifier.parameters(), "lr": 0.3, "weight_decay": 0.0, "lars_exclude": True}
    optimizer = make_optimizer(args, model, extra_groups=[extra])
    stepped = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(stepped) == len({id(p) for p in stepped})  # each parameter in one group
    assert {id(p) for p in stepped} == {id(p) for p in [*model.online.parameters(), *model.classifier.parameters()]}
    classifier_group = optimizer.param_groups[-1]
    assert {id(p) for p in classifier_group["params"]} == {id(p) for p in model.classifier.parameters()}
    assert (classifier_group["lr"], classifier_group["weight_decay"]) == (0.3, 0.0)
    assert all(group["lr"] == 0.1 for group in optimizer.param_groups[:-1])
    if name == "lars":
        assert classifier_group["lars_exclude"] and optimizer.defaults["eta"] == 0.02  # --lars-eta's default
        assert [group["lars_exclude"] for group in optimizer.param_groups] == [False, True, True]
    else:
        assert len(optimizer.param_groups) == 2


def test_lars_eta_must_be_positive():
    with pytest.raises(UserError, match="--lars-eta must be > 0"):
        parse(["--lars-eta", "0"])
