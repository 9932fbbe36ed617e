"""Self-supervised and contrastive representation learning on images, with Accelerate.

commands: what users type (train_rotation, train_siamese, evaluate). loop: the one training loop. tasks: a pretext
task per module. training: the Run around the loop (cadence, checkpoints, stops). data: images as uint8 tensors,
where the train split lives, decoding, augmentation, pairs. models: encoders and losses. optim: optimizers and lr
schedules. evaluation: what the frozen encoder is judged by and shown with. outputs: what a run writes. runtime:
processes, their launcher, what they agree on, how a command ends, files and locks. config: the options' parser.
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
