"""The pair losses of the contrastive and SimCLR methods (ssl_scripts/methods/). The label convention is stated
once, here: similar = 1 means "these two belong together"."""
import functools

import torch
import torch.nn.functional as F

from ssl_scripts.models import collectives


def in_float32(loss):
    """`loss` with its floating-point tensor arguments in float32 and autocast off: the step runs under the forward's
    autocast (bf16/fp16), whose matrix products would round logits at 1/temperature and overflow covariances."""
    @functools.wraps(loss)
    def float32_loss(*args, **kwargs):
        device = next(a.device.type for a in args if torch.is_tensor(a))
        with torch.autocast(device_type=device, enabled=False):
            return loss(*[a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args], **kwargs)
    return float32_loss


@in_float32

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


@in_float32
def ntxent_loss(emb1: torch.Tensor, emb2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent of SimCLR (Chen et al. 2020): emb1[i] and emb2[i] are two views of image i. Each view's positive is
    the other view of its image; its negatives are all other views in the global batch, gathered from every
    process with their gradients. Cross-entropy over cosine similarities / temperature, averaged over this
    process's 2n views.

    The same loss and gradients on any number of processes for the same global batch: each process's mean over
    its own views, averaged over processes (DDP averages the gradients; the gathered views' gradients are summed
    back to their process), is the global mean. Computed in float32 even under autocast."""
    z1, z2 = F.normalize(emb1.float(), dim=1), F.normalize(emb2.float(), dim=1)
    all1, start = collectives.gather_with_start(z1)  # collective
    all2 = collectives.gather(z2)  # collective
    n, total = len(z1), len(all1)
    logits = torch.cat([z1, z2]) @ torch.cat([all1, all2]).T / temperature  # (2n local views) x (2N global)
    own = torch.arange(start, start + n, device=z1.device)
    itself = torch.cat([own, own + total])  # each view's own column, never its negative
    positive = torch.cat([own + total, own])  # the other view of the same image
    is_itself = torch.zeros_like(logits, dtype=torch.bool)
    is_itself[torch.arange(2 * n, device=z1.device), itself] = True  # no gradient flows through the mask
    return F.cross_entropy(logits.masked_fill(is_itself, float("-inf")), positive)
