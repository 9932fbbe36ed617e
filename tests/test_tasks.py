"""A task is one file: this one defines, registers and trains a task of its own (was the image flipped
horizontally?) through the real loop, launched with `accelerate launch tests/test_tasks.py` on two processes,
stopped after a checkpoint and resumed. Nothing outside this file knows the task."""
import json

import pytest
import torch
import torch.nn.functional as F

from ssl_scripts.runtime import cli
from ssl_scripts.data import augment
from ssl_scripts.evaluation import frozen
from ssl_scripts import loop
from ssl_scripts.tasks import TASKS, register
from ssl_scripts.tasks.task import Batch, Task

pytestmark = pytest.mark.e2e


@register
class Flip(Task):
    name = "flip"
    description = "Predict whether an image was flipped horizontally (a task of the tests' own)."
    headline_metric = "eval/flip_acc"
    default_augment = "none"

    @classmethod
    def head(cls, args, encoder):
        return torch.nn.Linear(encoder.feature_dim, 2)

    def make_batch(self, indices, epoch):
        images = augment.augment(self.train_source[indices], self.args.augment)
        flipped = torch.rand(len(images), device=images.device) < 0.5
        return Batch(torch.where(flipped[:, None, None, None], images.flip(-1), images), flipped.long())

    def step(self, model, batch):
        logits = model(batch.inputs)
        return F.cross_entropy(logits, batch.targets), {"acc": (logits.argmax(1) == batch.targets).float().mean()}

    def evaluate(self, accelerator, model, labelled, between_batches=None):
        def predict(x):  # each test image as it is (label 0) and flipped (label 1)
            return torch.stack([model(x).argmax(1), model(x.flip(-1)).argmax(1)], dim=1)

        with frozen.evaluating(accelerator, model):
            predicted = frozen.map_batches(accelerator, predict, self.dataset.test_images,
                                               self.args.eval_batch_size, between_batches=between_batches).long().cpu()
        if not accelerator.is_main_process:
            return {}
        return {"eval/flip_acc": (predicted == torch.tensor([0, 1])).float().mean().item()}


def test_a_task_defined_in_one_file_trains_on_two_processes_and_resumes(tmp_path):
    from helpers import SMALL, accelerate_launch
    out = tmp_path / "flip"
    options = [*SMALL, "--checkpoint-every", "2", "--log-every", "2", "--output-dir", out]
    first = accelerate_launch("tests/test_tasks.py", *options, "--max-steps", "4", num_processes=2)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["steps"] == 4
    resumed = accelerate_launch("tests/test_tasks.py", *options, "--max-steps", "8", num_processes=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'step_00000004'} at step 4" in resumed.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 8 and results["world_size"] == 2
    assert 0 <= results["eval/flip_acc"] <= 1 and 0 <= results["eval/knn_acc"] <= 1  # its own and the loop's
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "flip" and config["augment"] == "none"  # its default
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in logged if "train/acc" in line] == [2, 4, 6, 8]  # its own train metric
    assert json.loads((out / "final" / "config.json").read_text())["task"] == "flip"


if __name__ == "__main__":
    cli.run(lambda: loop.train(TASKS["flip"]))
