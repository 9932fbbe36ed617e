"""The training loop's state (ssl_scripts/training/run.py's Run and Accelerator), in-process on one CPU process."""
import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
from accelerate.state import AcceleratorState

from ssl_scripts.training.checkpoints import list_checkpoints
from ssl_scripts.data.loader import index_loader
from helpers import exited, parse, toy_run, toy_steps, toy_train, training_accelerator


def test_resume_continues_the_same_data_order(tmp_path):
    full, _ = toy_train(tmp_path / "full")
    assert len(full) == 16  # 2 epochs of 64 / 8
    assert sorted(sum(full[:8], [])) == list(range(64)) and full[:8] != full[8:]  # reshuffled per epoch

    before, _ = toy_train(tmp_path / "cut", stop_after=11)  # checkpoints at 3, 6, 9: killed after step 11
    after, run = toy_train(tmp_path / "cut")
    assert run.state.step == 16
    assert before == full[:11]
    assert after == full[9:]  # resumed from step 9: in epoch 2, batch 1
    assert [os.path.basename(c) for c in list_checkpoints(tmp_path / "cut")] == \
        ["step_00000012", "step_00000015", "step_00000016"]


def test_unwritable_output_dir_is_refused(tmp_path):
    from ssl_scripts import UserError
    blocker = tmp_path / "file"
    blocker.write_text("x")
    AcceleratorState._reset_state(True)
    args = parse(["--output-dir", str(blocker / "run"), "--report-to", "none"])
    with pytest.raises(UserError, match="cannot write to output dir"):
        training_accelerator(args)


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    run, model = toy_run(tmp_path, "--grad-accum", "2", "--batch-size", "16", "--epochs", "1")
    accelerator, updates = run.accelerator, 0
    for _ in run.epochs():
        for indices in run.batches():
            with accelerator.accumulate(model):
                before = model.weight.detach().clone()
                accelerator.backward(model(torch.ones(len(indices), 2)).mean())
                run.optimizer_step()
                updates += not torch.equal(before, model.weight)
            run.end_batch(images=len(indices), samples=len(indices), loss=torch.tensor(0.0))
    assert run.total_steps == 4 and run.state.step == 4 and updates == 4  # 8 micro-batches, 2 per update


@pytest.mark.parametrize("max_grad_norm", [None, 0.5])
def test_the_gradient_norm_is_logged_and_clips_only_under_max_grad_norm(tmp_path, max_grad_norm):
    # loss = mean(w . (1, 1) + b): gradients (1, 1) and 1, norm sqrt(3), on every step.
    run, model = toy_run(tmp_path, *(["--max-grad-norm", max_grad_norm] if max_grad_norm else []))
    updated_with, step = [], run.optimizer.step

    def recorded_step(*args, **kwargs):
        updated_with.append(torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item())
        return step(*args, **kwargs)
    run.optimizer.step = recorded_step
    toy_steps(run, model, stop_after=1)
    assert run.metrics.grad_norms[0].item() == pytest.approx(3 ** 0.5)  # before clipping
    assert updated_with == [pytest.approx(min(3 ** 0.5, max_grad_norm or math.inf))]


def test_the_model_timer_counts_the_model_and_not_the_work_before_it(tmp_path, monkeypatch):
    # SSL_SCRIPTS_TIME_MODEL: from the step's first forward to the end of the update. 30 ms of "data work" before
    # each forward and 10 ms inside it: the model's part of every window is about a quarter of it.
    import time
    monkeypatch.setenv("SSL_SCRIPTS_TIME_MODEL", "1")
    run, model = toy_run(tmp_path, "--max-steps", "6")
    model.register_forward_hook(lambda module, inputs, output: time.sleep(0.01))
    for _ in run.epochs():
        for indices in run.batches():
            time.sleep(0.03)
            with run.accelerator.accumulate(model):
                loss = model(torch.ones(len(indices), 2)).mean()
                run.accelerator.backward(loss)
                run.optimizer_step()
            run.end_batch(images=len(indices), samples=len(indices), loss=loss)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    windows = [line for line in logged if "train/samples_per_s" in line]
    assert len(windows) == 3
    for window in windows:
        share = window["train/samples_per_s"] / window["train/model_samples_per_s"]
        assert 0.15 < share < 0.4, window


def test_the_model_timer_on_a_gpu_reads_cuda_events_only_when_taken(monkeypatch):
    # torch.cuda.Event stood in for (no GPU here): record() notes the clock; the timer must sum end - start of
    # each step, in seconds, and wait for the last event only when taken.
    import time
    from ssl_scripts.training.instruments import ModelTimer
    waited = []

    class FakeEvent:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.at = None

        def record(self):
            self.at = time.perf_counter()

        def synchronize(self):
            waited.append(self)

        def elapsed_time(self, end):
            return (end.at - self.at) * 1000  # milliseconds, as CUDA's
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    timer = ModelTimer(cuda=True)
    for _ in range(3):
        timer.forward_starts(None, None)
        time.sleep(0.02)
        timer.forward_starts(None, None)  # a second forward in the same step: the step's start stays
        timer.step_done()
        time.sleep(0.05)  # outside the model
    assert waited == []  # nothing read before the log step
    assert 0.06 <= timer.take() < 0.12 and len(waited) == 1 and timer.take() == 0


def test_steps_between_log_and_checkpoint_steps_never_make_the_host_wait(tmp_path):
    # The scripts' loop. On a GPU any value read back (.item(), bool(), ...) stalls the device until it is idle;
    # here on the CPU every such read is recorded, step by step.
    from helpers import HostWaits
    run, model = toy_run(tmp_path, "--log-every", "4", "--checkpoint-every", "6")
    accelerator, per_step = run.accelerator, {}
    with HostWaits(device_only=False) as waits:
        for _ in run.epochs():
            for indices in run.batches():
                with accelerator.accumulate(model):
                    loss = model(torch.ones(len(indices), 2)).mean()
                    accelerator.backward(loss)
                    run.optimizer_step()
                run.end_batch(images=len(indices), samples=len(indices), loss=loss)
                if accelerator.sync_gradients:
                    per_step[run.state.step], waits.seen = waits.seen, []
        alive = waits.alive()  # it did see what it sees: a detector that saw nothing would pass without this
    assert run.state.step == 16 and alive
    # Epochs of 8 steps. Waits are allowed where the host reads anyway: at the first step of an epoch (the
    # sampler's order), at log (4, 8, 12, 16) and checkpoint (6, 12, 16) steps and at the end of an epoch (8, 16).
    quiet = [2, 3, 5, 7, 10, 11, 13, 14, 15]
    assert {step: per_step[step] for step in quiet} == {step: [] for step in quiet}


# helpers' HostWaits is asserted to see nothing above, in test_augment.py and in test_pairs.py: here, that it
# sees each kind of wait it claims to, and nothing else.
def meta_waits():
    x, host = torch.ones(4, device="meta"), torch.ones(4)
    return {".item()": lambda: x[0].item(), "bool()": lambda: bool(x[0]), "if tensor": lambda: 1 if x[0] else 0,
            "float()": lambda: float(x[0]), "int()": lambda: int(x[0]), ".tolist()": lambda: x.tolist(),
            ".nonzero()": lambda: x.nonzero(), ".cpu()": lambda: x.cpu(), ".numpy()": lambda: x.numpy(),
            "host tensor .to(device)": lambda: host.to("meta"),
            "host tensor .to(device=...)": lambda: host.to(device=torch.device("meta")),
            "torch.tensor(..., device=...)": lambda: torch.tensor([1, 2], device="meta"),
            "torch.as_tensor(..., device=...)": lambda: torch.as_tensor([1, 2], device="meta"),
            "boolean-mask indexing": lambda: x[x > 0]}


def seen_by(device_only, kinds):
    from helpers import HostWaits
    seen = {}
    for kind, make in kinds.items():
        with HostWaits(device_only=device_only) as waits:
            try:
                make()
            except (RuntimeError, NotImplementedError, TypeError):  # a meta tensor holds no value to read
                pass
        seen[kind] = waits.seen
    return seen


def test_the_host_wait_detector_sees_each_kind_of_wait():
    read, copy = ".{}() of a device tensor", "torch.{}(host data, device=meta)"
    assert seen_by(True, meta_waits()) == {
        ".item()": [read.format("item")], "bool()": [read.format("__bool__")], "if tensor": [read.format("__bool__")],
        "float()": [read.format("__float__")], "int()": [read.format("__int__")], ".tolist()": [read.format("tolist")],
        ".nonzero()": [read.format("nonzero")], ".cpu()": [read.format("cpu")], ".numpy()": [read.format("numpy")],
        "host tensor .to(device)": ["host tensor .to(device)"],
        "host tensor .to(device=...)": ["host tensor .to(device)"],
        "torch.tensor(..., device=...)": [copy.format("tensor")],
        "torch.as_tensor(..., device=...)": [copy.format("as_tensor")],
        "boolean-mask indexing": ["boolean-mask indexing"]}
    # device_only=False: the same reads of CPU tensors (the training loop's test) ...
    c = torch.ones(4)
    cpu_reads = {".item()": lambda: c[0].item(), "bool()": lambda: bool(c[0]), "if tensor": lambda: 1 if c[0] else 0,
                 ".tolist()": lambda: c.tolist(), ".numpy()": lambda: c.numpy(),
                 "boolean-mask indexing": lambda: c[c > 0]}
    assert seen_by(False, cpu_reads) == {
        ".item()": [read.format("item")], "bool()": [read.format("__bool__")], "if tensor": [read.format("__bool__")],
        ".tolist()": [read.format("tolist")], ".numpy()": [read.format("numpy")],
        "boolean-mask indexing": ["boolean-mask indexing"]}
    # ... which device_only leaves out, as it does what never waits for a device
    quiet = {**{kind: make for kind, make in cpu_reads.items() if kind != "boolean-mask indexing"},
             "arithmetic on meta": lambda: torch.ones(4, device="meta") * 2 + 1,
             "integer indexing on meta": lambda: torch.ones(4, device="meta")[torch.arange(2, device="meta")],
             "host tensor .to(cpu) and .to(dtype)": lambda: c.to("cpu").to(torch.float64),
             "torch.tensor on the host": lambda: torch.tensor([1, 2], device="cpu")}
    assert seen_by(True, quiet) == {kind: [] for kind in quiet}


def test_a_required_by_variable_set_to_0_false_or_nothing_requires_nothing(monkeypatch):
    # SSL_SCRIPTS_REQUIRE_SMALL_DISK / _SLURM: "0" used to count as set (any non-empty string did).
    from helpers import required_by
    monkeypatch.delenv("SSL_SCRIPTS_TEST_FLAG", raising=False)
    assert not required_by("SSL_SCRIPTS_TEST_FLAG")
    for value, required in [("", False), ("0", False), ("false", False), ("False", False), (" no ", False),
                            ("off", False), ("1", True), ("true", True), ("yes", True)]:
        monkeypatch.setenv("SSL_SCRIPTS_TEST_FLAG", value)
        assert required_by("SSL_SCRIPTS_TEST_FLAG") == required, value


def test_index_batches_are_pinned_on_a_gpu_and_copied_without_waiting(tmp_path):
    args = parse(["--batch-size", "8"])
    gpu = SimpleNamespace(num_processes=1, device=torch.device("cuda"))
    assert index_loader(gpu, args, 64).pin_memory
    AcceleratorState._reset_state(True)
    accelerator = training_accelerator(parse(
        ["--output-dir", str(tmp_path), "--report-to", "none"]))
    assert accelerator.dataloader_config.non_blocking


def test_the_accelerator_has_the_process_group_options_and_tuned_convolutions(tmp_path, monkeypatch):
    from datetime import timedelta
    from ssl_scripts.runtime.distributed import process_group_options
    AcceleratorState._reset_state(True)
    args = parse(["--output-dir", str(tmp_path), "--report-to", "none"])
    accelerator = training_accelerator(args)
    # NCCL's default of 600 s is shorter than rank 0 decoding a large image folder while the others wait.
    assert accelerator.init_handler.timeout == timedelta(seconds=3600) and accelerator.init_handler.backend is None
    assert torch.backends.cudnn.benchmark
    AcceleratorState._reset_state(True)
    args = parse(["--output-dir", str(tmp_path), "--report-to", "none",
                                                  "--dist-backend", "gloo", "--dist-timeout", "90", "--deterministic"])
    accelerator = training_accelerator(args)  # one process, not launched as one of several: no process group
    assert accelerator.init_handler.timeout == timedelta(seconds=90) and not torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(False)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it for each of its processes
    assert process_group_options(args).backend == "gloo"


def test_the_run_seeds_nothing_of_its_own(tmp_path):
    """seed_run is the one seeding point: after it, only what the script draws (the model's initial
    weights) moves the random stream the loop's augmentations draw from; the Run neither draws nor seeds again."""
    AcceleratorState._reset_state(True)
    training_accelerator(parse(["--output-dir", str(tmp_path / "a"), "--report-to", "none"]))
    torch.nn.Linear(2, 1)  # the draw toy_run's model makes
    after_the_model = torch.rand(3)
    toy_run(tmp_path / "b")  # the accelerator, model, optimizer, loader, schedule, Run
    assert torch.equal(torch.rand(3), after_the_model)


class ReportsCuda:
    """The real (CPU) Accelerator, except that it says its device is a GPU: what a CUDA-only branch sees."""

    def __init__(self, accelerator):
        self.accelerator = accelerator

    def __getattr__(self, name):
        return getattr(self.accelerator, name)

    @property
    def device(self):
        return torch.device("cuda")


def test_the_run_accepts_any_model_on_a_gpu(tmp_path):
    from accelerate.state import AcceleratorState as State
    State._reset_state(True)
    args = parse(["--output-dir", str(tmp_path / "probe"), "--report-to", "none"])
    real = training_accelerator(args)
    # A plain Linear (no .encoder): nothing in the training machinery may assume one, on a GPU either.
    run, _ = toy_run(tmp_path, accelerator_view=ReportsCuda(real))
    assert run.total_steps > 0


def test_an_fp16_run_whose_every_step_overflows_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    # fp16 needs a GPU; here the GradScaler's answer is given: from step 5 on, every step overflowed.
    from accelerate import Accelerator
    from ssl_scripts import UserError
    from ssl_scripts.training.gradients import MAX_CONSECUTIVE_AMP_SKIPS
    run, model = toy_run(tmp_path, "--epochs", "20", "--checkpoint-every", "4")
    monkeypatch.setattr(run.accelerator, "scaler", torch.amp.GradScaler("cpu"), raising=False)
    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped", property(lambda self: run.state.step >= 4))
    with pytest.raises(UserError) as stopped:
        for _ in run.epochs():
            for indices in run.batches():
                run.end_batch(images=len(indices), samples=len(indices), loss=torch.tensor(1.0))
    assert run.state.step == 4 + MAX_CONSECUTIVE_AMP_SKIPS - 1
    assert run.state.amp_skipped_steps == MAX_CONSECUTIVE_AMP_SKIPS  # steps 5 to 54, the last one not done
    assert f"the last {MAX_CONSECUTIVE_AMP_SKIPS} steps" in str(stopped.value)
    assert f"step_{4 + MAX_CONSECUTIVE_AMP_SKIPS - 1 - (4 + MAX_CONSECUTIVE_AMP_SKIPS - 1) % 4:08d}" \
        in str(stopped.value)


def test_fp16_overflow_steps_are_counted_exactly_and_left_to_the_scaler_under_nan_policy_skip(tmp_path, monkeypatch):
    # As above, the GradScaler's part is played: steps 3, 5, 6 and 11 overflowed (never 50 in a row) and their
    # updates are dropped; step 5's gradients are really non-finite (SSL_SCRIPTS_FAULT).
    from accelerate import Accelerator
    overflowed = {3, 5, 6, 11}
    monkeypatch.setenv("SSL_SCRIPTS_FAULT", "nan@5")
    run, model = toy_run(tmp_path, "--nan-policy", "skip", "--log-every", "4")
    monkeypatch.setattr(run.accelerator, "scaler", torch.amp.GradScaler("cpu"), raising=False)
    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped",
                        property(lambda self: run.state.step + 1 in overflowed))
    update = run.optimizer.step
    monkeypatch.setattr(run.optimizer, "step", lambda: None if run.state.step + 1 in overflowed else update())
    for _ in run.epochs():
        for indices in run.batches():
            with run.accelerator.accumulate(model):
                run.accelerator.backward(model(torch.ones(len(indices), 2)).mean())
                run.optimizer_step()
            run.end_batch(images=len(indices), samples=len(indices), loss=torch.tensor(1.0))
    assert run.state.step == 16 and run.state.amp_skipped_steps == 4
    assert run.state.skipped_steps == 0 and torch.isfinite(model.weight).all()  # step 5 was the scaler's to skip
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {line["step"]: line["train/amp_skipped_steps"] for line in lines if "train/loss" in line} == \
        {4: 1, 8: 3, 12: 4, 16: 4}  # so far, at each log step
    assert not any("train/skipped_steps" in line for line in lines)
    # Step 5's norm is not finite: the scaler's skipped step is counted above, not averaged into the window's norm
    norms = {line["step"]: line["train/grad_norm"] for line in lines if "train/loss" in line}
    assert sorted(norms) == [4, 8, 12, 16] and all(math.isfinite(norm) for norm in norms.values()), norms


def nan_run(tmp_path, monkeypatch, bad_step):
    """toy_run's loop with --nan-policy abort, a log every 4 steps and a checkpoint every 3, 3 epochs of 8 steps,
    the loss non-finite at `bad_step` (SSL_SCRIPTS_FAULT). Returns (the run, the UserError it stopped with)."""
    from ssl_scripts import UserError
    monkeypatch.setenv("SSL_SCRIPTS_FAULT", f"nan@{bad_step}")
    run, model = toy_run(tmp_path, "--nan-policy", "abort", "--log-every", "4", "--checkpoint-every", "3",
                         "--epochs", "3")
    with pytest.raises(UserError) as stopped:
        toy_steps(run, model)
    return run, stopped.value


@pytest.mark.parametrize("bad_step, stopped_at, kept", [
    (5, 6, [3]),  # 6: a checkpoint step (not a log step), checked before its checkpoint is written
    (19, 20, [12, 15, 18])])  # 20: a log step (not a checkpoint step); the newest 3 checkpoints are kept
def test_nan_policy_abort_stops_at_the_next_log_or_checkpoint_step_with_no_checkpoint_after_the_bad_step(
        tmp_path, monkeypatch, bad_step, stopped_at, kept):
    """The check is read only at log and checkpoint steps (and the first step and epoch ends: 1, 8, 16, 24), not
    at each step: the run trains on after the bad step up to the next of them, and stops there."""
    from safetensors.torch import load_file
    from ssl_scripts.training.checkpoints import path_of, verify_checkpoint
    run, error = nan_run(tmp_path, monkeypatch, bad_step)
    assert run.state.step == stopped_at
    assert str(error).startswith(f"non-finite loss or gradients at step {bad_step}: stopped. The last good "
                                 f"checkpoint is {path_of(str(tmp_path), kept[-1])}. ")
    assert [int(os.path.basename(c)[len("step_"):]) for c in list_checkpoints(tmp_path)] == kept
    last = path_of(str(tmp_path), kept[-1])
    assert verify_checkpoint(last) is None
    assert all(torch.isfinite(w).all() for w in load_file(os.path.join(last, "model.safetensors")).values())
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(line["step"] for line in logged) < bad_step  # nothing logged from a bad step


def test_a_stop_signal_saves_a_checkpoint_and_raises_preempted(tmp_path):
    import signal
    from ssl_scripts import Preempted
    run, model = toy_run(tmp_path, "--checkpoint-every", "100")
    with pytest.raises(Preempted, match="stopping on SIGUSR1 at step 5: checkpoint saved"):
        for _ in run.epochs():
            for indices in run.batches():
                if run.state.step == 4:
                    os.kill(os.getpid(), signal.SIGUSR1)
                run.end_batch(images=len(indices), samples=len(indices), loss=torch.tensor(1.0))
    assert [os.path.basename(c) for c in list_checkpoints(tmp_path)] == ["step_00000005"]


def test_a_stop_signal_during_an_evaluation_stops_it_between_batches_with_a_checkpoint(tmp_path):
    # An evaluation can outlast Slurm's two-minute notice: it is cut between two batches, not run to its end.
    import signal
    from ssl_scripts import Preempted
    from ssl_scripts.evaluation.frozen import map_batches
    run, model = toy_run(tmp_path, "--checkpoint-every", "100")
    for _ in run.epochs():
        for indices in run.batches():
            run.end_batch(images=len(indices), samples=len(indices), loss=torch.tensor(1.0))
        break  # the first epoch's 8 steps, then its evaluation
    mapped = []

    def encode(x):
        mapped.append(len(x))
        if len(mapped) == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return x.flatten(1)
    images = torch.zeros(40, 3, 2, 2, dtype=torch.uint8)
    with pytest.raises(Preempted, match="stopping on SIGUSR1 at step 8 during an evaluation: checkpoint saved"):
        run.evaluate(map_batches, run.accelerator, encode, images, 8)
    assert mapped == [8, 8]  # of 5 batches
    assert [os.path.basename(c) for c in list_checkpoints(tmp_path)] == ["step_00000008"]
    assert map_batches(run.accelerator, lambda x: x.flatten(1), images, 8).shape == (40, 12)  # unchecked outside


@pytest.mark.parametrize("processes, grad_accum, samples", [(1, 1, 64), (2, 1, 70), (4, 2, 100), (3, 1, 99)])
def test_the_schedule_spans_the_steps_every_process_takes(processes, grad_accum, samples):
    """make_schedule counts steps from the loader before prepare; Accelerate's shard of it (what the Run counts)
    must hold as many batches on every process."""
    from accelerate.data_loader import BatchSamplerShard
    args = parse(["--batch-size", str(8 * processes * grad_accum),
                                                  "--grad-accum", str(grad_accum)])
    loader = index_loader(SimpleNamespace(num_processes=processes, device=torch.device("cpu")), args, samples)
    shards = [BatchSamplerShard(loader.batch_sampler, processes, rank) for rank in range(processes)]
    assert {len(shard) for shard in shards} == {len(loader) // processes}


def with_a_grad_scaler(monkeypatch):
    """Accelerators built from now on hold a GradScaler, as under --mixed_precision fp16 (which needs a GPU)."""
    from accelerate import Accelerator
    init = Accelerator.__init__

    def fp16_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.scaler = torch.amp.GradScaler("cpu")
    monkeypatch.setattr(Accelerator, "__init__", fp16_init)


def test_fp16_resumes_a_checkpoint_written_without_it_with_a_fresh_scaler_and_the_reverse_too(tmp_path, monkeypatch,
                                                                                              capsys):
    toy_train(tmp_path / "bf16", "--max-steps", "3")  # no GradScaler: the checkpoint has no scaler.pt
    exited(tmp_path / "bf16")
    with monkeypatch.context() as fp16:
        with_a_grad_scaler(fp16)
        capsys.readouterr()
        _, run = toy_train(tmp_path / "bf16", "--max-steps", "6")
        said = capsys.readouterr().out
        assert run.state.step == 6 and "resumed from " in said and " at step 3 " in said
        assert ("checkpoint written under mixed precision 'no' resumed under fp16: the GradScaler starts fresh "
                "(scale 65536)") in said
        exited(tmp_path / "bf16")
        toy_train(tmp_path / "fp16", "--max-steps", "3")
        exited(tmp_path / "fp16")
    assert (tmp_path / "fp16" / "checkpoints" / "step_00000003" / "scaler.pt").exists()
    _, run = toy_train(tmp_path / "fp16", "--max-steps", "6")  # bf16 after fp16: the scaler's state is not needed
    assert run.state.step == 6


@pytest.mark.parametrize("given", [False, True])
def test_default_evaluations_wait_for_as_many_trained_images_as_one_encodes(tmp_path, given):
    # toy_run: 8 images a step, 8 steps an epoch. Without --eval-every: every 10 epochs (640 images trained), but
    # not before the training since the last evaluation has seen the 1,000 images an evaluation encodes.
    run, _ = toy_run(tmp_path, "--epochs", "40", *(["--eval-every", "10"] if given else []))
    run.state.step = 80
    assert run.evaluation_due(9, images_evaluated=1000) == given  # 640 images since the start
    assert not run.evaluation_due(10, images_evaluated=1000)  # not an epoch of the schedule
    run.state.step = 160
    assert run.evaluation_due(19, images_evaluated=1000)  # 1,280 images since the start
    run.log_evaluation({})
    run.state.step = 240
    assert run.evaluation_due(29, images_evaluated=1000) == given  # 640 since the last
    exited(tmp_path)


def test_one_ctrl_c_arriving_twice_at_once_is_noted_once():
    import signal

    from ssl_scripts.training.stop_signals import StopSignals
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        stop_signals = StopSignals.install()
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # within SAME_CTRL_C_S: a second one would exit this process at once
        assert stop_signals.ctrl_c.count == 1 and stop_signals.received == signal.SIGINT
        assert stop_signals.name() == "Ctrl-C (SIGINT)"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
