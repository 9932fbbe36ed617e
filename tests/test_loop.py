"""ssl_scripts/loop.py's train(), in-process on one CPU process: what it builds before Accelerate's prepare."""
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from ssl_scripts import loop
from helpers import accelerate_launch, exited, tree_contents
from ssl_scripts.tasks import TASKS

TINY_RESNET = ["--dataset", "synthetic", "--synthetic-size", "64", "--model", "resnet18", "--image-size", "8",
               "--batch-size", "8", "--skip-eval", "--report-to", "none", "--checkpoint-every", "2"]


def batch_norms_prepared(monkeypatch) -> list:
    """From now on, each prepare() records the batch norm classes of the model it is handed."""
    seen, prepare = [], Accelerator.prepare

    def recording_prepare(self, *objects, **kwargs):
        for model in objects:
            if isinstance(model, torch.nn.Module):
                seen.append({type(m).__name__ for m in model.modules()
                             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)})
        return prepare(self, *objects, **kwargs)
    monkeypatch.setattr(Accelerator, "prepare", recording_prepare)
    return seen


def train(output_dir, *options) -> dict:
    AcceleratorState._reset_state(True)
    try:
        return loop.train(TASKS["rotation"], [*TINY_RESNET, "--output-dir", str(output_dir), *map(str, options)])
    finally:
        exited(output_dir)


def test_sync_bn_converts_before_prepare_and_its_checkpoints_resume_with_and_without_it(tmp_path, monkeypatch,
                                                                                       capsys):
    prepared = batch_norms_prepared(monkeypatch)
    train(tmp_path / "a", "--sync-bn", "--max-steps", "2")
    assert prepared == [{"SyncBatchNorm"}]  # every batch norm layer, before DDP wraps the model
    assert train(tmp_path / "a", "--max-steps", "4")["steps"] == 4  # without it: the same state dict keys
    assert prepared[1:] == [{"BatchNorm2d"}] and "resumed from " in capsys.readouterr().out
    train(tmp_path / "b", "--max-steps", "2")
    assert train(tmp_path / "b", "--sync-bn", "--max-steps", "4")["steps"] == 4
    assert prepared[2:] == [{"BatchNorm2d"}, {"SyncBatchNorm"}] and "resumed from " in capsys.readouterr().out


@pytest.mark.e2e
@pytest.mark.parametrize("processes", [1, 2])
def test_sync_bn_in_launched_cpu_processes_is_one_error_line(tmp_path, processes):
    # One launched process too: it has a process group, in which torch's SyncBatchNorm and DDP refuse CPU tensors.
    result = accelerate_launch("train_rotation.py", *TINY_RESNET, "--sync-bn", "--output-dir", tmp_path / "run",
                               num_processes=processes)
    assert result.returncode != 0 and "(exitcode: 2)" in result.stderr, result.stderr[-3000:]  # the workers' 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: --sync-bn needs GPUs: torch's SyncBatchNorm refuses CPU tensors in launched "
                      f"processes ({processes} here); leave --sync-bn out on the CPU"], result.stderr[-3000:]


def test_a_finished_run_started_again_returns_its_results_without_training_or_writing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "done"
    steps, step = [], TASKS["rotation"].step
    monkeypatch.setattr(TASKS["rotation"], "step", lambda self, *a: steps.append(1) or step(self, *a))
    results = train(out, "--max-steps", "2")
    assert len(steps) == 2 and results["steps"] == 2
    before, _ = tree_contents(out), capsys.readouterr()
    assert train(out, "--max-steps", "2") == results
    assert len(steps) == 2, "a finished run trained again"
    assert tree_contents(out) == before  # final/, results.json, checkpoints: none written again
    assert f"{out} holds a finished run (2 steps)" in capsys.readouterr().out
