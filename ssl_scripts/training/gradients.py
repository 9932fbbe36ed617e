"""The gradients of each optimizer step: their norm (clipped to --max-grad-norm), whether to update with them
(--nan-policy), and the stop of a run whose gradients diverged."""
import torch

from ssl_scripts import UserError
from ssl_scripts.training.state import TrainState

# fp16: the GradScaler skips a step whose gradients overflow and halves its scale. A few skips at the start are
# normal; this many in a row (scale divided by 2^50) means the run diverged and would skip every step forever.
MAX_CONSECUTIVE_AMP_SKIPS = 50


def clipped_norm(accelerator, parameters: list, max_norm: float) -> torch.Tensor:
    """The gradients' total norm before clipping, on the device; clipped to max_norm in place if given."""
    if max_norm:
        norm = accelerator.clip_grad_norm_(parameters, max_norm)
    else:  # the norm only (logged, and --nan-policy's check); clipping to inf would still rewrite every gradient
        accelerator.unscale_gradients()
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    return norm.detach().float()


class NonFiniteGuard:
    """Which optimizer steps to take with non-finite gradients (--nan-policy), and when a run has diverged.

    abort: the first bad step is kept on the device and read only where the host waits anyway (check_finite, at
    log and checkpoint steps and epoch ends), so that steps do not each wait for the GPU; skip: deciding each
    step's update makes the host wait. fp16: the GradScaler's overflow steps are normal and only counted, unless
    MAX_CONSECUTIVE_AMP_SKIPS come in a row. last_checkpoint(): the newest good checkpoint's path (or None), which
    the error names."""

    def __init__(self, args, accelerator, state: TrainState, last_checkpoint):
        self.policy, self.accelerator, self.state = args.nan_policy, accelerator, state
        self.last_checkpoint = last_checkpoint
        self._first_bad_step = None
        self._amp_skips_in_a_row = 0

    def decide_update(self, norm: torch.Tensor) -> bool:
        """Whether the optimizer step now due may update the weights, given its gradients' norm."""
        step = self.state.step + 1
        if self.accelerator.scaler is not None:  # fp16: overflow is the GradScaler's to handle
            return True
        if self.policy == "abort":
            bad_step = (~torch.isfinite(norm)).long() * step  # 0 when finite
            first = self._first_bad_step
            self._first_bad_step = bad_step if first is None else torch.where(first > 0, first, bad_step)
            return True
        if torch.isfinite(norm).item():
            return True
        self.state.skipped_steps += 1
        self.accelerator.print(f"warning: non-finite loss or gradients at step {step}: update skipped "
                               f"({self.state.skipped_steps} so far, --nan-policy skip)", flush=True)
        return False

    def check_finite(self) -> None:
        """--nan-policy abort: raises if any step so far had non-finite gradients (reads one number from the
        device). The checkpoints are checked before they are written, so the newest one is always good."""
        bad_step = 0 if self._first_bad_step is None else int(self._first_bad_step.item())
        if bad_step:
            self._stop(f"non-finite loss or gradients at step {bad_step}",
                       "Try a lower --lr, --warmup-steps, --max-grad-norm 1, or --nan-policy skip")

    def check_amp_overflows(self) -> None:
        """fp16, after each optimizer step: counts a step the GradScaler skipped; raises when too many in a row."""
        if self.accelerator.scaler is None:
            return
        skipped = self.accelerator.optimizer_step_was_skipped  # the scaler reads its scale each step anyway
        self.state.amp_skipped_steps += skipped
        self._amp_skips_in_a_row = self._amp_skips_in_a_row + 1 if skipped else 0
        if self._amp_skips_in_a_row >= MAX_CONSECUTIVE_AMP_SKIPS:
            self._stop(f"fp16: the last {self._amp_skips_in_a_row} steps (to step {self.state.step + 1}) all "
                       f"overflowed and were skipped, so the run has diverged",
                       "Try --mixed_precision bf16, a lower --lr, --warmup-steps or --max-grad-norm 1")

    def _stop(self, problem: str, advice: str) -> None:
        last = self.last_checkpoint()
        raise UserError(f"{problem}: stopped. The last good checkpoint is {last or 'none (nothing saved yet)'}. "
                        f"{advice}")
