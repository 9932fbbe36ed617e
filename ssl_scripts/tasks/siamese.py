"""Siamese network (one shared encoder) on two images at a time, by --method: the contrastive loss (Hadsell, Chopra &
LeCun 2006) on label or augment pairs, or a method of the Siamese family on two views of each image (SimCLR, SimSiam,
BYOL, MoCo v2, Barlow Twins, VICReg; ssl_scripts/methods/, a file each).

Pairs come from labels (same class = similar) or, self-supervised, from augmentation (two views of one image =
similar). An online linear probe on the detached encoder features trains alongside on labelled data, and the
embeddings' spread over the batch is watched for a collapse. The encoder is judged like every task's (k-NN and
linear probe), plus the ROC-AUC of embedding distances on balanced test pairs of the labelled set and, for augment
pairs, on views of held-out images.

    accelerate launch --config_file accelerate_configs/cpu.yaml train_siamese.py --dataset synthetic \
        --model simple_cnn --max-steps 100
    accelerate launch train_siamese.py --method byol --model resnet18   # solo-learn's CIFAR-10 recipe, one GPU
"""
import argparse
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ssl_scripts.data import image_data
from ssl_scripts.data import augment
from ssl_scripts.evaluation import frozen, media, online_probe
from ssl_scripts.methods import METHODS
from ssl_scripts.methods.method import embedding_std
from ssl_scripts.data.pairs import PairSampler, balanced_test_pairs
from ssl_scripts.tasks.task import Task

# Held-out images whose two views eval/view_pair_auc compares: the views are drawn on the host, seeded.
VIEW_PAIR_IMAGES = 1000
# train/embedding_std under this share of 1/sqrt(dim) (the spread of embeddings over the sphere): collapsed.
COLLAPSED_SPREAD = 0.1
# The online probe's lr under SGD and LARS (under AdamW the run's own): on unit-length features (online_probe.py)
# SGD is stable up to ~7 and learns slowly at solo-learn's 0.1, set for raw ResNet features.
ONLINE_PROBE_LR = 1.0
# The options of the Siamese family that depend on the method: None until its recipe (or the fallback) decides.
METHOD_FALLBACKS = {"embedding_dim": 128, "predictor_hidden": 512, "temperature": 0.5, "momentum_base": 0.99,
                    "momentum_final": 1.0}


class ViewBatch(NamedTuple):
    inputs: torch.Tensor  # view 1 (the anchors) of every image, then view 2 (their partners)
    targets: torch.Tensor  # 1: the pair is similar
    labels: torch.Tensor  # the class of each input (for the online probe), or None


class Siamese(Task):
    name = "siamese"
    description = __doc__.splitlines()[0]
    headline_metric = "eval/pair_auc"
    must_match = ("pairs", "embedding_dim", "method", "projector_hidden", "predictor_hidden", "head_bn",
                  "online_probe")

    @classmethod
    def add_options(cls, parser) -> None:
        group = parser.add_argument_group("method and pairs")
        group.add_argument("--method", choices=tuple(METHODS), default="contrastive",
                           help="\n".join(f"{name}: {method.summary}" for name, method in METHODS.items())
                                + "\n(each one's recipe and source: docs/methods.md)")
        group.add_argument("--loss", help=argparse.SUPPRESS)  # renamed --method: said in one line if used
        group.add_argument("--pairs", choices=("label", "augment"), default=None,
                           help="label: same class = similar; augment: two views of one image = similar (no labels) "
                                "(default: label for contrastive, augment for every other method)")
        group.add_argument("--positive-fraction", type=float, default=None,
                           help="share of similar pairs (default: 0.5; 1 for a method whose negatives are the rest of "
                                "the batch, or that has none)")
        group.add_argument("--embedding-dim", type=int, default=None,
                           help="width of the projector's output (default: the method's recipe, else 128)")
        group.add_argument("--projector-hidden", type=int, default=None,
                           help="the projector's hidden width (default: the method's recipe; contrastive, simclr: 512, "
                                "simple_cnn 128)")
        group.add_argument("--predictor-hidden", type=int, default=None,
                           help="byol, simsiam: the predictor's hidden width (default: the method's recipe)")
        group.add_argument("--head-bn", action=argparse.BooleanOptionalAction, default=True,
                           help="batch norm in the projector and predictor where the method's paper has it (without "
                                "it a step is the same on any number of processes, as tests check)")
        group.add_argument("--temperature", type=float, default=None,
                           help="simclr, mocov2: the softmax temperature (default: the method's recipe: simclr 0.5, "
                                "SimCLR's CIFAR-10 runs; mocov2 0.2, solo-learn's)")
        group.add_argument("--momentum-base", type=float, default=None,
                           help="byol, mocov2: the momentum copy's EMA factor at the first step (default: the "
                                "recipe's, 0.99)")
        group.add_argument("--momentum-final", type=float, default=None,
                           help="byol, mocov2: ... at the last step, reached on a cosine (default: the recipe's: "
                                "byol 1.0, mocov2 0.999)")
        group.add_argument("--online-probe", action=argparse.BooleanOptionalAction, default=True,
                           help="train a linear classifier on the detached encoder features alongside (labelled data "
                                "only; its loss never reaches the encoder): train/ and eval/online_linear_acc")
        group.add_argument("--online-probe-lr", type=float, default=None,
                           help=f"its learning rate (default: {ONLINE_PROBE_LR} under sgd and lars, on its unit-length "
                                f"features; the run's --lr under adamw)")
        for method in METHODS.values():
            method.add_options(group)

    @classmethod
    def recipe(cls, args) -> dict:
        recipe = dict(METHODS[args.method].recipe)
        if args.optimizer is not None and args.optimizer != recipe.get("optimizer", args.optimizer):
            for name in ("lr", "weight_decay", "warmup_epochs"):  # tuned for the recipe's optimizer, not this one
                recipe.pop(name, None)
        return {name: value for name, value in recipe.items() if getattr(args, name, None) is None}

    @classmethod
    def option_defaults(cls, args) -> dict:
        method = METHODS[args.method]
        defaults = {name: value for name, value in METHOD_FALLBACKS.items() if getattr(args, name) is None}
        pairs = args.pairs or ("label" if method.label_pairs else "augment")
        defaults["pairs"] = pairs
        if args.augment is None:
            # Two views of one image need SimCLR's augmentation, or the network matches them by their pixels alone.
            defaults["augment"] = "simclr" if pairs == "augment" else "crop_flip"
        if args.positive_fraction is None:
            defaults["positive_fraction"] = 0.5 if method.label_pairs else 1.0
        if args.online_probe_lr is None:
            defaults["online_probe_lr"] = args.lr if args.optimizer == "adamw" else ONLINE_PROBE_LR
        return defaults

    @classmethod
    def option_checks(cls, args) -> list:
        method = METHODS[args.method]
        return [
            (args.loss is None, f"--loss is now --method: --loss {args.loss} is --method "
                                f"{ {'ntxent': 'simclr'}.get(args.loss, args.loss)}"),
            (args.pairs == "augment" or args.dataset in image_data.LABELLED,
             f"--pairs label needs a label for every train image, and --dataset {args.dataset} has unlabeled ones: "
             f"use --pairs augment (two views of one image are a similar pair)"),
            (0 <= args.positive_fraction <= 1,
             f"--positive-fraction must be within [0, 1] (got {args.positive_fraction})"),
            (method.label_pairs or (args.pairs == "augment" and args.positive_fraction == 1),
             f"--method {args.method} takes two views of every image: use --pairs augment and leave "
             f"--positive-fraction at 1"),
            (args.embedding_dim > 0, f"--embedding-dim must be >= 1 (got {args.embedding_dim})"),
            (0 <= args.momentum_base <= args.momentum_final <= 1,
             f"--momentum-base and --momentum-final must satisfy 0 <= base <= final <= 1 (got {args.momentum_base}, "
             f"{args.momentum_final})"),
            (args.online_probe_lr > 0, f"--online-probe-lr must be > 0 (got {args.online_probe_lr})"),
            *method.option_checks(args),
        ]

    def __init__(self, args, dataset, train_source):
        super().__init__(args, dataset, train_source)
        # Each anchor's partner is a pure function of (seed, epoch, index), drawn where the indices are.
        self.pairs = PairSampler(dataset.train_labels, args.pairs, args.positive_fraction, args.seed,
                                 dataset.classes).to(train_source.index_device)
        self.method = METHODS[args.method](args)
        self.must_match = Siamese.must_match + self.method.must_match
        labelled = bool(dataset.classes) and bool((dataset.train_labels >= 0).all())
        self.probe_classes = len(dataset.classes) if args.online_probe and labelled else 0
        if args.online_probe and not labelled:
            print(f"note: no online linear probe: --dataset {args.dataset}'s train images are not all labelled",
                  flush=True)
        self.labels = dataset.train_labels.long().to(train_source.index_device) if self.probe_classes else None
        self.collapse_said = False

    @classmethod
    def head(cls, args, encoder, probe_classes: int = 0):
        """The method's head; with a linear probe of probe_classes classes on the features (0: none)."""
        probe = online_probe.OnlineProbe(encoder.feature_dim, probe_classes) if probe_classes else None
        return METHODS[args.method](args).head(encoder, probe)

    def build_head(self, encoder):
        # Kept: the momentum copy and the queue are used outside the prepared model's forward, on the plain modules
        # (unwrapping a compiled DDP model with accelerate's extract_model_from_parallel rewires it).
        self.encoder, self.network_head = encoder, self.head(self.args, encoder, self.probe_classes)
        return self.network_head

    def optimizer_groups(self, head) -> list:
        """The method's own (SimSiam's predictor at a fixed lr), then the online probe's: its own lr, no weight decay
        (solo-learn's classifier group), plain SGD under LARS, kept apart (out of the gradient clipping and the
        finite check)."""
        groups = self.method.optimizer_groups(head)
        if head.probe is not None:
            groups.append({"params": list(head.probe.parameters()), "lr": self.args.online_probe_lr,
                           "weight_decay": 0.0, "apart": True, "lars_exclude": True})
        return groups

    def make_batch(self, indices, epoch):
        # Both images of every pair go through the encoder in one forward pass (one DDP call per step).
        partners, similar = self.pairs(indices, epoch)
        views = augment.augment(torch.cat([self.train_source[indices], self.train_source[partners]]),
                                self.args.augment)
        labels = None if self.labels is None else torch.cat([self.labels[indices], self.labels[partners]])
        return ViewBatch(views, similar.to(views.device, non_blocking=True),
                         None if labels is None else labels.to(views.device, non_blocking=True))

    def images_to_read(self, indices, epoch):
        return [indices, self.pairs(indices, epoch)[0]]  # make_batch's partners: the same pure function

    def step(self, model, batch):
        output = model(batch.inputs)  # the one DDP forward: the online network (and the probe) on every view
        loss, embeddings = self.method.loss(model, self.network_head, batch.inputs, output, batch.targets)
        metrics = {"method_loss": loss.detach(), "embedding_std": embedding_std(embeddings)}
        if self.method.label_pairs:
            metrics["positive_fraction"] = batch.targets.mean()
        if output.probe_logits is not None:  # on detached features: its gradient reaches the probe only
            probe_loss, probe_metrics = online_probe.train_terms(output.probe_logits, batch.labels)
            metrics.update(probe_metrics)
            loss = loss + probe_loss
        return loss, metrics

    def after_update(self, model, step, total_steps):
        self.method.after_update(self.network_head, self.encoder, step, total_steps)

    def watch(self, logged, step):
        spread = logged.get("train/embedding_std")
        healthy = 1 / math.sqrt(self.args.embedding_dim)
        if spread is not None and spread < COLLAPSED_SPREAD * healthy and not self.collapse_said:
            self.collapse_said = True
            print(f"warning: step {step}: the embeddings have collapsed: train/embedding_std {spread:.2g}, under "
                  f"{COLLAPSED_SPREAD:g} x 1/sqrt({self.args.embedding_dim}) = {COLLAPSED_SPREAD * healthy:.2g} (the "
                  f"spread of embeddings over the sphere), so every image gets about the same embedding; try a lower "
                  f"--lr, or the method's recipe", flush=True)

    def evaluate(self, accelerator, model, labelled, between_batches=None):
        metrics = {}
        if model.head.probe is not None:
            metrics.update(online_probe.metrics(accelerator, model.encoder, model.head.probe, self.dataset.test_images,
                                                self.dataset.test_labels, self.args.eval_batch_size, between_batches))
        if labelled:
            metrics.update(pair_metrics(accelerator, Embedder(model), labelled.test_images, labelled.test_labels,
                                        self.args.eval_batch_size, between_batches))
        if self.args.pairs == "augment":
            metrics.update(view_pair_metrics(accelerator, Embedder(model), self.dataset.test_images, self.args.augment,
                                             self.args.eval_batch_size, between_batches=between_batches))
        return metrics


class Embedder(torch.nn.Module):
    """The embeddings the pair metrics compare: the projector's outputs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).projection


def view_pair_metrics(accelerator, embedder, images: torch.Tensor, augmentation: str, batch_size: int,
                      seed: int = 0, between_batches=None) -> dict:
    """eval/view_pair_auc: ROC-AUC of the negative embedding distance between two augmented views of one image
    (similar) against a view of another image (dissimilar), on images never trained on: the augment pairs' own
    task, which needs no labels. The same views at every evaluation (seeded, on the host's generator only)."""
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:VIEW_PAIR_IMAGES]
    originals = images[chosen.sort().values].cpu()
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        views = torch.cat([augment.augment(originals, augmentation) for _ in range(2)])
    views = views.mul_(255).round_().to(torch.uint8)  # map_batches encodes uint8 images, as stored
    embeddings = F.normalize(frozen.features(accelerator, embedder, views, batch_size, between_batches), dim=1).cpu()
    if not accelerator.is_main_process:
        return {}
    first, second = embeddings.chunk(2)
    similar = (first - second).norm(dim=1)
    dissimilar = (first - second.roll(1, 0)).norm(dim=1)  # each image's view against the next image's
    return {"eval/view_pair_auc": frozen.roc_auc(-torch.cat([similar, dissimilar]),
                                                     torch.arange(2 * len(first)) < len(first))}


def pair_metrics(accelerator, embedder, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 between_batches=None) -> dict:
    """eval/pair_auc: ROC-AUC of the negative embedding distance on a fixed, balanced set of same/different-class
    test pairs; with histograms of both distances and a PCA of the test embeddings (main process only)."""
    embeddings = F.normalize(frozen.features(accelerator, embedder, images, batch_size, between_batches),
                             dim=1).cpu()
    if not accelerator.is_main_process:
        return {}
    pairs = balanced_test_pairs(labels.cpu(), num_pairs=min(4000, 4 * len(labels)))
    if pairs is None:  # no class with two test images: no same-class pair to score
        return {}
    anchors, partners, similar = pairs
    distance = (embeddings[anchors] - embeddings[partners]).norm(dim=1)
    shown = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:2000]
    return {"eval/pair_auc": frozen.roc_auc(-distance, similar),
            "eval/distance_similar": media.Histogram(distance[similar.bool()].numpy()),
            "eval/distance_dissimilar": media.Histogram(distance[~similar.bool()].numpy()),
            "eval/embedding_pca": media.scatter(media.pca_2d(embeddings[shown]), labels.cpu()[shown],
                                                "PCA of test embeddings, coloured by class")}
