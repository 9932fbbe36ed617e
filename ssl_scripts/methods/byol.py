"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent"): an online encoder + projector + predictor trained to
predict a momentum target's projection (an EMA copy of encoder and projector, the momentum raised from
--momentum-base to --momentum-final on a cosine), symmetrized over the two views.

    loss = (2 - 2 cos(p1, z2')) + (2 - 2 cos(p2, z1')),   z' = target projection, no gradient
"""
import torch

from ssl_scripts.methods.method import Method, SiameseHead, negative_cosine
from ssl_scripts.models import encoders
from ssl_scripts.models.momentum import MomentumCopy, cosine_momentum


class BYOL(Method):
    name = "byol"
    summary = "Grill et al. 2020: predict a momentum target's projection (EMA of encoder + projector)"
    paper = "Grill et al. 2020, Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning"
    # solo-learn scripts/pretrain/cifar/byol.yaml (commit 9187ea3): projector 4096 -> 256, predictor 4096, LARS
    # (eta 0.02, clipped, bias and norm excluded) lr 1.0 at batch 256, weight decay 1e-5, tau 0.99 -> 1.0, warm-up
    # + cosine, sync BN
    recipe = {"embedding_dim": 256, "projector_hidden": 4096, "predictor_hidden": 4096, "optimizer": "lars",
              "lr": 1.0, "weight_decay": 1e-5, "batch_size": 256, "schedule": "cosine", "warmup_epochs": 10,
              "momentum_base": 0.99, "momentum_final": 1.0}
    recipe_source = "solo-learn scripts/pretrain/cifar/byol.yaml"
    published = "solo-learn 92.58 (online linear, 1000 ep); lightly .868 (k-NN, 200 ep)"

    def head(self, encoder, probe=None):
        args = self.args
        projector = encoders.mlp([encoder.feature_dim, args.projector_hidden, args.embedding_dim],
                                 batch_norm=args.head_bn)
        predictor = encoders.mlp([args.embedding_dim, args.predictor_hidden, args.embedding_dim],
                                 batch_norm=args.head_bn)
        return SiameseHead(projector, predictor, probe, momentum=MomentumCopy(encoder=encoder, projector=projector))

    def loss(self, model, head, views, output, similar):
        p1, p2 = output.prediction.chunk(2)
        with torch.no_grad():
            t1, t2 = head.momentum(views).chunk(2)
        loss = (2 + 2 * negative_cosine(p1, t2)) + (2 + 2 * negative_cosine(p2, t1))
        return loss, output.projection.chunk(2)[0]

    def after_update(self, head, encoder, step, total_steps):
        momentum = cosine_momentum(self.args.momentum_base, self.args.momentum_final, step, total_steps)
        head.momentum.update(momentum, encoder=encoder, projector=head.projector)
