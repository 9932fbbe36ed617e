"""The seeded order training draws its batches in: batches of sample indices, per process, for the train split
wherever it is placed (placement.TrainImages turns them into images on the device).
"""
import torch

from ssl_scripts import UserError


def micro_batch_size(args, num_processes: int) -> int:
    """Images per process per micro-batch: --batch-size is the global batch of one optimizer step, so a recipe
    means the same (samples per step, steps per epoch, lr) on any number of processes."""
    parts = num_processes * args.grad_accum
    if args.batch_size % parts:
        raise UserError(f"--batch-size {args.batch_size} (images per optimizer step, over all processes) does not "
                        f"divide into {num_processes} processes x {args.grad_accum} accumulation steps: "
                        f"use a multiple of {parts}")
    return args.batch_size // parts


def index_loader(accelerator, args, num_samples: int, on_draw=None):
    """Batches of sample indices for this process's micro-batches; the train split is indexed where it is placed
    (placement.TrainImages: on the device, in host memory, or decoded from its files). Pinned on a GPU, so
    Accelerate's copy of each batch to the device does not make the host wait.

    The loader gets a generator of its own: without one, every new iterator draws a seed from the global RNG (at
    the start of an epoch; mid-epoch after a resume), shifting the augmentations a resumed run draws.

    on_draw(indices): called with each batch as the loader draws it, one batch ahead of the one training uses
    (TrainImages.read_ahead starts decoding a streamed batch there)."""
    if num_samples < args.batch_size:
        raise UserError(f"the train split ({num_samples} images) is smaller than one --batch-size "
                        f"({args.batch_size}): lower it")
    batch = micro_batch_size(args, accelerator.num_processes)
    # Per process: Accelerate's prepare shards the sampler, each process taking every num_processes-th batch.
    return torch.utils.data.DataLoader(SampleIndices(num_samples), batch_size=batch, shuffle=True, drop_last=True,
                                       generator=torch.Generator().manual_seed(0),
                                       pin_memory=accelerator.device.type == "cuda",
                                       collate_fn=on_draw or _as_drawn)


class SampleIndices(torch.utils.data.Dataset):
    """The indices 0..n-1, a batch fetched as one tensor: the DataLoader's default would fetch each index as a
    tensor of its own and stack them, a cost every step pays at small batches."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(index)

    def __getitems__(self, indices: list) -> torch.Tensor:
        return torch.tensor(indices)


def _as_drawn(indices: torch.Tensor) -> torch.Tensor:
    return indices
