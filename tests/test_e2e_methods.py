"""Each method of the Siamese family run for real through `accelerate launch` (CPU, gloo for two processes): the
same first steps on one process and on two with the same global batch, and a run killed at a hold point and resumed
ending bitwise as one that never stopped, its momentum copy and queue included."""
import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import SMALL, accelerate_command, accelerate_launch, killed_when_held

FAMILY = ("simsiam", "byol", "mocov2", "barlowtwins", "vicreg")
# Small heads (the recipes' 2048-4096 widths would make each checkpoint hundreds of MB), without batch norm (its
# statistics are per process), no augmentation (its draws are per process by design); one SGD step (Nesterov,
# momentum 0.9, no weight decay) moves a weight by lr * 1.9 * its gradient. A queue shorter than two global batches
# wraps around at step 2.
OPTIONS = [*SMALL, "--augment", "none", "--deterministic", "--no-head-bn", "--projector-hidden", "64",
           "--predictor-hidden", "32", "--embedding-dim", "32", "--queue-size", "48", "--optimizer", "sgd",
           "--lr", "0.01", "--weight-decay", "0", "--warmup-epochs", "0", "--log-every", "1", "--skip-eval"]
LR = 0.01


def checkpoint(out, step):
    return load_file(str(out / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


def losses(out):
    return [json.loads(line)["train/loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if '"train/loss"' in line]


@pytest.mark.e2e
@pytest.mark.parametrize("method", FAMILY)
def test_one_process_and_two_train_alike_and_a_killed_run_resumes_bitwise(tmp_path, method):
    options = [*OPTIONS, "--method", method, "--max-steps", "6"]
    whole, two, cut = tmp_path / "whole", tmp_path / "two", tmp_path / "cut"
    result = accelerate_launch("train_siamese.py", *options, "--checkpoint-every", "1", "--keep-checkpoints", "6",
                               "--output-dir", whole)
    assert result.returncode == 0, result.stderr[-3000:]
    result = accelerate_launch("train_siamese.py", *options, "--max-steps", "2", "--checkpoint-every", "1",
                               "--output-dir", two, num_processes=2)
    assert result.returncode == 0, result.stderr[-3000:]

    # Statistics, negatives and queued keys of the global batch: the loss of steps 1 and 2 (MoCo's second uses the
    # keys queued at the first), the step-1 weights, momentum copy and queue as on one process.
    assert losses(two) == pytest.approx(losses(whole)[:2], abs=1e-5)
    one_step, two_step = checkpoint(whole, 1), checkpoint(two, 1)
    assert set(one_step) == set(two_step)
    for name in one_step:
        assert (one_step[name].float() - two_step[name].float()).abs().max().item() / (LR * 1.9) < 1e-5, name
    moved = [name for name in one_step if not torch.equal(one_step[name], checkpoint(whole, 2)[name])]
    assert any("momentum" in name for name in moved) == (method in ("byol", "mocov2"))  # the copy follows
    assert any(name.startswith("head.queue") for name in moved) == (method == "mocov2")

    killed_when_held(accelerate_command("train_siamese.py", *options, "--checkpoint-every", "3", "--output-dir", cut),
                     cut, "step@5")  # after the checkpoint of step 3
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["step_00000003"]
    resumed = accelerate_launch("train_siamese.py", *options, "--checkpoint-every", "3", "--output-dir", cut)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-3000:]
    final_whole, final_cut = checkpoint(whole, 6), checkpoint(cut, 6)
    assert all(torch.equal(final_whole[name], final_cut[name]) for name in final_whole)
