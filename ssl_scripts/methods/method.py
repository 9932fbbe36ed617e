"""What a method of the Siamese family defines (train_siamese.py --method): its paper, its published recipe, its
options, its head and its loss on two views of each image. The Siamese task (tasks/siamese.py) does the rest: the
pairs and views, the online linear probe, the collapse monitor, the evaluation."""
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_scripts.models import encoders


class HeadOutput(NamedTuple):
    projection: torch.Tensor  # the projector's output, every view
    prediction: Optional[torch.Tensor]  # the predictor's (BYOL, SimSiam), else None
    probe_logits: Optional[torch.Tensor]  # the online linear probe's, on the detached features; None without it


class SiameseHead(nn.Module):
    """The network after the encoder: projector, then the predictor if any; the online probe beside them on the
    detached features (its loss never reaches the encoder); a momentum copy of encoder and projector if any
    (called by the method, outside the DDP forward: it takes no gradient); extra state buffers (MoCo's queue)."""

    def __init__(self, projector: nn.Module, predictor: nn.Module = None, probe: nn.Module = None,
                 momentum: nn.Module = None):
        super().__init__()
        self.projector, self.predictor, self.probe, self.momentum = projector, predictor, probe, momentum

    @property
    def first_layer(self) -> nn.Module:  # what EncoderWithHead asks: may the head take the encoder's last map?
        return self.projector[0] if isinstance(self.projector, nn.Sequential) else self.projector

    def forward(self, features: torch.Tensor) -> HeadOutput:
        projection = self.projector(features)
        prediction = self.predictor(projection) if self.predictor is not None else None
        probe_logits = self.probe(features.detach()) if self.probe is not None else None
        return HeadOutput(projection, prediction, probe_logits)


def wide_projector(args, encoder, last_batch_norm: bool = False) -> nn.Sequential:
    """The 3-layer projector of SimSiam, Barlow Twins and VICReg (solo-learn's): features -> --projector-hidden x 2 ->
    --embedding-dim, batch norm after each hidden layer (--head-bn), and after the last one too for SimSiam."""
    return encoders.mlp([encoder.feature_dim, args.projector_hidden, args.projector_hidden, args.embedding_dim],
                        batch_norm=args.head_bn, last_batch_norm=last_batch_norm)


def negative_cosine(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-cos(p, z), averaged over the rows (SimSiam's D; BYOL's 2 - 2 cos is 2 + 2 x this)."""
    return -F.cosine_similarity(prediction, target, dim=1).mean()


def embedding_std(projection: torch.Tensor) -> torch.Tensor:
    """The per-dimension standard deviation over the batch of the L2-normalized embeddings, averaged over the
    dimensions (SimSiam's collapse monitor, lightly's std_of_l2_normalized): about 1/sqrt(dim) when they spread
    over the sphere, 0 when every image gets the same embedding."""
    return F.normalize(projection.detach().float(), dim=1).std(dim=0).mean()


class Method:
    """A method of the Siamese family. Subclasses set the class attributes and define head and loss."""
    name = ""  # --method's value
    summary = ""  # one line for --help
    paper = ""  # authors, year, title
    recipe = {}  # option defaults: a published CIFAR-10 / ResNet-18 recipe (explicit options win)
    recipe_source = ""  # where `recipe` comes from
    published = ""  # the anchors' published CIFAR-10 numbers for it
    must_match = ()  # its options a checkpoint cannot be resumed under when changed
    label_pairs = False  # trains on label pairs too (--pairs label); the others take two views of each image

    @classmethod
    def add_options(cls, group) -> None:
        """Its own options (each help line starting with its name), added to the Siamese task's group."""

    @classmethod
    def option_checks(cls, args) -> list:
        return []

    def __init__(self, args):
        self.args = args

    def head(self, encoder, probe: nn.Module = None) -> SiameseHead:
        raise NotImplementedError

    def loss(self, model, head: SiameseHead, views: torch.Tensor, output: HeadOutput, similar: torch.Tensor):
        """(loss, embeddings) of one micro-batch: views holds view 1 of every image then view 2 (the anchors then
        their partners), output is model(views) (one DDP forward), head the plain head (for a momentum copy or a
        queue). embeddings: the projections the collapse monitor measures."""
        raise NotImplementedError

    def optimizer_groups(self, head: SiameseHead) -> list:
        """Parameter groups of the head with options of their own ({"params", "lr", "weight_decay", ...}; "static_lr":
        True keeps the group's lr off the schedule), kept out of the optimizer's main groups."""
        return []

    def after_update(self, head: SiameseHead, encoder: nn.Module, step: int, total_steps: int) -> None:
        """After every optimizer step (step: its index, 0 for the first; total_steps: the run's): a momentum copy
        follows the trained weights."""
