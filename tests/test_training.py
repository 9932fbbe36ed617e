"""The training machinery of common/training.py, in-process on one CPU process."""
import os

import pytest
import torch
from accelerate.state import AcceleratorState

from common import UserError
from common.config import build_parser, validate
from common.training import index_loader, list_checkpoints, make_accelerator, make_scheduler, prepare


def start_run(output_dir, *extra):
    AcceleratorState._reset_state(True)
    args = validate(build_parser("test").parse_args(
        ["--output-dir", str(output_dir), "--report-to", "none", "--batch-size", "8", "--checkpoint-every", "3",
         "--epochs", "2", "--log-every", "2", *extra]))
    accelerator = make_accelerator(args)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    model, optimizer, scheduler, run = prepare(args, accelerator, model, optimizer, index_loader(64, args.batch_size),
                                               project="test")
    return run, model, optimizer, scheduler


def train(output_dir, stop_after=None, *extra):
    """The scripts' loop around a toy model; returns the index batches it trained on, in order."""
    run, model, optimizer, scheduler = start_run(output_dir, *extra)
    seen = []
    for _ in run.epochs():
        for indices in run.batches():
            seen.append(indices.tolist())
            loss = model(torch.ones(len(indices), 2)).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            run.track(images=len(indices), samples=len(indices), loss=loss)
            run.step_done(scheduler)
            if stop_after is not None and run.state.step == stop_after:
                return seen, run
    return seen, run


def test_resume_continues_the_same_data_order(tmp_path):
    full, _ = train(tmp_path / "full")
    assert len(full) == 16  # 2 epochs of 64 / 8
    assert sorted(sum(full[:8], [])) == list(range(64)) and full[:8] != full[8:]  # reshuffled per epoch

    before, _ = train(tmp_path / "cut", stop_after=11)  # checkpoints at 3, 6, 9: killed after step 11
    after, run = train(tmp_path / "cut")
    assert run.state.step == 16
    assert before == full[:11]
    assert after == full[9:]  # resumed from step 9: in epoch 2, batch 1
    assert [os.path.basename(c) for c in list_checkpoints(tmp_path / "cut")] == \
        ["step_00000012", "step_00000015", "step_00000016"]


def test_incomplete_checkpoints_are_ignored(tmp_path):
    train(tmp_path, stop_after=4)
    os.rename(tmp_path / "checkpoints" / "step_00000003", tmp_path / "checkpoints" / ".tmp-step_00000006")
    assert list_checkpoints(tmp_path) == []
    _, run = train(tmp_path, stop_after=1)
    assert run.state.step == 1


def test_resume_never_refuses_a_dir_with_checkpoints(tmp_path):
    train(tmp_path, stop_after=3)
    with pytest.raises(UserError, match="--resume auto"):
        start_run(tmp_path, "--resume", "never")


def test_metrics_are_logged_and_cut_back_on_resume(tmp_path):
    import json
    train(tmp_path, stop_after=5)  # logs at 2, 4; checkpoint at 3
    train(tmp_path)
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [line["step"] for line in lines if "train/loss" in line] == [2, 4, 6, 8, 10, 12, 14, 16]
    epoch_ends = [line for line in lines if "train/epoch_time_s" in line]
    assert [line["step"] for line in epoch_ends] == [8, 16] and all(e["train/epoch_time_s"] > 0 for e in epoch_ends)


def test_step_schedule_follows_rotnet():
    args = validate(build_parser("t").parse_args(["--report-to", "none"]))
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    scheduler = make_scheduler(args, optimizer, total_steps=200)
    lrs = []
    for _ in range(200):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[59] == pytest.approx(0.1)
    assert lrs[60] == pytest.approx(0.02) and lrs[120] == pytest.approx(0.004) and lrs[160] == pytest.approx(0.0008)


def test_unwritable_output_dir_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    AcceleratorState._reset_state(True)
    args = validate(build_parser("t").parse_args(["--output-dir", str(blocker / "run"), "--report-to", "none"]))
    with pytest.raises(UserError, match="cannot write to output dir"):
        make_accelerator(args)


@pytest.mark.parametrize("option, value", [("--lr", "0"), ("--batch-size", "0"), ("--model", "vgg")])
def test_invalid_options_are_user_errors(option, value):
    with pytest.raises(UserError, match=option.lstrip("-").split("-")[0]):
        validate(build_parser("t").parse_args([option, value]))


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    run, model, optimizer, scheduler = start_run(tmp_path, "--grad-accum", "2", "--epochs", "1")
    accelerator, updates = run.accelerator, 0
    for _ in run.epochs():
        for indices in run.batches():
            with accelerator.accumulate(model):
                before = model.weight.detach().clone()
                accelerator.backward(model(torch.ones(len(indices), 2)).mean())
                optimizer.step()
                optimizer.zero_grad()
                updates += not torch.equal(before, model.weight)
            run.track(images=len(indices), samples=len(indices), loss=torch.tensor(0.0))
            if accelerator.sync_gradients:
                run.step_done(scheduler)
    assert run.total_steps == 4 and run.state.step == 4 and updates == 4  # 8 micro-batches, 2 per update
