"""Shared machinery of every task (tasks/) and of evaluate.py.

loop: the one training entry point. cli: how every command ends. config: the shared options and a task's, parsed
together. distributed: the Accelerator and what processes agree on. data: datasets as uint8 tensors and the
order of their batches; placement: where the train split lives; decode, downloads: where the pixels come from.
augment: batched image transforms. models: encoders (each registered with its recipe). losses, pairs: pair losses
and which pairs are similar. optimizers, schedules: --optimizer and the learning rates. training: the loop's
machinery (the Accelerator, the output dir's claim, the seed, the Run). checkpoints, outputs, tracking: what a
run writes; files: how it writes (whole or not at all, one line when the disk is full). evaluation, probes, media:
what the encoder is judged by and shown with. diagnostics: opt-in instruments.
"""


class UserError(Exception):
    """A problem the user can fix (bad path, bad option, bad file): shown as one line, no traceback. agreed: raised
    alike on every process (a decision they share), so said once, by the main process."""

    def __init__(self, message: str, agreed: bool = False):
        super().__init__(message)
        self.agreed = agreed


class Preempted(Exception):
    """A run stopped on a signal (Slurm's preemption notice, scancel, a time limit) after saving a checkpoint: the
    same command resumes it. Shown as one line, exit status 3."""
