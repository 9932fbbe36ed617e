"""The online linear probe (solo-learn's and lightly's OnlineLinearClassifier): a linear classifier on the detached
encoder features, trained alongside the pretext with its own loss; the curve to watch on a long run."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_scripts.evaluation import frozen


class OnlineProbe(nn.Module):
    """Linear on the features, each feature vector centered and scaled to unit length first (a layer norm without
    parameters, divided by sqrt(dim)): a flattened simple_cnn map's values run to the hundreds, and even
    standardized, 4,096 features of unit variance let SGD at lr 0.1 move a logit by hundreds a step (both diverged
    here); per image, so it needs no batch statistics (the same on any number of processes) and stays one linear
    map of the normalized features."""

    def __init__(self, feature_dim: int, classes: int):
        super().__init__()
        self.linear = nn.Linear(feature_dim, classes)

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = features.flatten(1).float()
        return self.linear(F.layer_norm(features, features.shape[1:]) / features.shape[1] ** 0.5)


def train_terms(logits: torch.Tensor, labels: torch.Tensor):
    """(the probe's loss, its train/* metrics) for one micro-batch."""
    loss = F.cross_entropy(logits.float(), labels)
    accuracy = (logits.argmax(1) == labels).float().mean()
    return loss, {"online_linear_loss": loss.detach(), "online_linear_acc": accuracy}


def metrics(accelerator, encoder, probe: OnlineProbe, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
            between_batches=None) -> dict:
    """eval/online_linear_acc: the probe's accuracy on `images` (the train dataset's test split, its classes)."""
    if not len(labels) or bool((labels < 0).any()):
        return {}
    features = frozen.features(accelerator, encoder, images, batch_size, between_batches)
    if not accelerator.is_main_process:
        return {}
    with torch.no_grad():
        predicted = probe(features.to(probe.linear.weight.device)).argmax(1).cpu()
    return {"eval/online_linear_acc": (predicted == labels.cpu()).float().mean().item()}
