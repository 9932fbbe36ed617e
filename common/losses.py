"""Losses of embedding pairs, by name in PAIR_LOSSES (train_siamese.py --loss): a new loss is a function here and an
entry there. The label convention is stated once, here: similar = 1 means "these two belong together"."""
import torch
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


# loss(emb1, emb2, similar, margin) -> scalar, averaged over pairs
PAIR_LOSSES = {"contrastive": contrastive_loss}
