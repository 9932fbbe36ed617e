"""Shared machinery of train_rotation.py, train_siamese.py and evaluate.py.

cli: the command-line wrapper. config: the shared options. distributed: the Accelerator and what processes agree
on. data: datasets as uint8 tensors and the order of their batches; placement: where the train split lives.
augment: batched image transforms. models: encoders and heads (each model registered with its recipe). losses,
pairs: the siamese script's loss and pairs. training: the loop's state (epochs, steps, stops). checkpoints,
tracking: what a run writes; files: how it writes (whole or not at all, one line when the disk is full).
schedules: learning rates. evaluation, probes, media: what the encoder is judged by and shown with. diagnostics:
opt-in instruments.
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
