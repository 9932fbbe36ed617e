"""Opt-in instruments for the checks, off in normal use: fault injection for the fault tests (SSL_SCRIPTS_FAULT),
points where a run waits for a test (SSL_SCRIPTS_HOLD), the sample indices each process trains on
(SSL_SCRIPTS_RECORD_INDICES), the model's share of each step (SSL_SCRIPTS_TIME_MODEL, for bench/throughput.py)
and counting the host's waits for the GPU per step (--count-host-syncs); a Run carries them as one Instruments."""
import json
import math
import os
import time
import warnings

import torch

from ssl_scripts.runtime import distributed


class Instruments:
    """The instruments a run was asked for, set up on the prepared model (each None when off). The Run calls
    before_batch, after_update and after_step, and reads model_seconds at its logs and results at its end."""

    def __init__(self, args, accelerator, model, state):
        inject_faults(distributed.plain_module(accelerator, model), accelerator, state)
        self.model_timer = model_timer(accelerator, model)
        self.record_indices = index_recorder(accelerator)
        self.sync_counter = (HostSyncCounter()
                             if args.count_host_syncs and accelerator.device.type == "cuda" else None)

    def before_batch(self, step: int, indices) -> None:
        """A micro-batch of optimizer step `step` is about to be trained on."""
        if self.record_indices:
            self.record_indices(step, indices)

    def after_update(self) -> None:
        """An optimizer step's update is done (or skipped): the model's part of the step ends."""
        if self.model_timer:
            self.model_timer.step_done()

    def after_step(self, step: int, epoch: int, quiet: bool) -> None:
        """Optimizer step `step` of `epoch` is done: updated, logged and checkpointed (quiet: neither of the two)."""
        if self.sync_counter:
            self.sync_counter.step_done(step, epoch, quiet)
        hold("step", step)

    def model_seconds(self):
        """The model's seconds since the last call (SSL_SCRIPTS_TIME_MODEL), or None when not timed."""
        return self.model_timer.take() if self.model_timer else None

    def results(self) -> dict:
        return self.sync_counter.results() if self.sync_counter else {}


def inject_faults(model, accelerator, state) -> None:
    """Fault injection for the fault tests: SSL_SCRIPTS_FAULT="nan@STEP[:RANK]" makes the model's output, hence
    the loss, non-finite at that step on that rank (all ranks without :RANK), and DDP's all-reduce carries it to
    every rank's gradients, as a real NaN would. Unset in normal use."""
    spec = os.environ.get("SSL_SCRIPTS_FAULT", "")
    if not spec.startswith("nan@"):
        return
    step_spec, _, rank_spec = spec[len("nan@"):].partition(":")
    if rank_spec and int(rank_spec) != accelerator.process_index:
        return

    def poison(module, inputs, output):
        if not (module.training and state.step + 1 == int(step_spec)):
            return output
        if isinstance(output, tuple):  # the Siamese head's HeadOutput: every tensor (BYOL reads the prediction)
            poisoned = [value * math.nan if torch.is_tensor(value) else value for value in output]
            return type(output)(*poisoned) if hasattr(output, "_fields") else tuple(poisoned)
        return output * math.nan
    model.register_forward_hook(poison)


def hold(point: str, step: int) -> None:
    """SSL_SCRIPTS_HOLD="POINT@STEP:PATH": at that point of that optimizer step, every process writes PATH.held and
    waits until PATH.go exists (or it is killed), so that a test acts at a known moment (a kill inside a checkpoint's
    write, a second start while the first trains) instead of after a sleep. Points: "step" (the step done: updated,
    logged, checkpointed), "checkpoint" (the step's checkpoint written but not its manifest: still incomplete).
    Unset in normal use."""
    spec = os.environ.get("SSL_SCRIPTS_HOLD")
    where, _, path = (spec or "").partition(":")
    if where != f"{point}@{step}":
        return
    if os.environ.get("SSL_SCRIPTS_HOLD_RANK", os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
        return  # SSL_SCRIPTS_HOLD_RANK=N: that process alone waits (the others go on, into the next collective)
    open(path + ".held", "w").close()
    while not os.path.exists(path + ".go"):
        time.sleep(0.01)


def index_recorder(accelerator):
    """SSL_SCRIPTS_RECORD_INDICES=PREFIX: each process appends the sample indices of every micro-batch it trains on,
    with the optimizer step they belong to, to PREFIX.rank<N>.jsonl (for the resume tests); None when unset."""
    prefix = os.environ.get("SSL_SCRIPTS_RECORD_INDICES")
    if not prefix:
        return None
    path = f"{prefix}.rank{accelerator.process_index}.jsonl"

    def record(step: int, indices) -> None:
        with open(path, "a") as f:
            f.write(json.dumps({"step": step, "indices": indices.tolist()}) + "\n")
    return record


def model_timer(accelerator, model):
    """SSL_SCRIPTS_TIME_MODEL=1: a ModelTimer on the prepared model; None when unset."""
    if os.environ.get("SSL_SCRIPTS_TIME_MODEL") != "1":
        return None
    timer = ModelTimer(accelerator.device.type == "cuda")
    model.register_forward_pre_hook(timer.forward_starts)
    return timer


class ModelTimer:
    """The time each optimizer step spends in the model: from its first forward call to the end of the optimizer's
    update (forward, loss, backward, gradient norm, update), measured in the run itself; the rest of the step is
    what the project adds (index batch, gather, augmentation, logs). Per log window, samples / this time is
    train/model_samples_per_s: at most train/samples_per_s's window, by construction. On a GPU, CUDA events on the
    stream, read at log steps, where the host waits anyway."""

    def __init__(self, cuda: bool):
        self.cuda, self.seconds, self._start, self._timed = cuda, 0.0, None, []

    def forward_starts(self, module, inputs) -> None:
        if self._start is None:  # the step's first forward (of its first micro-batch)
            self._start = self._now()

    def step_done(self) -> None:
        if self._start is None:
            return
        if self.cuda:
            self._timed.append((self._start, self._now()))
        else:
            self.seconds += time.perf_counter() - self._start
        self._start = None

    def take(self) -> float:
        """Seconds in the model since the last take (on a GPU: waits for the timed steps to end)."""
        if self._timed:
            self._timed[-1][1].synchronize()
            self.seconds += sum(start.elapsed_time(end) for start, end in self._timed) / 1000
            self._timed.clear()
        seconds, self.seconds = self.seconds, 0.0
        return seconds

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event


class HostSyncCounter:
    """--count-host-syncs: CUDA's sync debug mode warns at every operation that makes the host wait for the GPU;
    the warnings are counted per optimizer step. Steady steps are those after a warm-up (cuDNN autotuning) that
    neither log, checkpoint nor start an epoch (evaluation): where the GPU should never wait for the host."""
    WARMUP_STEPS = 5

    def __init__(self):
        self.steady, self.other = [], []
        self._count, self._epoch = 0, None  # the epoch of the last step counted
        self._show = warnings.showwarning
        warnings.filterwarnings("always", message=".*synchronizing CUDA operation")
        warnings.showwarning = self._seen
        torch.cuda.set_sync_debug_mode("warn")

    def _seen(self, message, category, filename, lineno, file=None, line=None):
        if "synchronizing CUDA operation" in str(message):
            self._count += 1
        else:
            self._show(message, category, filename, lineno, file, line)

    def step_done(self, step: int, epoch: int, quiet: bool) -> None:
        steady = quiet and step > self.WARMUP_STEPS and epoch == self._epoch  # an epoch's first step: evaluated before
        (self.steady if steady else self.other).append(self._count)
        self._count, self._epoch = 0, epoch

    def results(self) -> dict:
        steady = self.steady or [math.nan]
        return {"host_syncs_per_step": sum(steady) / len(steady), "host_syncs_max_step": max(steady),
                "host_syncs_steady_steps": len(self.steady), "host_syncs_other_steps_total": sum(self.other)}
