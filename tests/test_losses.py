import pytest
import torch

from ssl_scripts.models.losses import contrastive_loss

MARGIN = 1.0


def tutorial_loss(e1, e2, label, margin=MARGIN):
    """The original tutorial's formula, verbatim: label 1 meant 'same class', but the terms are swapped."""
    d = torch.nn.functional.pairwise_distance(e1, e2)
    return torch.mean((1 - label) * d.pow(2) + label * torch.clamp(margin - d, min=0.0).pow(2))


def test_hand_computed_values_unnormalized():
    e1 = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    e2 = torch.tensor([[3.0, 4.0], [0.3, 0.4], [1.0, 3.0], [1.0, 0.5]])
    similar = torch.tensor([1.0, 0.0, 0.0, 1.0])
    # d = 5, 0.5, 2, 0.5 -> 25 (pulled), (1-0.5)^2 (pushed), 0 (beyond the margin), 0.25 (pulled)
    expected = (25 + 0.25 + 0 + 0.25) / 4
    assert contrastive_loss(e1, e2, similar, MARGIN, normalize=False).item() == pytest.approx(expected, rel=1e-6)


HAND_NORMALIZED = (
    torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0]]),
    torch.tensor([[0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]]),
    torch.tensor([1.0, 0.0, 0.0]),
    # unit vectors: d^2 = 2 (similar); d = 2 >= margin (0); d = sqrt(2 - sqrt 2) (dissimilar, inside margin)
    (2.0 + 0.0 + (1 - (2 - 2 ** 0.5) ** 0.5) ** 2) / 3,
)


def test_hand_computed_values_normalized():
    e1, e2, similar, expected = HAND_NORMALIZED
    assert contrastive_loss(e1, e2, similar, MARGIN).item() == pytest.approx(expected, rel=1e-6)


def test_under_bf16_autocast_the_loss_is_float32_and_matches():
    e1, e2, similar, expected = HAND_NORMALIZED
    with torch.autocast("cpu", dtype=torch.bfloat16):
        identity = torch.nn.Linear(2, 2, bias=False)
        identity.weight.data = torch.eye(2)
        b1, b2 = identity(e1), identity(e2)  # bf16 activations, as the model gives under autocast
        assert b1.dtype == torch.bfloat16
        loss = contrastive_loss(b1, b2, similar, MARGIN)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(expected, rel=1e-2)


def distance_after_one_step(loss_fn):
    e1 = torch.tensor([[0.0, 0.0]], requires_grad=True)
    e2 = torch.tensor([[0.3, 0.4]], requires_grad=True)  # d = 0.5, inside the margin
    same_class = torch.tensor([1.0])  # label 1 = same class, in the tutorial as here
    loss_fn(e1, e2, same_class).backward()
    with torch.no_grad():
        return ((e1 - 0.1 * e1.grad) - (e2 - 0.1 * e2.grad)).norm().item()


def test_ours_pulls_a_same_class_pair_together_and_the_tutorials_pushes_it_apart():
    ours = distance_after_one_step(lambda a, b, y: contrastive_loss(a, b, y, MARGIN, normalize=False))
    tutorials = distance_after_one_step(tutorial_loss)
    assert ours < 0.5 < tutorials


def test_dissimilar_pairs_inside_the_margin_are_pushed_and_beyond_it_left_alone():
    def grad_norm(e2):
        e1 = torch.zeros(1, 2, requires_grad=True)
        contrastive_loss(e1, e2, torch.tensor([0.0]), MARGIN, normalize=False).backward()
        return e1.grad.norm().item()
    assert grad_norm(torch.tensor([[0.3, 0.4]])) > 0
    assert grad_norm(torch.tensor([[3.0, 4.0]])) == 0


def test_identical_embeddings_give_finite_gradients():
    e = torch.ones(2, 4, requires_grad=True)
    contrastive_loss(e, e.detach().clone(), torch.tensor([1.0, 0.0])).backward()
    assert torch.isfinite(e.grad).all()


def test_a_registered_method_is_an_option_of_the_siamese_task_with_its_options_and_recipe(monkeypatch):
    """One file and one entry in methods.METHODS is all a new method needs: --method offers it, with its options,
    and its recipe decides the defaults it sets (explicit options win)."""
    from ssl_scripts.methods import METHODS
    from ssl_scripts.methods.method import Method
    from helpers import parse

    class Cosine(Method):
        name, summary, recipe = "cosine", "a test's", {"lr": 0.25, "embedding_dim": 16}

        @classmethod
        def add_options(cls, group):
            group.add_argument("--cosine-scale", type=float, default=1.0)
    monkeypatch.setitem(METHODS, "cosine", Cosine)
    args = parse(["--method", "cosine", "--cosine-scale", "2"], "siamese")
    assert args.method == "cosine" and args.cosine_scale == 2 and args.lr == 0.25 and args.embedding_dim == 16
    assert args.pairs == "augment" and args.positive_fraction == 1.0  # two views of each image
    assert parse(["--method", "cosine", "--lr", "0.5"], "siamese").lr == 0.5
    assert parse([], "siamese").method == "contrastive"


def test_ntxent_matches_its_formula_on_a_tiny_batch():
    # SimCLR's l(i, j) = -log(exp(sim(z_i, z_j) / t) / sum over k != i of exp(sim(z_i, z_k) / t)), averaged over
    # all 2N views, where view i's positive j is the other view of its image.
    import math
    from ssl_scripts.models.losses import ntxent_loss
    generator = torch.Generator().manual_seed(0)
    emb1, emb2, t = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator), 0.5
    z = torch.nn.functional.normalize(torch.cat([emb1, emb2]), dim=1).tolist()
    views = len(z)

    def sim(i, k):
        return sum(a * b for a, b in zip(z[i], z[k])) / t

    expected = sum(-math.log(math.exp(sim(i, (i + 3) % views)) /
                             sum(math.exp(sim(i, k)) for k in range(views) if k != i)) for i in range(views)) / views
    assert ntxent_loss(emb1, emb2, t).item() == pytest.approx(expected, abs=1e-6)
    # Symmetric in the views; lower when the views of each image agree.
    assert ntxent_loss(emb2, emb1, t).item() == pytest.approx(expected, abs=1e-6)
    assert ntxent_loss(emb1, emb1, t).item() < expected


@pytest.mark.parametrize("loss", ["ntxent", "barlowtwins", "vicreg", "infonce"])
def test_the_global_batch_losses_are_float32_under_bf16_autocast(loss):
    # The step runs under the forward's autocast: its bf16 matrix products would round NT-Xent's logits at
    # 1/temperature and VICReg's covariances; each loss turns it off for its own maths.
    from ssl_scripts.methods.barlowtwins import barlow_twins_loss
    from ssl_scripts.methods.mocov2 import info_nce
    from ssl_scripts.methods.vicreg import vicreg_loss
    from ssl_scripts.models.losses import ntxent_loss
    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 32), torch.randn(16, 32)
    queue = torch.nn.functional.normalize(torch.randn(64, 32), dim=1)
    compute = {"ntxent": lambda a, b: ntxent_loss(a, b, 0.1),
               "barlowtwins": lambda a, b: barlow_twins_loss(a, b, 0.005, 1.0),
               "vicreg": lambda a, b: vicreg_loss(a, b, 25.0, 25.0, 1.0),
               "infonce": lambda a, b: info_nce(torch.nn.functional.normalize(a, dim=1),
                                                torch.nn.functional.normalize(b, dim=1), queue, 0.1)}[loss]
    exact = compute(z1, z2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = compute(z1.bfloat16().float(), z2.bfloat16().float())
    assert under_autocast.dtype == torch.float32
    exact_of_rounded = compute(z1.bfloat16().float(), z2.bfloat16().float())
    assert under_autocast.item() == pytest.approx(exact_of_rounded.item(), rel=1e-6)
    assert exact.item() == pytest.approx(exact_of_rounded.item(), rel=0.05)
