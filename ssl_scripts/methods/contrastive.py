"""The contrastive loss of Hadsell, Chopra & LeCun (2006), "Dimensionality Reduction by Learning an Invariant
Mapping": similar pairs pulled together, dissimilar ones pushed at least --margin apart; on label pairs (same class
= similar) or augment pairs (two views of one image similar, another image dissimilar)."""
from ssl_scripts.methods.method import Method, SiameseHead
from ssl_scripts.models import encoders
from ssl_scripts.models.losses import contrastive_loss

# The projection head's hidden width per model (SimCLR-style heads: 512); the original tutorial's simple_cnn
# head: fc(4096 -> 128 -> 128).
HEAD_HIDDEN = {"simple_cnn": 128}
DEFAULT_HEAD_HIDDEN = 512


def pair_head(args, encoder, probe=None) -> SiameseHead:
    """The contrastive and SimCLR methods' head: a 2-layer projector without batch norm, --projector-hidden wide
    (default HEAD_HIDDEN's) to --embedding-dim."""
    hidden = args.projector_hidden or HEAD_HIDDEN.get(encoder.name, DEFAULT_HEAD_HIDDEN)
    return SiameseHead(encoders.mlp([encoder.feature_dim, hidden, args.embedding_dim]), probe=probe)


class Contrastive(Method):
    name = "contrastive"
    summary = "Hadsell et al. 2006: similar pairs pulled together, dissimilar ones pushed beyond --margin"
    paper = "Hadsell, Chopra & LeCun 2006, Dimensionality Reduction by Learning an Invariant Mapping"
    recipe = {"embedding_dim": 128}
    recipe_source = "the model's recipe (ROTNET's SGD; simple_cnn: the tutorial's AdamW)"
    label_pairs = True

    @classmethod
    def add_options(cls, group) -> None:
        group.add_argument("--margin", type=float, default=1.0,
                           help="contrastive: dissimilar pairs are pushed this far apart (normalized embeddings)")

    @classmethod
    def option_checks(cls, args) -> list:
        return [(args.margin > 0, f"--margin must be > 0 (got {args.margin})")]

    def head(self, encoder, probe=None):
        return pair_head(self.args, encoder, probe)

    def loss(self, model, head, views, output, similar):
        anchors, partners = output.projection.chunk(2)
        return contrastive_loss(anchors, partners, similar, self.args.margin), anchors
