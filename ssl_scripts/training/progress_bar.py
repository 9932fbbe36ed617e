"""The training's progress bar (local main process): redrawn rarely in a log file, its rate and time left leaving
out what is not training (evaluations, checkpoints)."""
import time
from contextlib import contextmanager

from tqdm.auto import tqdm

from ssl_scripts.runtime import progress


class TrainingBar:
    """No bar until start(); paused() works before it too (a checkpoint written on resume)."""

    def __init__(self):
        self.bar = None

    def start(self, total_steps: int, step: int, show: bool) -> None:
        self.bar = tqdm(total=total_steps, initial=step, dynamic_ncols=True,
                        mininterval=progress.redraw_interval_s(), disable=not show, desc="train")

    def step_done(self) -> None:
        self.bar.update(1)

    def show(self, values: dict) -> None:
        self.bar.set_postfix(loss=f"{values['train/loss']:.4f}", img_s=f"{values['train/images_per_s']:.0f}")

    def close(self) -> None:
        progress.close(self.bar)

    @contextmanager
    def paused(self):
        """What runs within does not count in the bar's rate and time left."""
        started = time.time()  # tqdm's clock
        try:
            yield
        finally:
            if self.bar is not None and not self.bar.disable:
                paused = time.time() - started
                self.bar.start_t += paused
                self.bar.last_print_t += paused
