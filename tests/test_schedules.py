"""Learning-rate schedules (ssl_scripts/optim/schedules.py)."""
import pytest
import torch

from ssl_scripts.optim.schedules import CLASSIFIER_MILESTONES, make_scheduler


def learning_rates(steps, **options):
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    scheduler = make_scheduler(optimizer, steps, **options)
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return lrs


def test_step_schedule_follows_rotnet():
    lrs = learning_rates(200)
    assert lrs[0] == pytest.approx(0.1) and lrs[59] == pytest.approx(0.1)
    assert lrs[60] == pytest.approx(0.02) and lrs[120] == pytest.approx(0.004) and lrs[160] == pytest.approx(0.0008)


def test_the_classifiers_schedule_follows_rotnets_classifiers():
    lrs = learning_rates(50, milestones=CLASSIFIER_MILESTONES)  # RotNet: x0.2 after epochs 20, 40, 45 of 50
    assert lrs[19] == pytest.approx(0.1) and lrs[20] == pytest.approx(0.02)
    assert lrs[40] == pytest.approx(0.004) and lrs[45] == pytest.approx(0.0008)


def test_warm_up_then_cosine_over_the_steps_after_it():
    # solo-learn's LinearWarmupCosineAnnealingLR: the cosine starts at the peak where the warm-up ends
    lrs = learning_rates(100, schedule="cosine", warmup_steps=10)
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1) and lrs[10] == pytest.approx(0.1)
    assert lrs[55] == pytest.approx(0.05) and lrs[99] < 0.001


def test_a_static_lr_group_keeps_its_lr_while_the_others_follow_the_schedule():
    # SimSiam's predictor (the paper's section 4.4, solo-learn's static_lr)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.5, "static_lr": True}],
                                lr=0.1)
    scheduler = make_scheduler(optimizer, 20, schedule="cosine", warmup_steps=5)
    seen = []
    for _ in range(20):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert seen[0][0] == pytest.approx(0.02) and seen[-1][0] < 0.01
    assert all(static == 0.5 for _, static in seen)
