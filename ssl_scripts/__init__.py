"""Self-supervised and contrastive representation learning on images, with Accelerate.

commands: what users type (train_rotation, train_siamese, evaluate). tasks: a pretext task per module. training:
the one loop and the Run around it (checkpoints, optimizers, schedules). data: images as uint8 tensors, where the
train split lives, decoding, augmentation, pairs. models: encoders and losses. evaluation: what the frozen encoder
is judged by and shown with. outputs: what a run writes and how. runtime: processes, their launcher and what they
agree on. config: the options, parsed once; cli: how every command ends.
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
