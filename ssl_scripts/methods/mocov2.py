"""MoCo v2 (Chen, Fan, Girshick & He 2020, "Improved Baselines with Momentum Contrastive Learning"; MoCo: He et al.
2020): InfoNCE between a query (the online encoder + MLP projector) and its key (a momentum copy of both), the
negatives a queue of the keys of earlier steps' global batches (gathered from every process). Symmetrized over the
two views, as solo-learn's MoCo V2+ and lightly's benchmark (one queue, of view 2's keys, for both directions;
solo-learn keeps one per view).

    loss = CE([q . k+, q . queue] / T, 0) for (q1, k2) and (q2, k1), averaged;  then queue <- keys of view 2
"""
import torch
import torch.nn.functional as F

from ssl_scripts.methods.method import Method, SiameseHead
from ssl_scripts.models import collectives, encoders
from ssl_scripts.models.losses import in_float32
from ssl_scripts.models.momentum import MomentumCopy, cosine_momentum


@in_float32
def info_nce(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of each query against its own key (the positive, column 0) and every queued key (negatives);
    rows L2-normalized. Averaged over this process's queries (DDP's average over processes: the global mean)."""
    positive = (query * key).sum(dim=1, keepdim=True)
    logits = torch.cat([positive, query @ queue.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(query), dtype=torch.long, device=query.device))


class KeyQueue(torch.nn.Module):
    """The last `size` keys, oldest overwritten first; buffers, so checkpoints hold it and a resume continues it."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("next", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        rows = (self.next + torch.arange(len(keys), device=keys.device)) % len(self.keys)
        self.keys[rows] = keys.to(self.keys.dtype)
        self.next.copy_((self.next + len(keys)) % len(self.keys))


class MoCoV2(Method):
    name = "mocov2"
    summary = "Chen et al. 2020: InfoNCE against a momentum key encoder and a queue of the global batches' keys"
    paper = "Chen, Fan, Girshick & He 2020, Improved Baselines with Momentum Contrastive Learning"
    # solo-learn scripts/pretrain/cifar/mocov2plus.yaml (commit 9187ea3): projector 2048 -> 256, temperature 0.2,
    # SGD lr 0.3 at batch 256, weight decay 1e-4, tau 0.99 -> 0.999, warm-up + cosine; the queue: 4,096 keys, as
    # lightly's CIFAR-10 benchmark (solo-learn: 32,768; the paper, ImageNet: 65,536)
    recipe = {"embedding_dim": 256, "projector_hidden": 2048, "temperature": 0.2, "optimizer": "sgd", "lr": 0.3,
              "weight_decay": 1e-4, "batch_size": 256, "schedule": "cosine", "warmup_epochs": 10,
              "momentum_base": 0.99, "momentum_final": 0.999}
    recipe_source = "solo-learn scripts/pretrain/cifar/mocov2plus.yaml; queue: lightly's benchmark"
    published = "solo-learn 92.94 (MoCo V2+, online linear, 1000 ep); lightly .847 (k-NN, 200 ep)"
    must_match = ("queue_size", "temperature")

    @classmethod
    def add_options(cls, group) -> None:
        group.add_argument("--queue-size", type=int, default=4096,
                           help="mocov2: keys kept as negatives (CIFAR: 4,096, lightly's benchmark; ImageNet: 65,536)")

    @classmethod
    def option_checks(cls, args) -> list:
        return [(args.queue_size >= args.batch_size,
                 f"--queue-size must be at least the global batch, --batch-size {args.batch_size} (got "
                 f"{args.queue_size}): a step's keys would overwrite each other"),
                (args.temperature > 0, f"--temperature must be > 0 (got {args.temperature})")]

    def head(self, encoder, probe=None):
        args = self.args
        projector = encoders.mlp([encoder.feature_dim, args.projector_hidden, args.embedding_dim])
        head = SiameseHead(projector, probe=probe, momentum=MomentumCopy(encoder=encoder, projector=projector))
        head.queue = KeyQueue(args.queue_size, args.embedding_dim)
        return head

    def loss(self, model, head, views, output, similar):
        q1, q2 = F.normalize(output.projection.float(), dim=1).chunk(2)
        with torch.no_grad():
            k1, k2 = F.normalize(head.momentum(views).float(), dim=1).chunk(2)
        queue = head.queue.keys.to(q1.dtype, copy=True)  # earlier steps' keys only: this step's are pushed below
        t = self.args.temperature
        loss = (info_nce(q1, k2, queue, t) + info_nce(q2, k1, queue, t)) / 2
        head.queue.push(collectives.gather(k2))  # collective: every process queues the global batch's keys
        return loss, output.projection.chunk(2)[0]

    def after_update(self, head, encoder, step, total_steps):
        momentum = cosine_momentum(self.args.momentum_base, self.args.momentum_final, step, total_steps)
        head.momentum.update(momentum, encoder=encoder, projector=head.projector)
