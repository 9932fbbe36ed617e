"""SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning"): a projector and a predictor, the
symmetric negative cosine between one view's prediction and the other's projection, the projection's gradient
stopped; no negatives, no momentum copy.

    loss = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2,   D(p, z) = -cos(p, z)
"""
from ssl_scripts.methods.method import Method, SiameseHead, negative_cosine, wide_projector
from ssl_scripts.models import encoders


class SimSiam(Method):
    name = "simsiam"
    summary = "Chen & He 2021: predictor + stop-gradient, symmetric negative cosine"
    paper = "Chen & He 2021, Exploring Simple Siamese Representation Learning"
    # solo-learn scripts/pretrain/cifar/simsiam.yaml (commit 9187ea3): projector 2048-2048-2048, predictor 512,
    # SGD lr 0.5 at batch 256, weight decay 1e-5, warm-up + cosine (solo-learn's 10 warm-up epochs), sync BN
    recipe = {"embedding_dim": 2048, "projector_hidden": 2048, "predictor_hidden": 512, "optimizer": "sgd",
              "lr": 0.5, "weight_decay": 1e-5, "batch_size": 256, "schedule": "cosine", "warmup_epochs": 10}
    recipe_source = "solo-learn scripts/pretrain/cifar/simsiam.yaml"
    published = "solo-learn 90.51 (online linear, 1000 ep); lightly .764 (k-NN, 200 ep)"

    def head(self, encoder, probe=None):
        args = self.args
        projector = wide_projector(args, encoder, last_batch_norm=True)
        predictor = encoders.mlp([args.embedding_dim, args.predictor_hidden, args.embedding_dim],
                                 batch_norm=args.head_bn)
        return SiameseHead(projector, predictor, probe)

    def optimizer_groups(self, head):
        # The paper's (section 4.4) and solo-learn's: the predictor at a fixed lr, off the schedule (static_lr)
        return [{"params": list(head.predictor.parameters()), "lr": self.args.lr,
                 "weight_decay": self.args.weight_decay, "static_lr": True}]

    def loss(self, model, head, views, output, similar):
        z1, z2 = output.projection.chunk(2)
        p1, p2 = output.prediction.chunk(2)
        loss = negative_cosine(p1, z2.detach()) / 2 + negative_cosine(p2, z1.detach()) / 2
        return loss, z1
