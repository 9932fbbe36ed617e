"""When a run logs, checkpoints, checks its gradients and stop signals, and evaluates: decisions on the options
and the step counts alone, asked by the Run after each optimizer step and each epoch."""
from tqdm.auto import tqdm

from ssl_scripts.evaluation.options import DEFAULT_EVAL_EVERY


class Cadence:
    """Steps are optimizer steps (1 = the first); the last one (total_steps) logs and checkpoints. first_step: the
    first this process trains (after a resume, the one after the checkpoint's), where stop signals that came
    while the data loaded are agreed on."""

    def __init__(self, args, total_steps: int, num_processes: int, first_step: int = 1):
        self.args, self.total_steps, self.first_step = args, total_steps, first_step
        self.one_process = num_processes == 1
        self._said_evaluations_apart = False

    def due_log(self, step: int) -> bool:
        return step % self.args.log_every == 0 or step >= self.total_steps

    def due_checkpoint(self, step: int) -> bool:
        return step % self.args.checkpoint_every == 0 or step >= self.total_steps

    def due_finite_check(self, step: int) -> bool:
        """Where the host waits for the device anyway (a check every step would stall a GPU every step), and before
        a checkpoint is written: a checkpoint never holds a step trained on a bad batch."""
        return self.due_log(step) or self.due_checkpoint(step) or step == self.first_step

    def due_stop_check(self, step: int) -> bool:
        """An all-reduce of the stop signals: with the finite check, or every step on one process (no device)."""
        return self.one_process or self.due_finite_check(step)

    def due_evaluation(self, epoch: int, images_trained: int, images_evaluated: int, is_main_process: bool) -> bool:
        """Whether to evaluate after `epoch`: every --eval-every epochs. Without --eval-every, every
        DEFAULT_EVAL_EVERY epochs once the images trained on since the last evaluation are at least the
        images_evaluated that an evaluation encodes (a short run on a small dataset is then not mostly evaluation)."""
        every = self.args.eval_every if self.args.eval_every is not None else DEFAULT_EVAL_EVERY
        if self.args.skip_eval or every <= 0 or (epoch + 1) % every:
            return False
        if self.args.eval_every is not None or images_trained >= images_evaluated:
            return True
        if not self._said_evaluations_apart and is_main_process:
            tqdm.write(f"evaluations further apart than every {every} epochs: {images_trained:,} images trained "
                       f"since the last, fewer than the {images_evaluated:,} an evaluation encodes (--eval-every N "
                       f"keeps N)")
        self._said_evaluations_apart = True
        return False
