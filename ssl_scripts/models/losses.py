"""Losses of a batch of embedding pairs, by name in LOSSES (train_siamese.py --loss): a new loss is a function here
and an entry there, with its own options. The label convention is stated once, here: similar = 1 means "these two
belong together"."""
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F


def contrastive_loss(emb1: torch.Tensor, emb2: torch.Tensor, similar: torch.Tensor, margin: float = 1.0,
                     normalize: bool = True) -> torch.Tensor:
    """Contrastive loss of Hadsell, Chopra & LeCun (2006), averaged over pairs.

    similar = 1 (similar pair):    d^2                 -> pulled together
    similar = 0 (dissimilar pair): max(0, margin - d)^2 -> pushed apart until at least `margin` away
    d is the Euclidean distance, by default between L2-normalized embeddings (so d lies in [0, 2]).
    Computed in float32 even under autocast: the squared distances of nearby bf16 embeddings lose all precision.
    (The tutorial swapped the two terms, pushing its same-class pairs apart.)
    """
    emb1, emb2 = emb1.float(), emb2.float()
    if normalize:
        emb1, emb2 = F.normalize(emb1, dim=1), F.normalize(emb2, dim=1)
    squared = (emb1 - emb2).pow(2).sum(dim=1)
    distance = squared.clamp_min(1e-12).sqrt()  # clamp: the gradient of sqrt is infinite at 0
    similar = similar.float()
    return (similar * squared + (1 - similar) * F.relu(margin - distance).pow(2)).mean()


def all_gather_with_gradients(x: torch.Tensor):
    """(every process's x concatenated in rank order, where this process's rows start). Gradients flow back to
    every process's x (torch.distributed.nn's all_gather sums them there); one process: (x, 0)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    import torch.distributed.nn.functional as distributed_autograd
    return torch.cat(distributed_autograd.all_gather(x)), dist.get_rank() * len(x)


def ntxent_loss(emb1: torch.Tensor, emb2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent of SimCLR (Chen et al. 2020): emb1[i] and emb2[i] are two views of image i. Each view's positive is
    the other view of its image; its negatives are all other views in the global batch, gathered from every
    process with their gradients. Cross-entropy over cosine similarities / temperature, averaged over this
    process's 2n views.

    The same loss and gradients on any number of processes for the same global batch: each process's mean over
    its own views, averaged over processes (DDP averages the gradients; the gathered views' gradients are summed
    back to their process), is the global mean. Computed in float32 even under autocast."""
    z1, z2 = F.normalize(emb1.float(), dim=1), F.normalize(emb2.float(), dim=1)
    all1, start = all_gather_with_gradients(z1)
    all2, _ = all_gather_with_gradients(z2)
    n, total = len(z1), len(all1)
    logits = torch.cat([z1, z2]) @ torch.cat([all1, all2]).T / temperature  # (2n local views) x (2N global)
    own = torch.arange(start, start + n, device=z1.device)
    itself = torch.cat([own, own + total])  # each view's own column, never its negative
    positive = torch.cat([own + total, own])  # the other view of the same image
    is_itself = torch.zeros_like(logits, dtype=torch.bool)
    is_itself[torch.arange(2 * n, device=z1.device), itself] = True  # no gradient flows through the mask
    return F.cross_entropy(logits.masked_fill(is_itself, float("-inf")), positive)


@dataclass(frozen=True)
class PairLoss:
    """compute(emb1, emb2, similar, args) -> the loss, a scalar. add_options(group): the loss's own options.
    every_pair_similar: the loss wants every pair to be two views of one image (its negatives are the rest of
    the batch), so it trains on --pairs augment with --positive-fraction 1."""
    compute: Callable
    add_options: Callable
    every_pair_similar: bool = False


def _contrastive_options(group) -> None:
    group.add_argument("--margin", type=float, default=1.0,
                       help="contrastive: dissimilar pairs are pushed this far apart (normalized embeddings)")


def _ntxent_options(group) -> None:
    group.add_argument("--temperature", type=float, default=0.5, help="ntxent: the softmax temperature (SimCLR: 0.5)")


LOSSES = {
    "contrastive": PairLoss(lambda e1, e2, similar, args: contrastive_loss(e1, e2, similar, args.margin),
                            _contrastive_options),
    "ntxent": PairLoss(lambda e1, e2, similar, args: ntxent_loss(e1, e2, args.temperature), _ntxent_options,
                       every_pair_similar=True),
}
