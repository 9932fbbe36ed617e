"""What a pretext task defines; the shared loop (ssl_scripts/loop.py) does the rest: data, the model around the task's
head, optimizer, schedule, checkpoints and resume, logs, the evaluation schedule and the final outputs.

A new task is one module under ssl_scripts/tasks/ with a Task subclass, and one entry in tasks.TASKS (or tasks.register):
its options and the ones a checkpoint must match, its default augmentation, its head, how a batch is made of the
train images, a short step, its evaluation and its dashboard pictures.
"""
from typing import NamedTuple

import torch
import torch.nn as nn


class Batch(NamedTuple):
    inputs: torch.Tensor  # what goes through the network in one forward pass; its length: the step's samples
    targets: torch.Tensor  # what the loss compares the outputs with


class Task:
    name = ""  # the registry's key, the tracker's project and the checkpoints' task
    description = ""  # the first line of --help
    must_match = ()  # options a checkpoint cannot be resumed under when changed (besides checkpoints.MUST_MATCH)
    default_augment = "crop_flip"  # --augment's default
    headline_metric = ""  # the eval/* metric of its own evaluation that sums it up (bench/gpu_check.py reports it)

    # ----------------------------------------------------------------------------------------- options
    @classmethod
    def add_options(cls, parser) -> None:
        """The task's own options, added to the shared parser (ssl_scripts/config.py)."""

    @classmethod
    def recipe(cls, args) -> dict:
        """{option: value}: a published recipe's values of options left unset (None), decided first: they win over
        the model's recipe (optimizer, lr, schedule) and the plain defaults (e.g. the Siamese methods')."""
        return {}

    @classmethod
    def option_defaults(cls, args) -> dict:
        """{option: value}: the task's defaults of options left unset (None), which may depend on its other options
        (config.parse_options decides them, after the model's recipe and the data's)."""
        return {"augment": cls.default_augment} if args.augment is None else {}

    @classmethod
    def option_checks(cls, args) -> list:
        """(ok, message) checks of the task's options, the message saying what to do (see config.require)."""
        return []

    # --------------------------------------------------------------------------------------- training
    def __init__(self, args, dataset, train_source):
        """args: the parsed options; dataset: the ImageData; train_source: the train split where it is placed
        (placement.TrainImages: train_source[indices] is a uint8 batch on the device)."""
        self.args, self.dataset, self.train_source = args, dataset, train_source

    @classmethod
    def head(cls, args, encoder) -> nn.Module:
        """The network after the encoder (which depends only on the options and the encoder), thrown away after
        training."""
        raise NotImplementedError

    def build_head(self, encoder) -> nn.Module:
        """This run's head: head(args, encoder), with what the data adds (e.g. the Siamese task's online probe)."""
        return self.head(self.args, encoder)

    def optimizer_groups(self, head) -> list:
        """Parameter groups of the head with options of their own ({"params", "lr", "weight_decay"}), kept out of
        the optimizer's main groups."""
        return []

    def make_batch(self, indices: torch.Tensor, epoch: int) -> Batch:
        """This micro-batch's inputs and targets from the train images at `indices` (augmented, on the device)."""
        raise NotImplementedError

    def images_to_read(self, indices: torch.Tensor, epoch: int) -> list:
        """The index batches make_batch(indices, epoch) reads from the train images, in the order it reads them: a
        streamed split decodes them all ahead, in one decode, as the loader draws `indices`."""
        return [indices]

    def step(self, model, batch: Batch):
        """(loss, metrics): the loss to backpropagate and train/* values (tensors stay on the device)."""
        raise NotImplementedError

    def after_update(self, model, step: int, total_steps: int) -> None:
        """After every optimizer step that updated the weights (step: its index, 0 for the first): e.g. a momentum
        copy follows them. model: as step() gets it (prepared)."""

    def watch(self, logged: dict, step: int) -> None:
        """The train/* values just logged (main process): e.g. a line in the log when they show a collapse."""

    # ------------------------------------------------------------------------------------- evaluation
    def evaluate(self, accelerator, model, labelled, between_batches=None) -> dict:
        """eval/* metrics and pictures beyond the shared k-NN and linear probe of the encoder on `labelled` (which
        the loop adds): the pretext's own, on images never trained on (self.dataset's test split).
        between_batches: the run's stop check, handed to frozen.map_batches / frozen.features."""
        return {}
