"""Siamese network with a pair loss (contrastive: Hadsell, Chopra & LeCun 2006; NT-Xent: Chen et al. 2020).

One shared encoder embeds both images of a pair; similar pairs are pulled together, dissimilar pairs pushed
apart. Pairs come from labels (same class = similar) or, self-supervised, from augmentation (two views of one
image = similar). The encoder is judged like every task's (k-NN and linear probe), plus the ROC-AUC of embedding
distances on balanced test pairs of the labelled set and, for augment pairs, on views of held-out images.

    accelerate launch --config_file accelerate_configs/cpu.yaml train_siamese.py --dataset synthetic \
        --model simple_cnn --max-steps 100
"""
import torch
import torch.nn.functional as F

from ssl_scripts.data import image_data
from ssl_scripts.data import augment
from ssl_scripts.evaluation import frozen, media
from ssl_scripts.models import encoders
from ssl_scripts.models.losses import LOSSES
from ssl_scripts.data.pairs import PairSampler, balanced_test_pairs
from ssl_scripts.tasks.task import Batch, Task

# The projection head's hidden width per model (SimCLR-style heads: 512); the original tutorial's simple_cnn
# head: fc(4096 -> 128 -> 128).
HEAD_HIDDEN = {"simple_cnn": 128}
DEFAULT_HEAD_HIDDEN = 512
# Held-out images whose two views eval/view_pair_auc compares: the views are drawn on the host, seeded.
VIEW_PAIR_IMAGES = 1000


class Siamese(Task):
    name = "siamese"
    description = __doc__.splitlines()[0]
    headline_metric = "eval/pair_auc"
    must_match = ("pairs", "embedding_dim", "loss")

    @classmethod
    def add_options(cls, parser) -> None:
        group = parser.add_argument_group("pairs and loss")
        group.add_argument("--pairs", choices=("label", "augment"), default="label",
                           help="label: same class = similar; augment: two views of one image = similar (no labels)")
        group.add_argument("--positive-fraction", type=float, default=None,
                           help="share of similar pairs (default: 0.5; 1 for a loss whose negatives are the rest of "
                                "the batch)")
        group.add_argument("--loss", choices=tuple(LOSSES), default="contrastive",
                           help="contrastive: similar pairs pulled together, dissimilar ones pushed beyond --margin; "
                                "ntxent: SimCLR's, every other view in the global batch a negative (--pairs augment)")
        for loss in LOSSES.values():
            loss.add_options(group)
        group.add_argument("--embedding-dim", type=int, default=128, help="width of the projection head's output")

    @classmethod
    def option_defaults(cls, args) -> dict:
        defaults = {}
        if args.augment is None:
            # Two views of one image need SimCLR's augmentation, or the network matches them by their pixels alone.
            defaults["augment"] = "simclr" if args.pairs == "augment" else "crop_flip"
        if args.positive_fraction is None:
            defaults["positive_fraction"] = 1.0 if LOSSES[args.loss].every_pair_similar else 0.5
        return defaults

    @classmethod
    def option_checks(cls, args) -> list:
        every_pair_similar = LOSSES[args.loss].every_pair_similar
        return [
            (args.pairs == "augment" or args.dataset in image_data.LABELLED,
             f"--pairs label needs a label for every train image, and --dataset {args.dataset} has unlabeled ones: "
             f"use --pairs augment (two views of one image are a similar pair)"),
            (0 <= args.positive_fraction <= 1,
             f"--positive-fraction must be within [0, 1] (got {args.positive_fraction})"),
            (not every_pair_similar or (args.pairs == "augment" and args.positive_fraction == 1),
             f"--loss {args.loss} takes two views of every image, the rest of the batch as its negatives: use "
             f"--pairs augment and leave --positive-fraction at 1"),
            (args.margin > 0, f"--margin must be > 0 (got {args.margin})"),
            (args.temperature > 0, f"--temperature must be > 0 (got {args.temperature})"),
            (args.embedding_dim > 0, f"--embedding-dim must be >= 1 (got {args.embedding_dim})"),
        ]

    def __init__(self, args, dataset, train_source):
        super().__init__(args, dataset, train_source)
        # Each anchor's partner is a pure function of (seed, epoch, index), drawn where the indices are.
        self.pairs = PairSampler(dataset.train_labels, args.pairs, args.positive_fraction, args.seed,
                                 dataset.classes).to(train_source.index_device)
        self.loss = LOSSES[args.loss]

    @classmethod
    def head(cls, args, encoder):
        hidden = HEAD_HIDDEN.get(encoder.name, DEFAULT_HEAD_HIDDEN)
        return encoders.mlp([encoder.feature_dim, hidden, args.embedding_dim])

    def make_batch(self, indices, epoch):
        # Both images of every pair go through the encoder in one forward pass (one DDP call per step).
        partners, similar = self.pairs(indices, epoch)
        views = augment.augment(torch.cat([self.train_source[indices], self.train_source[partners]]),
                                self.args.augment)
        return Batch(views, similar.to(views.device, non_blocking=True))

    def images_to_read(self, indices, epoch):
        return [indices, self.pairs(indices, epoch)[0]]  # make_batch's partners: the same pure function

    def step(self, model, batch):
        emb_anchor, emb_partner = model(batch.inputs).chunk(2)
        loss = self.loss.compute(emb_anchor, emb_partner, batch.targets, self.args)
        return loss, {"positive_fraction": batch.targets.mean()}

    def evaluate(self, accelerator, model, labelled, between_batches=None):
        metrics = {}
        if labelled:
            metrics.update(pair_metrics(accelerator, model, labelled.test_images, labelled.test_labels,
                                        self.args.eval_batch_size, between_batches))
        if self.args.pairs == "augment":
            metrics.update(view_pair_metrics(accelerator, model, self.dataset.test_images, self.args.augment,
                                             self.args.eval_batch_size, between_batches=between_batches))
        return metrics


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
