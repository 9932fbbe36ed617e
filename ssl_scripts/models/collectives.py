"""Every cross-process gather and sum of a loss over the global batch, with gradients: one place to change when
torch does. One process: the tensor itself."""
import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


class GatherRows(torch.autograd.Function):
    """all_gather forward; backward: every process's gradient of all rows summed (an all-reduce), this process's
    rows kept. torch's functional all_gather_single backs through a reduce-scatter, which gloo runs on CPU tensors
    only (the installed libtorch has no gloo reduce-scatter CUDA work); all_gather and all_reduce run on every
    backend and device (gloo is what two processes on one GPU use)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())  # collective
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # collective: the sum over processes
        rows = len(grad) // world_size()
        return grad[rank() * rows:(rank() + 1) * rows]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Collective: every process's x concatenated along dim 0 in rank order (equal shapes on every process).
    Gradients flow back to each process's rows, summed over the processes: a loss computed alike on every process
    gives each world_size x its rows' gradient, which DDP's average over processes divides back."""
    return x if world_size() == 1 else GatherRows.apply(x)


def gather_with_start(x: torch.Tensor):
    """Collective: (gather(x), the row where this process's x starts in it)."""
    return gather(x), rank() * len(x)


class SumOverProcesses(torch.autograd.Function):
    """all_reduce forward and backward: the sum, whose gradient on every process is the sum of theirs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        total = x.contiguous().clone()
        dist.all_reduce(total)  # collective
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # collective
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Collective: the sum of x over the processes, on every process; its gradient is the sum of theirs."""
    return x if world_size() == 1 else SumOverProcesses.apply(x)
