"""Every cross-process gather and sum of a loss over the global batch, with gradients (torch's functional
collectives): one place to change when torch does. One process: the tensor itself."""
import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def gather(x: torch.Tensor) -> torch.Tensor:
    """Collective: every process's x concatenated along dim 0 in rank order (equal shapes on every process).
    Gradients flow back to each process's rows, summed over the processes: a loss computed alike on every process
    gives each world_size x its rows' gradient, which DDP's average over processes divides back."""
    if world_size() == 1:
        return x
    from torch.distributed import _functional_collectives as functional
    return functional.wait_tensor(functional.all_gather_single(x.contiguous(), 0, dist.group.WORLD))


def gather_with_start(x: torch.Tensor):
    """Collective: (gather(x), the row where this process's x starts in it)."""
    return gather(x), rank() * len(x)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Collective: the sum of x over the processes, on every process; its gradient is the sum of theirs."""
    if world_size() == 1:
        return x
    from torch.distributed import _functional_collectives as functional
    return functional.wait_tensor(functional.all_reduce(x, "sum", dist.group.WORLD))
