"""Where a run is (step, epoch, position in the epoch, its counters): saved in every checkpoint."""


class TrainState:
    """Where the run is; saved in every checkpoint (Accelerate's register_for_checkpointing)."""

    def __init__(self):
        self.step = 0  # optimizer steps done
        self.epoch = 0
        self.batches_in_epoch = 0  # micro-batches of `epoch` already trained on
        self.images = 0  # over all processes
        self.samples = 0
        self.train_time_s = 0.0
        self.epoch_start_train_time_s = 0.0
        self.skipped_steps = 0  # non-finite gradients, --nan-policy skip
        self.amp_skipped_steps = 0  # fp16: steps the GradScaler skipped on overflow (normal, not errors)
        self.evaluated_step = 0  # the step of the last evaluation during training (0: none, or the untrained one)
        self.init_metrics = {}

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        self.__dict__.update(state)
