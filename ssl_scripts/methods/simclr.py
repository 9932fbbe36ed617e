"""SimCLR (Chen, Kornblith, Norouzi & Hinton 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"): NT-Xent, each view's positive the other view of its image, every other view of the global batch
(gathered from every process) a negative."""
from ssl_scripts.methods.contrastive import pair_head
from ssl_scripts.methods.method import Method
from ssl_scripts.models.losses import ntxent_loss


class SimCLR(Method):
    name = "simclr"
    summary = "Chen et al. 2020: NT-Xent, the other views of the global batch as negatives"
    paper = ("Chen, Kornblith, Norouzi & Hinton 2020, A Simple Framework for Contrastive Learning of Visual "
             "Representations")
    recipe = {"embedding_dim": 128, "temperature": 0.5}
    recipe_source = "temperature 0.5: SimCLR's CIFAR-10 runs; optimizer: the model's recipe"
    published = "solo-learn 90.74 (online linear, 1000 ep); lightly .848 (k-NN, 200 ep)"
    must_match = ("temperature",)

    @classmethod
    def option_checks(cls, args) -> list:
        return [(args.temperature > 0, f"--temperature must be > 0 (got {args.temperature})")]

    def head(self, encoder, probe=None):
        return pair_head(self.args, encoder, probe)

    def loss(self, model, head, views, output, similar):
        first, second = output.projection.chunk(2)
        return ntxent_loss(first, second, self.args.temperature), first
