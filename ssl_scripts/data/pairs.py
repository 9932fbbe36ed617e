"""Pair sampling for the Siamese network: every partner is a pure function of (seed, epoch, anchor index).

So the pairs of an epoch do not depend on the number of processes, loader workers or a resume: Accelerate's
seedable sampler shards the anchors across ranks, and each rank computes its anchors' partners on its own.
"""
import torch

from ssl_scripts import UserError

_MASK = 0xFFFFFFFF


def _hash(x):
    """A 32-bit integer mixer, of a Python int or an int64 tensor (arithmetic that never overflows: factor < 2^27)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK
    return (x >> 16) ^ x


def uniforms(seed: int, epoch: int, anchors: torch.Tensor, stream: int) -> torch.Tensor:
    """Uniform [0, 1) numbers determined by (seed, epoch, anchor, stream) alone."""
    key = _hash((seed * 1_000_003 + epoch) & _MASK)  # a Python int: no tensor copied to the device per call
    x = _hash(_hash(anchors.long() ^ key) ^ (stream * 0x9E3779B1 & _MASK))
    return x.double() / 2 ** 32


class PairSampler:
    """Partners for anchors. mode 'label': same class = similar; 'augment': the same image (two views) = similar.

    Each anchor is similar to its partner with probability `positive_fraction`. A uniform random partner, as the
    original tutorial drew, is similar only about 1 time in 10 on CIFAR-10.
    """

    def __init__(self, labels: torch.Tensor, mode: str = "label", positive_fraction: float = 0.5, seed: int = 0,
                 class_names=None, lonely_classes_allowed: bool = False):
        self.mode, self.positive_fraction, self.seed = mode, positive_fraction, seed
        self.num_images = len(labels)
        labels = labels.long()
        if mode == "label" and bool((labels < 0).any()):
            raise UserError("--pairs label needs a label for every train image, and this dataset has unlabeled "
                            "ones: use --pairs augment (two views of one image are a similar pair)")
        if mode == "augment":  # partners are any other image: the labels are not needed
            labels = torch.zeros_like(labels)
        self.order = torch.argsort(labels, stable=True)  # indices grouped by class
        counts = torch.bincount(labels)
        self.class_start = torch.cumsum(counts, 0) - counts
        self.class_count = counts
        self.labels = labels
        lonely = [c for c, n in enumerate(counts.tolist()) if n == 1]
        if mode == "label" and lonely and not lonely_classes_allowed:
            names = [class_names[c] if class_names else str(c) for c in lonely]
            raise UserError(f"--pairs label needs at least two train images in every class, and {', '.join(names)} "
                            f"{'has' if len(names) == 1 else 'have'} one: add images, or use --pairs augment")

    def to(self, device):
        for name in ("order", "class_start", "class_count", "labels"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def __call__(self, anchors: torch.Tensor, epoch: int, force_similar: torch.Tensor = None):
        """(partners, similar) for these anchor indices in this epoch; similar is 1.0 or 0.0."""
        u = [uniforms(self.seed, epoch, anchors, stream) for stream in range(3)]
        similar = u[0] < self.positive_fraction if force_similar is None else force_similar.bool()
        anchors = anchors.long()
        if self.mode == "augment":
            other = (u[1] * (self.num_images - 1)).long()
            other = other + (other >= anchors).long()  # any image but the anchor itself
            partners = torch.where(similar, anchors, other)
        else:
            c = self.labels[anchors]
            start, count = self.class_start[c], self.class_count[c]
            # similar: uniform over the anchor's class, the anchor itself swapped for the class's last member
            same = self.order[start + (u[1] * (count - 1)).long()]
            same = torch.where(same == anchors, self.order[start + count - 1], same)
            # dissimilar: uniform over the other classes' block-free ordering
            r = (u[2] * (self.num_images - count)).long()
            different = self.order[torch.where(r < start, r, r + count)]
            partners = torch.where(similar, same, different)
        return partners, similar.float()


def balanced_test_pairs(labels: torch.Tensor, num_pairs: int = 4000, seed: int = 0):
    """A fixed, seeded set of test pairs, half same-class and half different-class (for eval/pair_auc). The
    same-class half is anchored on classes with two images or more (a small evaluation set may have a class with
    one); None if there is none."""
    labels = labels.long()
    sampler = PairSampler(labels, "label", seed=seed, lonely_classes_allowed=True)
    paired = (torch.bincount(labels)[labels] >= 2).nonzero().squeeze(1)
    if len(paired) == 0:
        return None
    g = torch.Generator().manual_seed(seed)
    half = num_pairs // 2
    anchors = torch.cat([paired[torch.randint(0, len(paired), (half,), generator=g)],
                         torch.randint(0, len(labels), (num_pairs - half,), generator=g)])
    similar = torch.arange(num_pairs) < half
    partners, similar = sampler(anchors, epoch=0, force_similar=similar)
    return anchors, partners, similar
