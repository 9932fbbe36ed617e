from types import SimpleNamespace

import pytest
import torch
from accelerate.data_loader import prepare_data_loader, skip_first_batches

from ssl_scripts.data.pairs import PairSampler, balanced_test_pairs
from ssl_scripts.data.loader import index_loader

LABELS = torch.arange(10).repeat_interleave(100)[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]


def test_pairs_are_a_pure_function_of_seed_epoch_and_anchor():
    sampler = PairSampler(LABELS, seed=3)
    anchors = torch.arange(1000)
    p1, s1 = sampler(anchors, epoch=2)
    p2, s2 = PairSampler(LABELS, seed=3)(anchors.flip(0), epoch=2)  # another order, another sampler object
    assert torch.equal(p1, p2.flip(0)) and torch.equal(s1, s2.flip(0))
    p3, _ = sampler(anchors, epoch=3)
    p4, _ = PairSampler(LABELS, seed=4)(anchors, epoch=2)
    assert (p1 != p3).float().mean() > 0.8 and (p1 != p4).float().mean() > 0.8


@pytest.mark.parametrize("fraction", [0.5, 0.2])
def test_label_pairs_are_right_and_positive_fraction_holds(fraction):
    anchors = torch.arange(1000).repeat(10)
    partners, similar = PairSampler(LABELS, "label", fraction, seed=1)(anchors, epoch=0)
    same_class = LABELS[anchors] == LABELS[partners]
    assert torch.equal(same_class, similar.bool())
    assert (partners != anchors).all()
    sd = (fraction * (1 - fraction) / len(anchors)) ** 0.5
    assert abs(similar.mean().item() - fraction) < 4 * sd


def test_seed_style_uniform_partners_are_mostly_negative():
    partners = torch.randint(0, 1000, (10000,), generator=torch.Generator().manual_seed(0))
    assert (LABELS[partners] == LABELS[torch.arange(10000) % 1000]).float().mean() < 0.12
    _, similar = PairSampler(LABELS)(torch.arange(1000), epoch=0)
    assert 0.42 < similar.mean() < 0.58


def test_augment_pairs_use_the_same_image_or_another():
    anchors = torch.arange(1000)
    partners, similar = PairSampler(LABELS, "augment", 0.5)(anchors, epoch=0)
    assert torch.equal(partners == anchors, similar.bool())
    assert partners.min() >= 0 and partners.max() < 1000


def test_partners_cover_all_classes_uniformly():
    anchors = torch.zeros(20000, dtype=torch.long)  # one anchor, many epochs' worth of draws
    draws = torch.cat([PairSampler(LABELS, "label", 0.0)(anchors[:1], epoch=e)[0] for e in range(2000)])
    counts = torch.bincount(LABELS[draws], minlength=10)
    assert counts[LABELS[0]] == 0 and (counts[torch.arange(10) != LABELS[0]] > 150).all()


def epoch_anchors(num_processes, rank, epoch, skip=0):
    one_process = SimpleNamespace(num_processes=num_processes, device=torch.device("cpu"))
    global_batch = SimpleNamespace(batch_size=40, grad_accum=1)
    loader = prepare_data_loader(index_loader(one_process, global_batch, 1000), num_processes=num_processes,
                                 process_index=rank, put_on_device=False, use_seedable_sampler=True, data_seed=7)
    loader.set_epoch(epoch)
    if skip:
        loader = skip_first_batches(loader, skip)
    return [batch for batch in loader]


def test_two_ranks_together_make_the_pairs_of_one_rank():
    sampler = PairSampler(LABELS, seed=7)
    one = torch.cat(epoch_anchors(1, 0, epoch=1))
    ranks = [torch.cat(epoch_anchors(2, r, epoch=1)) for r in range(2)]
    assert not set(ranks[0].tolist()) & set(ranks[1].tolist())  # no anchor seen by both ranks
    as_set = lambda a: set(zip(a.tolist(), *[t.tolist() for t in sampler(a, epoch=1)]))
    assert as_set(one) == as_set(ranks[0]) | as_set(ranks[1])
    assert len(one) == 1000


def test_a_resumed_epoch_has_the_pairs_it_would_have_had():
    sampler = PairSampler(LABELS, seed=7)
    full = epoch_anchors(1, 0, epoch=2)
    resumed = epoch_anchors(1, 0, epoch=2, skip=10)
    assert len(resumed) == len(full) - 10
    for a, b in zip(full[10:], resumed):
        assert torch.equal(a, b)
        assert all(torch.equal(x, y) for x, y in zip(sampler(a, 2), sampler(b, 2)))


def test_balanced_test_pairs():
    anchors, partners, similar = balanced_test_pairs(LABELS, num_pairs=400)
    assert similar.sum() == 200
    assert torch.equal(LABELS[anchors] == LABELS[partners], similar.bool())
    assert torch.equal(balanced_test_pairs(LABELS, num_pairs=400)[1], partners)


@pytest.mark.parametrize("mode", ["label", "augment"])
def test_drawing_partners_never_makes_the_host_wait(mode):
    # On `meta` tensors (a stand-in for a GPU): no tensor made from host data, no value read back, per call.
    from helpers import HostWaits
    sampler = PairSampler(LABELS, mode).to("meta")
    with HostWaits() as waits:
        partners, similar = sampler(torch.arange(64, device="meta"), epoch=3)
        alive = waits.alive()  # it did see what it sees: a detector that saw nothing would pass without this
    assert waits.seen == [] and alive and partners.device.type == "meta" and partners.shape == (64,)


def test_a_class_with_one_image_is_named_for_label_pairs():
    from ssl_scripts import UserError
    labels = torch.tensor([0, 0, 1, 2, 2])
    with pytest.raises(UserError, match="every class, and bird has one: add images, or use --pairs augment"):
        PairSampler(labels, "label", class_names=["cat", "bird", "dog"])
    PairSampler(labels, "augment")  # augment pairs need no second image of a class


def test_test_pairs_of_a_set_with_one_image_classes_anchor_same_class_pairs_on_the_others():
    labels = torch.tensor([0, 0, 0, 1, 2, 3, 3, 4])  # classes 1, 2 and 4 have one image each
    anchors, partners, similar = balanced_test_pairs(labels, num_pairs=200)
    same = similar.bool()
    assert same.sum() == 100 and bool((labels[anchors[same]] == labels[partners[same]]).all())
    assert bool((anchors[same] != partners[same]).all())
    assert bool((labels[anchors[~same]] != labels[partners[~same]]).all())
    assert balanced_test_pairs(torch.tensor([0, 1, 2])) is None
