"""Shared machinery of train_rotation.py and train_siamese.py: options, data, models, evaluation, training."""


class UserError(Exception):
    """A problem the user can fix (bad path, bad option, bad file): shown as one line, no traceback."""
