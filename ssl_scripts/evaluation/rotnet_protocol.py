"""RotNet's evaluation protocol (Gidaris et al. 2018, Table 1): classifiers trained on the frozen features after each
conv block of an encoder, reported for the trained encoder next to the same network untrained.

Classifiers, as in gidariss/FeatureLearningRotNet (NonLinearClassifier.py, 'MultLayer'; the CIFAR-10 configs):
- nonlinear: the block's map flattened, then 3 fully connected layers with batch norm, hidden width
  min(20 x classes, 2048) (200 on CIFAR-10);
- linear: batch norm without affine parameters (a standardization, so still linear) and one linear layer;
both trained with SGD Nesterov, lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, lr x0.2 at 40%, 80% and 90% of
training (RotNet: 20/40/45 of 50 epochs).

One deliberate difference: RotNet runs the frozen encoder on freshly cropped and flipped images at every step. Here
each block's features are computed once and cached on the device in bf16, for every train image and its horizontal
flip (one of the two drawn per sample and step); crops are not replayed. A probe then trains in seconds, not minutes.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_scripts import UserError
from ssl_scripts.runtime import progress
from ssl_scripts.optim import schedules
from ssl_scripts.evaluation.frozen import evaluating, map_batches

CLASSIFIERS = ("nonlinear", "linear")
MAX_FEATURE_DIM = 24576  # NIN's block1 map (96x16x16), flattened as RotNet does; larger maps are average-pooled
# RotNet, Table 1 (CIFAR-10, NIN with 4 conv blocks, non-linear classifier): top-1 per block.
PAPER_NIN_NONLINEAR = {"block1": 0.8507, "block2": 0.8906, "block3": 0.8621, "block4": 0.6173}


def flatten_map(x: torch.Tensor, max_dim: int = MAX_FEATURE_DIM) -> torch.Tensor:
    """(N, C, H, W) -> (N, C*h*w): the map flattened, after 2x2 average pooling for as long as it holds more than
    max_dim values (ResNet-18's 64x32x32 maps -> 64x16x16), so every block's cache fits on the device."""
    while x[0].numel() > max_dim and min(x.shape[2:]) > 1:
        x = F.avg_pool2d(x, 2)
    return x.flatten(1)


def check_blocks(encoder, blocks) -> list:
    blocks = list(blocks or encoder.block_names)
    unknown = [b for b in blocks if b not in encoder.block_names]
    if unknown:
        raise UserError(f"{encoder.name} has no block {', '.join(unknown)}: "
                        f"choose from {', '.join(encoder.block_names)}")
    return blocks


def feature_dims(encoder, blocks, max_dim: int = MAX_FEATURE_DIM) -> list:
    device = encoder.mean.device
    with torch.no_grad():
        was_training = encoder.training
        maps = encoder.eval().block_features(torch.zeros(1, 3, encoder.image_size, encoder.image_size, device=device))
        encoder.train(was_training)
    return [flatten_map(maps[encoder.block_names.index(b)], max_dim).shape[1] for b in blocks]


def block_features(accelerator, encoder, images: torch.Tensor, batch_size: int, blocks=None, flip=False,
                   max_dim: int = MAX_FEATURE_DIM, dtype=torch.bfloat16) -> dict:
    """{block name: (N, D) features} of the frozen encoder, every block from one pass over the images (of their
    mirror images with flip), sharded over processes; every rank gets the whole split."""
    blocks = check_blocks(encoder, blocks)
    positions = [encoder.block_names.index(b) for b in blocks]

    def all_blocks(x):
        maps = encoder.block_features(x.flip(3) if flip else x)
        return torch.cat([flatten_map(maps[i], max_dim) for i in positions], dim=1)

    dims = feature_dims(encoder, blocks, max_dim)
    with evaluating(accelerator, encoder):
        joined = map_batches(accelerator, all_blocks, images, batch_size, dtype,
                             desc=f"block features{' (mirrored)' if flip else ''}")
    return dict(zip(blocks, joined.split(dims, dim=1)))


def nonlinear_classifier(dim: int, num_classes: int) -> nn.Module:
    hidden = min(20 * num_classes, 2048)
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, num_classes))


def linear_classifier(dim: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, num_classes))


CLASSIFIER_BUILDERS = {"nonlinear": nonlinear_classifier, "linear": linear_classifier}


def train_classifiers(train_views: dict, train_labels: torch.Tensor, test_features: dict, test_labels: torch.Tensor,
                      classifiers=CLASSIFIERS, epochs: int = 50, batch_size: int = 128, lr: float = 0.1,
                      weight_decay: float = 5e-4, seed: int = 0) -> dict:
    """Trains each kind of classifier on each block's features and returns test top-1 as {block: {kind: acc}}.

    train_views: {block: [features] or [features, features of the flipped images]}, each (N, D). All classifiers
    train in one loop over the same batches: each has parameters of its own, so this is the same as training them
    one at a time, without walking the data once per classifier."""
    device = train_labels.device
    num_classes = int(train_labels.max()) + 1
    with torch.random.fork_rng(devices=[]):  # the probes must not shift the caller's random stream
        torch.random.default_generator.manual_seed(seed)  # the CPU generator only: CUDA ones are not forked
        heads = nn.ModuleDict({block: nn.ModuleDict({kind: CLASSIFIER_BUILDERS[kind](views[0].shape[1], num_classes)
                                                     for kind in classifiers})
                               for block, views in train_views.items()}).to(device)
    optimizer = torch.optim.SGD(heads.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    n = len(train_labels)
    batch_size = min(batch_size, n)
    total_steps = epochs * (n // batch_size)
    scheduler = schedules.make_scheduler(optimizer, total_steps, milestones=schedules.CLASSIFIER_MILESTONES)
    generator = torch.Generator().manual_seed(seed)
    heads.train()
    for _ in progress.on_terminal(range(epochs), "classifier epochs"):
        order = torch.randperm(n, generator=generator).to(device)
        mirrored = (torch.rand(n, 1, generator=generator) < 0.5).to(device)
        for indices in order.split(batch_size):
            if len(indices) < batch_size:
                break  # a short last batch (possibly of one sample, which batch norm cannot train on)
            labels = train_labels[indices]
            loss = 0.0
            for block, views in train_views.items():
                x = views[0][indices]
                if len(views) > 1:
                    x = torch.where(mirrored[indices], views[1][indices], x)
                x = x.float()
                for head in heads[block].values():
                    loss = loss + F.cross_entropy(head(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    heads.eval()
    results = {}
    with torch.no_grad():
        for block, kinds in heads.items():
            for kind, head in kinds.items():
                correct = sum((head(x.float()).argmax(1) == y).sum().item()
                              for x, y in zip(test_features[block].split(1024), test_labels.split(1024)))
                results.setdefault(block, {})[kind] = correct / len(test_labels)
    return results


def probe_encoder(accelerator, encoder, data, blocks=None, classifiers=CLASSIFIERS, train_subset=None,
                  extract_batch_size: int = 512, max_dim: int = MAX_FEATURE_DIM, **train_options) -> dict:
    """The whole protocol for one encoder: cached block features of the train split (and its mirror images) and
    of the test split, then the classifiers. {block: {kind: top-1}} on the main process, {} on the others."""
    train_images = data.train_images if train_subset is None else data.train_images[train_subset]
    train_labels = data.train_labels if train_subset is None else data.train_labels[train_subset]
    views = [block_features(accelerator, encoder, train_images, extract_batch_size, blocks, flip, max_dim)
             for flip in (False, True)]
    test = block_features(accelerator, encoder, data.test_images, extract_batch_size, blocks, False, max_dim)
    if not accelerator.is_main_process:
        return {}
    device = accelerator.device
    return train_classifiers({block: [v[block] for v in views] for block in test}, train_labels.to(device),
                             test, data.test_labels.to(device), classifiers, **train_options)


def format_table(trained: dict, untrained: dict = None, dims: dict = None, paper: dict = None) -> str:
    """Markdown table: top-1 (%) per block, trained next to untrained, and the paper's figure where given."""
    kinds = list(next(iter(trained.values())))
    header = ["block"] + (["features"] if dims else []) + [f"{k} (trained)" for k in kinds]
    header += [f"{k} (untrained)" for k in kinds] if untrained else []
    header += ["paper nonlinear"] if paper else []
    rows = []
    for block, accs in trained.items():
        row = [block] + ([str(dims[block])] if dims else []) + [f"{100 * accs[k]:.2f}" for k in kinds]
        row += [f"{100 * untrained[block][k]:.2f}" for k in kinds] if untrained else []
        row += [f"{100 * paper[block]:.2f}" if block in paper else ""] if paper else []
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
