"""What a run measures: the train/* values between two logs (kept on the device, reduced when logged) and the
figures results.json reports (throughput, peak memory)."""
import math
import time

import torch


class TrainMetrics:
    """The train/* values between two logs: per-process sums kept on the device (no wait for it per step),
    reduced over the processes only when logged; throughput counted over all processes."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self._reset()

    def _reset(self) -> None:
        self.sums, self.grad_norms = {}, []
        self.images = self.samples = 0
        self.clock = time.perf_counter()

    def add(self, images: int, samples: int, metrics: dict) -> None:
        device = self.accelerator.device
        for name, value in metrics.items():
            value = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
            self.sums[name] = self.sums.get(name, 0) + value.to(device)
        self.sums["count"] = self.sums.get("count", 0) + torch.ones((), device=device)
        self.images += images * self.accelerator.num_processes
        self.samples += samples * self.accelerator.num_processes

    def reduced(self, model_seconds: float = None) -> dict:
        """The means since the last call, over all processes; then it starts anew. model_seconds: the time this
        window's steps spent in the model (instruments.ModelTimer), giving train/model_samples_per_s."""
        names = list(self.sums)
        totals = self.accelerator.reduce(torch.stack([self.sums[n] for n in names]), reduction="sum")
        count = totals[names.index("count")].item()
        values = {f"train/{n}": totals[i].item() / count for i, n in enumerate(names) if n != "count"}
        elapsed = max(time.perf_counter() - self.clock, 1e-9)
        values.update({"train/images_per_s": self.images / elapsed, "train/samples_per_s": self.samples / elapsed})
        if model_seconds:
            values["train/model_samples_per_s"] = self.samples / model_seconds
        # fp16: the GradScaler's overflow steps have an inf norm and update nothing; counted (amp_skipped_steps),
        # not averaged in
        finite = [norm for norm in torch.stack(self.grad_norms).tolist() if math.isfinite(norm)] \
            if self.grad_norms else []
        if finite:
            values["train/grad_norm"] = sum(finite) / len(finite)
        self._reset()
        return values

    def at_log(self, state, lr: float, steps_per_epoch: int, model_seconds: float = None) -> dict:
        """A log step's train/* values: the window's means (reduced) with the run's lr, epoch and skipped steps."""
        values = {**self.reduced(model_seconds), "train/lr": lr, "train/epoch": state.step / steps_per_epoch}
        if state.skipped_steps:
            values["train/skipped_steps"] = state.skipped_steps
        if self.accelerator.scaler is not None:
            values["train/amp_skipped_steps"] = state.amp_skipped_steps
        return values


def run_figures(state, steps_per_epoch: int, world_size: int, global_batch: int, wall_time_s: float) -> dict:
    """results.json's figures of a run: its steps, throughput over the training time (evaluations and checkpoints
    left out), memory and batch."""
    train_time_s = max(state.train_time_s, 1e-9)
    return {"steps": state.step, "epochs": state.step / steps_per_epoch,
            "images_per_s": state.images / train_time_s, "samples_per_s": state.samples / train_time_s,
            "train_time_s": state.train_time_s, "wall_time_s": wall_time_s, "world_size": world_size,
            "peak_memory_mb": peak_memory_mb(), "global_batch": global_batch}


def peak_memory_mb() -> float:
    """Peak GPU memory allocated by this process, or without a GPU its peak resident memory."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
