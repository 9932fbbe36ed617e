from contextlib import contextmanager

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from ssl_scripts.evaluation.frozen import knn_accuracy, linear_probe_accuracy, map_batches


def separable(n_per_class=100, dim=16, classes=4, seed=0):
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0)) * 5  # same for every split
    g = torch.Generator().manual_seed(seed + 1)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centers[labels] + torch.randn(len(labels), dim, generator=g), labels


def test_knn_on_separable_features_is_perfect_and_on_noise_is_chance():
    xtr, ytr = separable()
    xte, yte = separable(n_per_class=25, seed=1)
    assert knn_accuracy(xtr, ytr, xte, yte, k=20) == 1.0
    noise = torch.randn_like(xte)
    assert knn_accuracy(xtr, ytr, noise, yte, k=20) < 0.5


def test_knn_weights_closer_neighbours_more():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 1, 1])
    # Nearest is class 0 (cos 0.99); with a sharp temperature it outvotes two farther class-1 neighbours.
    query = torch.tensor([[1.0, 0.15]])
    assert knn_accuracy(train, labels, query, torch.tensor([0]), k=3, temperature=0.01) == 1.0
    assert knn_accuracy(train, labels, query, torch.tensor([1]), k=3, temperature=100.0) == 1.0


def test_linear_probe_learns_separable_features_and_not_shuffled_labels():
    xtr, ytr = separable()
    xte, yte = separable(n_per_class=25, seed=1)
    assert linear_probe_accuracy(xtr, ytr, xte, yte, epochs=150, batch_size=64) > 0.98
    shuffled = ytr[torch.randperm(len(ytr), generator=torch.Generator().manual_seed(0))]
    assert linear_probe_accuracy(xtr, shuffled, xte, yte, epochs=150, batch_size=64) < 0.6


def test_linear_probe_leaves_the_global_random_stream_alone():
    xtr, ytr = separable()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    linear_probe_accuracy(xtr, ytr, xtr, ytr, epochs=1)
    assert torch.equal(torch.rand(3), expected)


def test_an_evaluation_never_seeds_the_gpus(monkeypatch):
    # torch.manual_seed also seeds every CUDA generator, which fork_rng(devices=[]) does not restore: the
    # training's augmentations on the GPU would replay step 0's after each evaluation.
    from types import SimpleNamespace
    from ssl_scripts.evaluation import frozen
    from ssl_scripts.data.image_data import ImageData
    from ssl_scripts.models.encoders import build_encoder
    seeded = []
    for name in ("manual_seed", "manual_seed_all", "set_rng_state", "set_rng_state_all"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, name=name: seeded.append(name))
    AcceleratorState._reset_state(True)
    accelerator = Accelerator(cpu=True)
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = ImageData(images, torch.arange(40) % 4, images[:20], torch.arange(20) % 4, ["a", "b", "c", "d"])
    args = SimpleNamespace(eval_batch_size=16, knn_k=3, knn_temperature=0.07, linear_probe_epochs=1, seed=0)
    metrics = frozen.encoder_metrics(accelerator, build_encoder("simple_cnn", image_size=8), data, args)
    assert set(metrics) == {"eval/knn_acc", "eval/linear_probe_acc"} and seeded == []


def test_map_batches_keeps_image_order():
    AcceleratorState._reset_state(True)
    accelerator = Accelerator(cpu=True)
    images = torch.arange(37, dtype=torch.uint8).view(37, 1, 1, 1).expand(37, 3, 2, 2).contiguous()
    out = map_batches(accelerator, lambda x: x.mean(dim=(1, 2, 3)) * 255, images, batch_size=8)
    assert out.round().tolist() == pytest.approx(list(range(37)))


class SplitsOnAnotherDevice:
    """The real Accelerator, except that its padded tensor splits come back on `meta`, as Accelerate returns them
    on the GPU (state.py, _split_values: send_to_device) where the images may be host tensors."""

    def __init__(self, accelerator):
        self.accelerator = accelerator

    def __getattr__(self, name):
        return getattr(self.accelerator, name)

    @contextmanager
    def split_between_processes(self, inputs, apply_padding=False):
        with self.accelerator.split_between_processes(inputs, apply_padding=apply_padding) as mine:
            yield mine.to("meta") if torch.is_tensor(mine) and apply_padding else mine


def test_map_batches_indexes_host_images_with_host_indices():
    AcceleratorState._reset_state(True)
    accelerator = SplitsOnAnotherDevice(Accelerator(cpu=True))
    images = torch.arange(37, dtype=torch.uint8).view(37, 1, 1, 1).expand(37, 3, 2, 2).contiguous()
    out = map_batches(accelerator, lambda x: x.mean(dim=(1, 2, 3)) * 255, images, batch_size=8)
    assert out.round().tolist() == pytest.approx(list(range(37)))


def test_roc_auc_known_values():
    from ssl_scripts.evaluation.frozen import roc_auc
    positive = torch.tensor([1, 1, 0, 0])
    assert roc_auc(torch.tensor([4.0, 3.0, 2.0, 1.0]), positive) == 1.0
    assert roc_auc(torch.tensor([1.0, 2.0, 3.0, 4.0]), positive) == 0.0
    assert roc_auc(torch.tensor([1.0, 1.0, 1.0, 1.0]), positive) == 0.5
    assert roc_auc(torch.tensor([4.0, 2.0, 3.0, 1.0]), positive) == 0.75  # one of four pos/neg pairs misordered
