"""Evaluation every task shares: frozen-feature k-NN and linear probe on a labelled set, and the tools the tasks'
own metrics use (features of a split, ROC-AUC); a task's own metrics are in its file (ssl_scripts/tasks/).

Feature extraction is split across processes (Accelerate's split_between_processes) and gathered, so every
rank ends with the features of the whole split; the cheap probes then run once, on the main process.
"""
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_scripts.runtime import distributed, progress
from ssl_scripts.data.augment import to_float


@torch.no_grad()
def map_batches(accelerator, fn, images: torch.Tensor, batch_size: int, dtype=torch.float32,
                desc: str = "eval: features", between_batches=None) -> torch.Tensor:
    """fn(float batch in [0, 1]) for every image, sharded over processes; returns all outputs in image order,
    as dtype (bf16 halves the memory of large cached features). desc: its progress bar's (on a terminal).
    between_batches(): called after each batch on every process (e.g. a stop signal agreed on with a collective:
    every process maps the same number of batches, the split being padded)."""
    # A list, not a tensor: Accelerate moves a padded tensor split to the device, and a CPU tensor cannot be
    # indexed with CUDA indices. The images stay where they are (host or device) until each batch is encoded.
    with accelerator.split_between_processes(list(range(len(images))), apply_padding=True) as mine:
        mine = torch.tensor(mine, dtype=torch.int64)
        outputs = []
        for chunk in progress.on_terminal(mine.split(batch_size), desc, show=accelerator.is_local_main_process):
            outputs.append(fn(to_float(images[chunk.to(images.device)].to(accelerator.device))).to(dtype))
            if between_batches:
                between_batches()
        local = torch.cat(outputs), mine.to(accelerator.device)
    values, indices = accelerator.gather(local)
    result = torch.empty((len(images), *values.shape[1:]), dtype=values.dtype, device=values.device)
    result[indices] = values  # padding repeats an index with its own value, so order and content are exact
    return result


@contextmanager
def evaluating(accelerator, module):
    """module in eval mode under the run's autocast, restored to its previous mode afterwards; every process
    evaluates with the main process's batch norm statistics (those of the exported encoder)."""
    distributed.sync_buffers_from_main(accelerator, module)
    was_training = module.training
    module.eval()
    try:
        with accelerator.autocast():
            yield
    finally:
        module.train(was_training)


def features(accelerator, encoder, images: torch.Tensor, batch_size: int, between_batches=None) -> torch.Tensor:
    with evaluating(accelerator, encoder):
        return map_batches(accelerator, encoder, images, batch_size, between_batches=between_batches)


@torch.no_grad()
def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k=20, temperature=0.07, chunk=256) -> float:
    """Weighted k-NN (InstDisc / solo-learn): cosine similarity, neighbour weights exp(sim / temperature)."""
    num_classes = int(train_labels.max()) + 1
    train_feats = F.normalize(train_feats.float(), dim=1)
    test_feats = F.normalize(test_feats.float(), dim=1)
    train_labels, test_labels = train_labels.to(train_feats.device), test_labels.to(train_feats.device)
    k = min(k, len(train_feats))
    correct = 0
    for start in progress.on_terminal(range(0, len(test_feats), chunk), "eval: k-NN"):
        sim, idx = (test_feats[start:start + chunk] @ train_feats.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        correct += (votes.argmax(1) == test_labels[start:start + chunk]).sum().item()
    return correct / len(test_feats)


def linear_probe_accuracy(train_feats, train_labels, test_feats, test_labels, epochs=30, batch_size=1024,
                          lr=1e-3, weight_decay=1e-4, seed=0) -> float:
    """Logistic regression on frozen, standardized features (AdamW, cosine schedule); test top-1."""
    dev = train_feats.device
    train_labels, test_labels = train_labels.to(dev), test_labels.to(dev)
    mean, std = train_feats.mean(0), train_feats.std(0) + 1e-6
    xtr, xte = (train_feats - mean) / std, (test_feats - mean) / std
    num_classes = int(train_labels.max()) + 1
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the probe must not shift the training's random stream
        torch.random.default_generator.manual_seed(seed)  # the CPU generator only: CUDA ones are not forked
        probe = nn.Linear(xtr.shape[1], num_classes).to(dev)
    steps = epochs * ((len(xtr) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    with torch.enable_grad():
        for _ in progress.on_terminal(range(epochs), "eval: linear probe epochs"):
            for idx in torch.randperm(len(xtr), generator=g).to(dev).split(batch_size):
                loss = F.cross_entropy(probe(xtr[idx]), train_labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    with torch.no_grad():
        return (probe(xte).argmax(1) == test_labels).float().mean().item()


def encoder_metrics(accelerator, encoder, data, args, between_batches=None) -> dict:
    """eval/knn_acc and eval/linear_probe_acc of the frozen encoder: the train split (a streamed one's decoded
    sample) as memory / probe data, the test split scored. between_batches: map_batches'."""
    train_images, train_labels = data.evaluation_train()
    train_feats = features(accelerator, encoder, train_images, args.eval_batch_size, between_batches)
    test_feats = features(accelerator, encoder, data.test_images, args.eval_batch_size, between_batches)
    if not accelerator.is_main_process:
        return {}
    return {
        "eval/knn_acc": knn_accuracy(train_feats, train_labels, test_feats, data.test_labels,
                                     args.knn_k, args.knn_temperature),
        "eval/linear_probe_acc": linear_probe_accuracy(train_feats, train_labels, test_feats, data.test_labels,
                                                 epochs=args.linear_probe_epochs, seed=args.seed),
    }


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve = P(score of a random positive > score of a random negative), ties counted half."""
    scores, positive = scores.double().cpu(), positive.bool().cpu()
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    for value in scores[order][:-1][scores[order][1:] == scores[order][:-1]].unique():  # average tied ranks
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_pos, n_neg = positive.sum().item(), (~positive).sum().item()
    return ((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()
