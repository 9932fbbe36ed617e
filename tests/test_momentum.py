"""ssl_scripts/models/momentum.py: the momentum (EMA) copy of BYOL's target and MoCo's key encoder, and BYOL's
cosine schedule of its momentum."""
import math

import pytest
import torch
import torch.nn as nn

from ssl_scripts.models.momentum import MomentumCopy, cosine_momentum


def online_modules():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU())
    projector = nn.Linear(4, 2)
    return encoder.double(), projector.double()


def on_eighths(module, offset):
    """Parameters on a grid of eighths, so m * copy + (1 - m) * online with m = 3/4 is exact in any order."""
    with torch.no_grad():
        for i, parameter in enumerate(module.parameters()):
            parameter.copy_(torch.arange(parameter.numel(), dtype=parameter.dtype).view_as(parameter) / 8
                            + offset + i)


def test_the_copy_is_frozen_and_computes_the_online_modules_in_order():
    encoder, projector = online_modules()
    momentum = MomentumCopy(encoder=encoder, projector=projector)
    assert list(momentum.copies) == ["encoder", "projector"]
    assert all(not p.requires_grad for p in momentum.parameters()) and len(list(momentum.parameters())) == 6
    assert all(p.requires_grad for p in [*encoder.parameters(), *projector.parameters()])  # the online ones train
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(momentum(x), projector(encoder(x)), rtol=0, atol=0)
    assert momentum(x).grad_fn is None  # no graph reaches the copy, even outside no_grad


def test_the_copy_is_independent_of_the_online_modules_until_updated():
    encoder, projector = online_modules()
    momentum = MomentumCopy(encoder=encoder, projector=projector)
    before = {k: v.clone() for k, v in momentum.state_dict().items()}
    online = [*encoder.parameters(), *projector.parameters()]
    assert not {p.data_ptr() for p in online} & {p.data_ptr() for p in momentum.parameters()}
    with torch.no_grad():
        for p in online:
            p.add_(1.0)
    encoder[1].running_mean.add_(3.0)
    for name, value in momentum.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("m", [0.75, 0.0, 1.0])
def test_update_is_m_copy_plus_one_minus_m_online_exactly_and_leaves_buffers(m):
    encoder, projector = online_modules()
    momentum = MomentumCopy(encoder=encoder, projector=projector)
    on_eighths(momentum.copies["encoder"], 0.0)
    on_eighths(momentum.copies["projector"], -2.0)
    on_eighths(encoder, 5.0)
    on_eighths(projector, 9.0)
    momentum.copies["encoder"][1].running_var.fill_(7.0)  # the copy's own statistics, not the online ones
    encoder[1].running_mean.fill_(-4.0)
    copied = {k: v.clone() for k, v in momentum.copies.named_parameters()}
    buffers = {k: v.clone() for k, v in momentum.copies.named_buffers()}
    online = {**{f"encoder.{k}": v for k, v in encoder.named_parameters()},
              **{f"projector.{k}": v for k, v in projector.named_parameters()}}
    momentum.update(m, encoder=encoder, projector=projector)
    for name, parameter in momentum.copies.named_parameters():
        assert torch.equal(parameter, m * copied[name] + (1 - m) * online[name]), name
        assert not parameter.requires_grad
    for name, buffer in momentum.copies.named_buffers():
        assert torch.equal(buffer, buffers[name]), name


def test_update_moves_only_the_named_modules_and_refuses_a_different_one():
    encoder, projector = online_modules()
    momentum = MomentumCopy(encoder=encoder, projector=projector)
    kept = momentum.copies["projector"].weight.clone()
    with torch.no_grad():
        encoder[0].weight.add_(1.0)
        projector.weight.add_(1.0)
    momentum.update(0.5, encoder=encoder)
    assert torch.equal(momentum.copies["projector"].weight, kept)
    assert not torch.equal(momentum.copies["encoder"][0].weight, encoder[0].weight)
    with pytest.raises(ValueError):  # a module of another shape than the copy's: not silently half-updated
        momentum.update(0.5, projector=nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2)).double())


def test_cosine_momentum_runs_from_base_at_step_0_to_final_at_the_last_step():
    base, final, total = 0.99, 1.0, 1000
    assert cosine_momentum(base, final, 0, total) == base
    assert cosine_momentum(base, final, total, total) == final
    assert cosine_momentum(base, final, 2 * total, total) == final  # beyond the planned steps it stays there
    # BYOL (Grill et al. 2020, section 3.2): tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2
    for step in (1, 250, 500, 777):
        byol = 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2
        assert cosine_momentum(base, final, step, total) == pytest.approx(byol, abs=1e-15)
    assert cosine_momentum(base, final, 500, total) == pytest.approx((base + final) / 2, abs=1e-15)
    assert cosine_momentum(0.996, 0.999, 250, total) == pytest.approx(
        0.999 - 0.003 * (math.cos(math.pi / 4) + 1) / 2, abs=1e-15)  # a final under 1 (MoCo's recipe)
    values = [cosine_momentum(base, final, step, total) for step in range(total + 1)]
    assert values == sorted(values)
    assert cosine_momentum(0.9, 0.99, 0, 0) == 0.9  # no steps planned: no division by zero
