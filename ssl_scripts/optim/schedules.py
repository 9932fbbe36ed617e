"""Learning-rate schedules, per optimizer step: the training scripts' (and their options) and the evaluation
classifiers'."""
import math

import torch

from ssl_scripts.models.options import recipe_defaults

# --schedule's choices.
SCHEDULES = {"step": "x0.2 at 30%, 60%, 80% of training (RotNet's 60/120/160 of 200 epochs)",
             "cosine": "cosine decay to 0", "constant": "the same lr throughout"}
# RotNet's pretraining: lr x0.2 after 60, 120 and 160 of 200 epochs.
PRETRAINING_MILESTONES = (0.3, 0.6, 0.8)
# RotNet's classifiers on frozen features: lr x0.2 after 20, 40 and 45 of 50 epochs.
CLASSIFIER_MILESTONES = (0.4, 0.8, 0.9)


def lr_factor(step: int, total_steps: int, schedule: str = "step", warmup_steps: int = 0,
              milestones=PRETRAINING_MILESTONES) -> float:
    """The factor of the base lr at `step` (0-based): linear warm-up, then step decay (x0.2 at each milestone,
    a fraction of total_steps), cosine (from the end of the warm-up to the last step), or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = step / max(1, total_steps)
    if schedule == "cosine":  # over the steps after the warm-up, as solo-learn's LinearWarmupCosineAnnealingLR
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "step":
        return 0.2 ** sum(progress >= m for m in milestones)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def make_scheduler(optimizer, total_steps: int, schedule: str = "step", warmup_steps: int = 0,
                   milestones=PRETRAINING_MILESTONES):
    """The schedule for every parameter group but those with "static_lr" (kept at their lr)."""
    def factor(step):
        return lr_factor(step, total_steps, schedule, warmup_steps, milestones)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [(lambda step: 1.0) if group.get("static_lr") else factor for group in optimizer.param_groups])


def add_options(group) -> None:
    """--schedule and --warmup-steps, in the optimization group (ssl_scripts/training/options.py)."""
    group.add_argument("--schedule", choices=tuple(SCHEDULES), default=None,
                       help="; ".join(f"{name}: {what}" for name, what in SCHEDULES.items()).replace("%", "%%")
                            + f" (default: the method's recipe, else the model's: {recipe_defaults('schedule')})")
    group.add_argument("--warmup-steps", type=int, default=None,
                       help="linear learning-rate warm-up, in optimizer steps (default: --warmup-epochs's)")
    group.add_argument("--warmup-epochs", type=float, default=None,
                       help="linear learning-rate warm-up, in epochs (default: the method's recipe, else 0); "
                            "--warmup-steps, if given, wins")
