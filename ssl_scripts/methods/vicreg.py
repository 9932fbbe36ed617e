"""VICReg (Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
Learning"): the two views' projections kept close (invariance), each dimension's standard deviation over the
global batch above 1 (variance), and the dimensions decorrelated over it (covariance).

    loss = l * mse(z1, z2) + m * [v(z1) + v(z2)] + n * [c(z1) + c(z2)]
    v(z) = mean_j relu(1 - sqrt(var_j(z) + 1e-4)),  c(z) = sum_{i != j} cov(z)_ij^2 / d
"""
import torch
import torch.nn.functional as F

from ssl_scripts.methods.method import Method, SiameseHead, wide_projector
from ssl_scripts.models import collectives
from ssl_scripts.models.losses import in_float32


def variance_term(z: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - torch.sqrt(z.var(dim=0) + 1e-4)).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    centered = z - z.mean(dim=0)
    covariance = centered.T @ centered / (len(z) - 1)
    return (covariance.pow(2).sum() - torch.diagonal(covariance).pow(2).sum()) / z.shape[1]


@in_float32
def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, invariance_weight: float, variance_weight: float,
                covariance_weight: float) -> torch.Tensor:
    """On the global batch: both views' projections gathered from every process (with their gradients), so
    variance and covariance are the one-process ones; computed in float32."""
    z1, z2 = collectives.gather(z1.float()), collectives.gather(z2.float())  # collective
    return (invariance_weight * F.mse_loss(z1, z2)
            + variance_weight * (variance_term(z1) + variance_term(z2))
            + covariance_weight * (covariance_term(z1) + covariance_term(z2)))


class VICReg(Method):
    name = "vicreg"
    summary = "Bardes et al. 2022: invariance + variance + covariance over the global batch"
    paper = "Bardes, Ponce & LeCun 2022, VICReg: Variance-Invariance-Covariance Regularization"
    # solo-learn scripts/pretrain/cifar/vicreg.yaml (commit 9187ea3): projector 2048-2048-2048, weights 25 / 25 / 1
    # (the paper's), LARS (eta 0.02, clipped, bias and norm excluded) lr 0.3 at batch 256, weight decay 1e-4,
    # warm-up + cosine, sync BN
    recipe = {"embedding_dim": 2048, "projector_hidden": 2048, "optimizer": "lars", "lr": 0.3, "weight_decay": 1e-4,
              "batch_size": 256, "schedule": "cosine", "warmup_epochs": 10}
    recipe_source = "solo-learn scripts/pretrain/cifar/vicreg.yaml"
    published = "solo-learn 92.07 (online linear, 1000 ep)"

    @classmethod
    def add_options(cls, group) -> None:
        group.add_argument("--vicreg-weights", type=float, nargs=3, default=(25.0, 25.0, 1.0),
                           metavar=("INVARIANCE", "VARIANCE", "COVARIANCE"),
                           help="vicreg: the three terms' weights (the paper's 25 25 1)")

    @classmethod
    def option_checks(cls, args) -> list:
        return [(min(args.vicreg_weights) >= 0, f"--vicreg-weights must be >= 0 (got {args.vicreg_weights})")]

    def head(self, encoder, probe=None):
        return SiameseHead(wide_projector(self.args, encoder), probe=probe)

    def loss(self, model, head, views, output, similar):
        z1, z2 = output.projection.chunk(2)
        return vicreg_loss(z1, z2, *self.args.vicreg_weights), z1
