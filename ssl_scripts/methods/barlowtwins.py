"""Barlow Twins (Zbontar, Jing, Misra, LeCun & Deny 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction"): the cross-correlation matrix of the two views' projections, each feature standardized over the global
batch, driven to the identity: invariance on the diagonal, redundancy reduction off it.

    c = z1n.T @ z2n / N   (z standardized over the N images of the global batch)
    loss = scale * (sum_i (1 - c_ii)^2 + lambda * sum_{i != j} c_ij^2)
"""
import torch

from ssl_scripts.methods.method import Method, SiameseHead, wide_projector
from ssl_scripts.models import collectives
from ssl_scripts.models.losses import in_float32


@in_float32
def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, off_diagonal_weight: float, scale: float) -> torch.Tensor:
    """On the global batch: both views' projections gathered from every process (with their gradients), so the
    statistics and the matrix are the one-process ones; computed in float32."""
    z1, z2 = collectives.gather(z1.float()), collectives.gather(z2.float())  # collective
    z1 = (z1 - z1.mean(0)) / z1.std(0, unbiased=False).add(1e-5)
    z2 = (z2 - z2.mean(0)) / z2.std(0, unbiased=False).add(1e-5)
    c = z1.T @ z2 / len(z1)
    on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
    off_diagonal = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return scale * (on_diagonal + off_diagonal_weight * off_diagonal)


class BarlowTwins(Method):
    name = "barlowtwins"
    summary = "Zbontar et al. 2021: the views' cross-correlation over the global batch driven to the identity"
    paper = "Zbontar, Jing, Misra, LeCun & Deny 2021, Barlow Twins: Self-Supervised Learning via Redundancy Reduction"
    # solo-learn scripts/pretrain/cifar/barlow.yaml (commit 9187ea3): projector 2048-2048-2048, lambda 0.0051 (the
    # paper's), loss scale 0.1, LARS (eta 0.02, clipped, bias and norm excluded) lr 0.3 at batch 256, weight decay
    # 1e-4, warm-up + cosine, sync BN
    recipe = {"embedding_dim": 2048, "projector_hidden": 2048, "optimizer": "lars", "lr": 0.3, "weight_decay": 1e-4,
              "batch_size": 256, "schedule": "cosine", "warmup_epochs": 10}
    recipe_source = "solo-learn scripts/pretrain/cifar/barlow.yaml"
    published = "solo-learn 92.10 (online linear, 1000 ep); lightly .819 (k-NN, 200 ep)"

    @classmethod
    def add_options(cls, group) -> None:
        group.add_argument("--barlow-lambda", type=float, default=0.0051,
                           help="barlowtwins: the weight of the off-diagonal terms (the paper's 0.0051)")
        group.add_argument("--barlow-scale", type=float, default=0.1,
                           help="barlowtwins: the loss's scale (solo-learn's CIFAR recipe: 0.1)")

    @classmethod
    def option_checks(cls, args) -> list:
        return [(args.barlow_lambda >= 0, f"--barlow-lambda must be >= 0 (got {args.barlow_lambda})"),
                (args.barlow_scale > 0, f"--barlow-scale must be > 0 (got {args.barlow_scale})")]

    def head(self, encoder, probe=None):
        return SiameseHead(wide_projector(self.args, encoder), probe=probe)

    def loss(self, model, head, views, output, similar):
        z1, z2 = output.projection.chunk(2)
        return barlow_twins_loss(z1, z2, self.args.barlow_lambda, self.args.barlow_scale), z1
