"""The training machinery of common/training.py, in-process on one CPU process."""
import os
from types import SimpleNamespace

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
    model, optimizer, scheduler, run = prepare(args, accelerator, model, optimizer, index_loader(accelerator, args, 64),
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


@pytest.mark.parametrize("option, value", [("--lr", "0"), ("--batch-size", "0"), ("--model", "vgg"),
                                           ("--dist-timeout", "0")])
def test_invalid_options_are_user_errors(option, value):
    with pytest.raises(UserError, match=option.lstrip("-").split("-")[0]):
        validate(build_parser("t").parse_args([option, value]))


def test_evaluate_checks_the_distributed_options_with_its_others():
    import evaluate
    with pytest.raises(UserError, match="--dist-timeout must be > 0"):
        evaluate.parse_args(["--encoder", "some/final", "--dist-timeout", "0"])


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    run, model, optimizer, scheduler = start_run(tmp_path, "--grad-accum", "2", "--batch-size", "16", "--epochs", "1")
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


def test_steps_between_log_and_checkpoint_steps_never_make_the_host_wait(tmp_path):
    # The scripts' loop. On a GPU any value read back (.item(), bool(), ...) stalls the device until it is idle;
    # here on the CPU every such read is recorded, step by step.
    from conftest import HostWaits
    run, model, optimizer, scheduler = start_run(tmp_path, "--log-every", "4", "--checkpoint-every", "6")
    accelerator, per_step = run.accelerator, {}
    with HostWaits(device_only=False) as waits:
        for _ in run.epochs():
            for indices in run.batches():
                with accelerator.accumulate(model):
                    loss = model(torch.ones(len(indices), 2)).mean()
                    accelerator.backward(loss)
                    if run.gradients_ok(model):
                        optimizer.step()
                    optimizer.zero_grad()
                run.track(images=len(indices), samples=len(indices), loss=loss)
                if accelerator.sync_gradients:
                    run.step_done(scheduler)
                    per_step[run.state.step], waits.seen = waits.seen, []
    assert run.state.step == 16
    # Epochs of 8 steps. Waits are allowed where the host reads anyway: at the first step of an epoch (the
    # sampler's order), at log (4, 8, 12, 16) and checkpoint (6, 12, 16) steps and at the end of an epoch (8, 16).
    quiet = [2, 3, 5, 7, 10, 11, 13, 14, 15]
    assert {step: per_step[step] for step in quiet} == {step: [] for step in quiet}


def test_index_batches_are_pinned_on_a_gpu_and_copied_without_waiting(tmp_path):
    args = validate(build_parser("t").parse_args(["--batch-size", "8"]))
    gpu = SimpleNamespace(num_processes=1, device=torch.device("cuda"))
    assert index_loader(gpu, args, 64).pin_memory
    AcceleratorState._reset_state(True)
    accelerator = make_accelerator(validate(build_parser("t").parse_args(
        ["--output-dir", str(tmp_path), "--report-to", "none"])))
    assert accelerator.dataloader_config.non_blocking


def test_the_batch_size_is_the_global_batch_of_an_optimizer_step():
    from common.training import micro_batch_size
    args = validate(build_parser("t").parse_args(["--batch-size", "128", "--grad-accum", "2"]))
    assert [micro_batch_size(args, n) for n in (1, 2, 4, 8)] == [64, 32, 16, 8]
    with pytest.raises(UserError, match=r"--batch-size 128 .* does not divide into 3 processes x 2 .* multiple of 6"):
        micro_batch_size(args, 3)


def test_the_accelerator_has_the_process_group_options_and_tuned_convolutions(tmp_path, monkeypatch):
    from datetime import timedelta
    from common.distributed import process_group_options
    AcceleratorState._reset_state(True)
    args = validate(build_parser("t").parse_args(["--output-dir", str(tmp_path), "--report-to", "none"]))
    accelerator = make_accelerator(args)
    # NCCL's default of 600 s is shorter than rank 0 decoding a large image folder while the others wait.
    assert accelerator.init_handler.timeout == timedelta(seconds=3600) and accelerator.init_handler.backend is None
    assert torch.backends.cudnn.benchmark
    AcceleratorState._reset_state(True)
    args = validate(build_parser("t").parse_args(["--output-dir", str(tmp_path), "--report-to", "none",
                                                  "--dist-backend", "gloo", "--dist-timeout", "90", "--deterministic"]))
    accelerator = make_accelerator(args)  # one process, not launched as one of several: no process group
    assert accelerator.init_handler.timeout == timedelta(seconds=90) and not torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(False)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it for each of its processes
    assert process_group_options(args).backend == "gloo"


class ReportsCuda:
    """The real (CPU) Accelerator, except that it says its device is a GPU: what a CUDA-only branch sees."""

    def __init__(self, accelerator):
        self.accelerator = accelerator

    def __getattr__(self, name):
        return getattr(self.accelerator, name)

    @property
    def device(self):
        return torch.device("cuda")


def test_prepare_accepts_any_model_on_a_gpu(tmp_path):
    AcceleratorState._reset_state(True)
    args = validate(build_parser("t").parse_args(["--output-dir", str(tmp_path), "--report-to", "none",
                                                  "--batch-size", "8"]))
    accelerator = make_accelerator(args)
    model = torch.nn.Linear(2, 1)  # no .encoder: nothing in the training machinery may assume one
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = index_loader(SimpleNamespace(num_processes=1, device=torch.device("cpu")), args, 64)
    model, optimizer, scheduler, run = prepare(args, ReportsCuda(accelerator), model, optimizer, loader, "test")
    assert run.total_steps > 0


def test_an_fp16_run_whose_every_step_overflows_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    # fp16 needs a GPU; here the GradScaler's answer is given: from step 5 on, every step overflowed.
    from accelerate import Accelerator
    from common.training import MAX_CONSECUTIVE_AMP_SKIPS
    run, model, optimizer, scheduler = start_run(tmp_path, "--epochs", "20", "--checkpoint-every", "4")
    monkeypatch.setattr(run.accelerator, "scaler", torch.amp.GradScaler("cpu"), raising=False)
    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped", property(lambda self: run.state.step >= 4))
    with pytest.raises(UserError) as stopped:
        for _ in run.epochs():
            for indices in run.batches():
                run.track(images=len(indices), samples=len(indices), loss=torch.tensor(1.0))
                run.step_done(scheduler)
    assert run.state.step == 4 + MAX_CONSECUTIVE_AMP_SKIPS - 1
    assert f"the last {MAX_CONSECUTIVE_AMP_SKIPS} steps" in str(stopped.value)
    assert f"step_{4 + MAX_CONSECUTIVE_AMP_SKIPS - 1 - (4 + MAX_CONSECUTIVE_AMP_SKIPS - 1) % 4:08d}" \
        in str(stopped.value)


def test_a_damaged_checkpoint_is_replaced_when_its_step_is_trained_again(tmp_path):
    from common.training import verify_checkpoint
    train(tmp_path, stop_after=7)  # checkpoints at 3 and 6
    damaged = tmp_path / "checkpoints" / "step_00000006" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    train(tmp_path, stop_after=7)  # resumes from 3 (6 is damaged) and trains step 6 again
    assert verify_checkpoint(str(damaged.parent)) is None
    assert not list((tmp_path / "checkpoints").glob(".old-*"))
