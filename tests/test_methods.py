"""ssl_scripts/methods/: each method's loss against its paper's pseudocode, written out here on a tiny batch and
called as the Siamese task calls it (Method.loss on model(views)); what its gradient may reach; its head's shape."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import parse
from ssl_scripts.methods import METHODS
from ssl_scripts.methods.barlowtwins import barlow_twins_loss
from ssl_scripts.methods.vicreg import vicreg_loss
from ssl_scripts.models import encoders
from ssl_scripts.models.momentum import cosine_momentum

IMAGES = 6  # per view: views holds view 1 of the 6 images, then view 2
SMALL_HEAD = {"embedding_dim": 8, "projector_hidden": 16, "predictor_hidden": 12}
SIAMESE = ("simsiam", "byol", "mocov2", "barlowtwins", "vicreg")


def options(method, *argv, **values):
    args = parse(["--method", method, "--model", "simple_cnn", "--dataset", "synthetic", *argv], "siamese")
    return args.replace(**values)


def built(method, *argv, dtype=torch.float64, image_size=8, **values):
    """(method, model, head) as the Siamese task builds them, on a tiny simple_cnn, small head widths."""
    torch.manual_seed(0)
    encoder = encoders.build_encoder("simple_cnn", image_size)
    trainer = METHODS[method](options(method, *argv, **{**SMALL_HEAD, **values}))
    head = trainer.head(encoder)
    return trainer, encoders.EncoderWithHead(encoder, head).to(dtype), head


def two_views(seed=1, dtype=torch.float64):
    return torch.rand(2 * IMAGES, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def nudged(module, seed=2):
    """The online weights moved on after the momentum copy was made (as after some steps without an update)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in trained_parameters(module):  # not the momentum copy's
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def step_loss(trainer, model, head, views):
    """The Siamese task's step: one forward of the model on every view, then the method's loss on its output."""
    output = model(views)
    loss, embeddings = trainer.loss(model, head, views, output, torch.ones(IMAGES))
    return output, loss, embeddings


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, retain_graph=True, allow_unused=True)


def assert_same_grads(got, want, **tolerance):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, **tolerance)


def trained_parameters(model):
    return [p for p in model.parameters() if p.requires_grad]


# ------------------------------------------------------------------------------------------ SimSiam
def simsiam_d(p, z):
    """SimSiam's Algorithm 1: D(p, z) = -(normalize(p) * normalize(z)).sum(dim=1).mean() (z detached by the caller)."""
    return -(F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(dim=1).mean()


def test_simsiam_loss_is_algorithm_1_with_the_projection_gradient_stopped_in_the_other_branch():
    trainer, model, head = built("simsiam")
    output, loss, embeddings = step_loss(trainer, model, head, two_views())
    z1, z2 = output.projection.chunk(2)
    p1, p2 = output.prediction.chunk(2)
    paper = simsiam_d(p1, z2.detach()) / 2 + simsiam_d(p2, z1.detach()) / 2
    torch.testing.assert_close(loss, paper, rtol=1e-12, atol=0)
    assert torch.equal(embeddings, z1)
    # The gradient reaching the projection: only through the predictor, none from being the other view's target.
    watched = [output.projection, *trained_parameters(model)]
    got = grads(loss, watched)
    assert_same_grads(got, grads(paper, watched), rtol=1e-10, atol=1e-14)
    through_target = grads(simsiam_d(p1, z2) / 2 + simsiam_d(p2, z1) / 2, [output.projection])[0]
    assert (got[0] - through_target).abs().max() > 1e-3
    assert head.momentum is None


# ------------------------------------------------------------------------------------------ BYOL
def byol_regression(p, z):
    """BYOL's loss per pair: ||normalize(p) - normalize(z)||^2 = 2 - 2 cos(p, z), averaged over the batch."""
    return (F.normalize(p, dim=1) - F.normalize(z, dim=1)).pow(2).sum(dim=1).mean()


def test_byol_loss_regresses_each_prediction_on_the_momentum_target_of_the_other_view_symmetrized():
    trainer, model, head = built("byol")
    target = copy.deepcopy(nn.Sequential(model.encoder, head.projector))  # the momentum copy at its start
    nudged(model)
    views = two_views()
    output, loss, embeddings = step_loss(trainer, model, head, views)
    with torch.no_grad():
        t1, t2 = target(views).chunk(2)
    p1, p2 = output.prediction.chunk(2)
    paper = byol_regression(p1, t2) + byol_regression(p2, t1)
    torch.testing.assert_close(loss, paper, rtol=1e-12, atol=0)
    assert torch.equal(embeddings, output.projection.chunk(2)[0])
    z1, z2 = output.projection.detach().chunk(2)  # the online projection: not the target
    assert abs(loss.item() - (byol_regression(p1, z2) + byol_regression(p2, z1)).item()) > 1e-4
    watched = trained_parameters(model)
    assert_same_grads(grads(loss, watched), grads(paper, watched), rtol=1e-10, atol=1e-14)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in head.momentum.parameters())
    assert all(p.grad is not None for p in head.predictor.parameters())


def test_byol_after_update_moves_the_target_toward_the_online_encoder_and_projector():
    trainer, model, head = built("byol")
    target_before = [p.clone() for p in head.momentum.parameters()]
    nudged(model)
    trainer.after_update(head, model.encoder, step=3, total_steps=10)
    m = cosine_momentum(trainer.args.momentum_base, trainer.args.momentum_final, 3, 10)
    assert trainer.args.momentum_base == 0.99 and trainer.args.momentum_final == 1.0 and 0.99 < m < 1
    online = [*model.encoder.parameters(), *head.projector.parameters()]
    for moved, before, trained in zip(head.momentum.parameters(), target_before, online, strict=True):
        torch.testing.assert_close(moved, m * before + (1 - m) * trained, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------------ MoCo v2
def moco_cross_entropy(q, k, queue, temperature):
    """MoCo's Algorithm 1: logits [l_pos, l_neg] / T, cross-entropy with the positive at label 0."""
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", q, queue.T)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


def test_mocov2_loss_is_algorithm_1_symmetrized_against_the_queue_of_earlier_steps_then_queues_view_2():
    trainer, model, head = built("mocov2", dtype=torch.float32, queue_size=8, temperature=0.2)
    key_encoder = copy.deepcopy(nn.Sequential(model.encoder, head.projector))  # the momentum copy at its start
    nudged(model)
    queued, pushed = head.queue.keys.clone(), []
    for step in range(2):
        views = two_views(seed=10 + step, dtype=torch.float32)
        queue = head.queue.keys.clone()
        output, loss, embeddings = step_loss(trainer, model, head, views)
        q1, q2 = F.normalize(output.projection, dim=1).chunk(2)
        with torch.no_grad():
            k1, k2 = F.normalize(key_encoder(views), dim=1).chunk(2)
        paper = (moco_cross_entropy(q1, k2, queue, 0.2) + moco_cross_entropy(q2, k1, queue, 0.2)) / 2
        torch.testing.assert_close(loss, paper, rtol=1e-6, atol=1e-7)
        assert torch.equal(embeddings, output.projection.chunk(2)[0])
        watched = trained_parameters(model)
        assert_same_grads(grads(loss, watched), grads(paper, watched), rtol=1e-5, atol=1e-7)
        loss.backward()
        assert all(p.grad is None for p in head.momentum.parameters()) and not head.queue.keys.requires_grad
        pushed.append(k2)
    # FIFO over 8 rows: step 0's keys in rows 0-5; step 1's in rows 6, 7, then 0-3 (the oldest overwritten).
    first, second = pushed
    expected = torch.cat([second[2:6], first[4:6], second[0:2]])
    torch.testing.assert_close(head.queue.keys, expected, rtol=1e-6, atol=1e-7)
    assert head.queue.next.item() == (2 * IMAGES) % 8 == 4
    assert not torch.allclose(queued[4:6], first[4:6])  # the start's random keys were replaced


def test_mocov2_queue_starts_as_random_unit_keys_and_the_first_loss_uses_none_of_this_steps_keys():
    trainer, model, head = built("mocov2", dtype=torch.float32, queue_size=8, temperature=0.2)
    start = head.queue.keys.clone()
    torch.testing.assert_close(start.norm(dim=1), torch.ones(8))
    views = two_views(dtype=torch.float32)
    output, loss, _ = step_loss(trainer, model, head, views)
    with torch.no_grad():
        k1, k2 = F.normalize(head.momentum(views), dim=1).chunk(2)
    q1, q2 = F.normalize(output.projection, dim=1).chunk(2)
    with_own_keys = torch.cat([k2, start[IMAGES:]])  # what a queue pushed before the loss would hold
    assert abs(loss.item() - (moco_cross_entropy(q1, k2, with_own_keys, 0.2)
                              + moco_cross_entropy(q2, k1, with_own_keys, 0.2)).item() / 2) > 1e-3
    torch.testing.assert_close(head.queue.keys[:IMAGES], k2)
    assert torch.equal(head.queue.keys[IMAGES:], start[IMAGES:]) and head.queue.next.item() == IMAGES


# ------------------------------------------------------------------------------------------ Barlow Twins
def barlow_twins_algorithm_1(z_a, z_b, lambd, scale):
    """Barlow Twins' Algorithm 1, its normalization the official code's (BatchNorm1d without affine: the biased
    standard deviation; the pseudocode's z.std(0) would leave c's diagonal at (N - 1) / N for identical views)."""
    n, d = z_a.shape
    z_a_norm = (z_a - z_a.mean(0)) / z_a.std(0, unbiased=False)
    z_b_norm = (z_b - z_b.mean(0)) / z_b.std(0, unbiased=False)
    c = z_a_norm.T @ z_b_norm / n
    c_diff = (c - torch.eye(d, dtype=c.dtype)).pow(2)
    c_diff[~torch.eye(d, dtype=torch.bool)] *= lambd
    return scale * c_diff.sum()


def random_projections(n=IMAGES, d=5, seed=3):
    generator = torch.Generator().manual_seed(seed)
    spread = torch.tensor([0.3, 0.7, 1.0, 2.0, 4.0], dtype=torch.float64)[:d]  # some dims under std 1, some over
    z_a = torch.randn(n, d, generator=generator, dtype=torch.float64) * spread + 1.5
    return z_a, z_a + 0.5 * torch.randn(n, d, generator=generator, dtype=torch.float64) * spread


def test_barlow_twins_loss_is_algorithm_1():
    z_a, z_b = (10 * z for z in random_projections())  # stds over 1: the module's 1e-5 on them stays under 1e-5
    for lambd, scale in ((0.0051, 0.1), (1.0, 1.0), (0.0, 2.0)):
        torch.testing.assert_close(barlow_twins_loss(z_a, z_b, lambd, scale).double(),
                                   barlow_twins_algorithm_1(z_a, z_b, lambd, scale), rtol=1e-4, atol=1e-7)
    # identical views: c's diagonal is 1, only the redundancy (off-diagonal) term is left
    same = barlow_twins_loss(z_a, z_a, 0.0051, 0.1).double()
    c = barlow_twins_algorithm_1(z_a, z_a, 1.0, 1.0)
    torch.testing.assert_close(same, 0.1 * 0.0051 * c, rtol=1e-4, atol=1e-9)


def test_barlow_twins_method_pairs_the_views_halves_with_the_papers_lambda_and_scale():
    trainer, model, head = built("barlowtwins")
    assert (trainer.args.barlow_lambda, trainer.args.barlow_scale) == (0.0051, 0.1)
    output, loss, embeddings = step_loss(trainer, model, head, two_views())
    z1, z2 = output.projection.chunk(2)
    paper = barlow_twins_algorithm_1(z1, z2, 0.0051, 0.1)
    torch.testing.assert_close(loss.double(), paper, rtol=1e-4, atol=1e-7)
    assert torch.equal(embeddings, z1)
    assert abs(loss.item() - barlow_twins_algorithm_1(z1, z2.roll(1, 0), 0.0051, 0.1).item()) > 1e-3
    got, want = grads(loss, [output.projection]), grads(paper, [output.projection])
    torch.testing.assert_close(got[0].double(), want[0], rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------------------------------ VICReg
def vicreg_algorithm_1(z_a, z_b, lambd=25.0, mu=25.0, nu=1.0):
    """VICReg's Algorithm 1 (the paper's: the two std terms summed, not halved as in the official repository)."""
    n, d = z_a.shape
    sim_loss = F.mse_loss(z_a, z_b)
    std_z_a = torch.sqrt(z_a.var(dim=0) + 1e-04)
    std_z_b = torch.sqrt(z_b.var(dim=0) + 1e-04)
    std_loss = torch.mean(F.relu(1 - std_z_a)) + torch.mean(F.relu(1 - std_z_b))
    z_a = z_a - z_a.mean(dim=0)
    z_b = z_b - z_b.mean(dim=0)
    cov_z_a = (z_a.T @ z_a) / (n - 1)
    cov_z_b = (z_b.T @ z_b) / (n - 1)
    off_diagonal = ~torch.eye(d, dtype=torch.bool)
    cov_loss = cov_z_a[off_diagonal].pow(2).sum() / d + cov_z_b[off_diagonal].pow(2).sum() / d
    return lambd * sim_loss + mu * std_loss + nu * cov_loss


def test_vicreg_loss_is_algorithm_1_term_by_term_and_weighted():
    z_a, z_b = random_projections()
    for weights in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (25.0, 25.0, 1.0), (2.0, 3.0, 5.0)):
        got = vicreg_loss(z_a, z_b, *weights).double()
        torch.testing.assert_close(got, vicreg_algorithm_1(z_a, z_b, *weights), rtol=1e-5, atol=1e-6)
    assert vicreg_algorithm_1(z_a, z_b, 0.0, 1.0, 0.0) > 0.1  # the variance hinge is active on the narrow dims


def test_vicreg_method_pairs_the_views_halves_with_the_papers_weights():
    trainer, model, head = built("vicreg")
    assert tuple(trainer.args.vicreg_weights) == (25.0, 25.0, 1.0)
    output, loss, embeddings = step_loss(trainer, model, head, two_views())
    z1, z2 = output.projection.chunk(2)
    paper = vicreg_algorithm_1(z1, z2)
    torch.testing.assert_close(loss.double(), paper, rtol=1e-5, atol=1e-6)
    assert torch.equal(embeddings, z1)
    assert abs(loss.item() - vicreg_algorithm_1(z1, z2.roll(1, 0)).item()) > 1e-3
    got, want = grads(loss, [output.projection]), grads(paper, [output.projection])
    torch.testing.assert_close(got[0].double(), want[0], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------ SimCLR
def nt_xent(z1, z2, temperature):
    """SimCLR's NT-Xent: 2N views, cosine similarity / T, each view's positive the other view of its image, every
    other view a negative, itself excluded; averaged over the 2N views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    n = len(z1)
    return F.cross_entropy(similarity, torch.cat([torch.arange(n) + n, torch.arange(n)]))


def test_simclr_method_is_nt_xent_on_the_views_halves():
    trainer, model, head = built("simclr")
    assert trainer.args.temperature == 0.5
    output, loss, embeddings = step_loss(trainer, model, head, two_views())
    z1, z2 = output.projection.chunk(2)
    paper = nt_xent(z1, z2, 0.5)
    torch.testing.assert_close(loss.double(), paper, rtol=1e-6, atol=1e-7)
    assert torch.equal(embeddings, z1)
    assert abs(loss.item() - nt_xent(z1, z2.roll(1, 0), 0.5).item()) > 1e-3
    watched = trained_parameters(model)
    assert_same_grads([g.double() for g in grads(loss, watched)], grads(paper, watched), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------ heads
def layers(sequential):
    """(kind, widths, bias or affine) of each layer: what a recipe's head is made of."""
    described = []
    for layer in sequential:
        if isinstance(layer, nn.Linear):
            described.append(("linear", layer.in_features, layer.out_features, layer.bias is not None))
        elif isinstance(layer, nn.BatchNorm1d):
            described.append(("bn", layer.num_features, layer.affine))
        else:
            described.append(type(layer).__name__)
    return described


def recipe_head(method):
    torch.manual_seed(0)
    encoder = encoders.build_encoder("simple_cnn", 32)  # 4,096 features
    return METHODS[method](options(method)).head(encoder)


def test_byol_head_is_the_recipes_4096_to_256_projector_and_4096_predictor():
    head = recipe_head("byol")
    assert layers(head.projector) == [("linear", 4096, 4096, False), ("bn", 4096, True), "ReLU",
                                      ("linear", 4096, 256, True)]
    assert layers(head.predictor) == [("linear", 256, 4096, False), ("bn", 4096, True), "ReLU",
                                      ("linear", 4096, 256, True)]
    assert list(head.momentum.copies) == ["encoder", "projector"]
    assert layers(head.momentum.copies["projector"]) == layers(head.projector)


def test_simsiam_head_ends_its_projector_with_a_batch_norm_without_affine_parameters():
    head = recipe_head("simsiam")
    assert layers(head.projector) == [("linear", 4096, 2048, False), ("bn", 2048, True), "ReLU",
                                      ("linear", 2048, 2048, False), ("bn", 2048, True), "ReLU",
                                      ("linear", 2048, 2048, False), ("bn", 2048, False)]
    assert layers(head.predictor) == [("linear", 2048, 512, False), ("bn", 512, True), "ReLU",
                                      ("linear", 512, 2048, True)]
    assert head.momentum is None


def test_mocov2_head_has_no_batch_norm_a_momentum_copy_and_a_queue_of_unit_keys():
    head = recipe_head("mocov2")
    assert layers(head.projector) == [("linear", 4096, 2048, True), "ReLU", ("linear", 2048, 256, True)]
    assert head.predictor is None and list(head.momentum.copies) == ["encoder", "projector"]
    assert head.queue.keys.shape == (4096, 256) and head.queue.next.item() == 0
    torch.testing.assert_close(head.queue.keys.norm(dim=1), torch.ones(4096))
    assert {"queue.keys", "queue.next"} <= set(head.state_dict())  # checkpoints hold the queue


@pytest.mark.parametrize("method", ["barlowtwins", "vicreg"])
def test_barlow_twins_and_vicreg_heads_are_three_layer_2048_projectors(method):
    head = recipe_head(method)
    assert layers(head.projector) == [("linear", 4096, 2048, False), ("bn", 2048, True), "ReLU",
                                      ("linear", 2048, 2048, False), ("bn", 2048, True), "ReLU",
                                      ("linear", 2048, 2048, True)]
    assert head.predictor is None and head.momentum is None


@pytest.mark.parametrize("method", SIAMESE)
def test_no_head_bn_removes_every_batch_norm_from_projector_predictor_and_momentum_copy(method):
    def batch_norms(head):
        return [m for m in head.modules() if isinstance(m, nn.BatchNorm1d)]
    with_bn = built(method)[2]
    assert bool(batch_norms(with_bn)) == (method != "mocov2")  # MoCo v2's MLP has none in the paper
    head = built(method, "--no-head-bn")[2]
    assert batch_norms(head) == []
    widths = [(m.in_features, m.out_features) for m in head.modules() if isinstance(m, nn.Linear)]
    assert widths == [(m.in_features, m.out_features) for m in with_bn.modules() if isinstance(m, nn.Linear)]
