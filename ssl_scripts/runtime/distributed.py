"""The Accelerator every entry point builds, and what all processes must agree on.

Every decision that depends on the file system is taken by one process and broadcast: on a shared file system
(NFS, Lustre) two nodes can see different answers for a while, and ranks that branch differently enter different
collectives and hang.
"""
import os
import socket
import uuid
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, broadcast, broadcast_object_list, gather_object

from ssl_scripts import UserError


def add_options(parser) -> None:
    """The distributed group: the process group's backend and timeout."""
    group = parser.add_argument_group("distributed")
    group.add_argument("--dist-backend", choices=("nccl", "gloo"), default=None,
                       help="process-group backend (default: Accelerate's choice, nccl on GPUs, gloo on CPUs); gloo "
                            "lets several processes share one GPU, e.g. to test the multi-process path on one GPU")
    group.add_argument("--dist-timeout", type=int, default=3600,
                       help="seconds a collective may wait before the run is stopped: while rank 0 decodes an image "
                            "folder or trains probe classifiers, the others wait (NCCL's own limit is 600)")


def make_accelerator(args, **options) -> Accelerator:
    """An Accelerator on the GPU when there is one, else on the CPU (gloo between processes), with the process
    group's backend and timeout from the options; `options` go to Accelerator (trackers, accumulation, ...)."""
    share_gpus_if_outnumbered(args)
    # cpu=True without a GPU: processes started by torchrun (accelerate_configs/cpu.yaml) still find each other,
    # since Accelerate then picks gloo (MULTI_CPU) instead of running each process alone.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[process_group_options(args)],
                              **options)
    # cuDNN picks the fastest convolution for each input shape once; our shapes never change within a run.
    torch.backends.cudnn.benchmark = not getattr(args, "deterministic", False)
    return accelerator


def share_gpus_if_outnumbered(args) -> bool:
    """When a node runs more processes than it has GPUs (e.g. 2 processes on 1 GPU to test the multi-process path),
    Accelerate puts process i on cuda:(i % GPUs), a valid device, but still hands DDP device_ids=[i]: DDP then
    moves rank 1's inputs to cuda:1, which does not exist (IndexError at the first forward). DDP must get no
    device_ids (it then uses the model's own device); ACCELERATE_BYPASS_DEVICE_MAP makes Accelerate pass None.
    NCCL cannot run two ranks on one GPU at all: that is one line before any process group starts. Every barrier
    is made to name no device (barriers_without_a_device). True when the GPUs are shared."""
    processes, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
    if gpus == 0 or processes <= gpus:
        return False
    if (args.dist_backend or "nccl") == "nccl":
        raise UserError(f"{processes} processes on this node's {gpus} GPU(s): NCCL cannot run two processes on one "
                        f"GPU; pass --dist-backend gloo, or launch at most {gpus} process(es) per node")
    os.environ["ACCELERATE_BYPASS_DEVICE_MAP"] = "true"
    barriers_without_a_device()
    return True


def _barrier_without_a_device(state) -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # a collective: gloo's barrier, on no device


def barriers_without_a_device() -> None:
    """Accelerate's every barrier (wait_for_everyone, main_process_first, save_state) goes through
    PartialState.wait_for_everyone, which calls torch.distributed.barrier(device_ids=[local_process_index]): torch
    then allocates the barrier's tensor on cuda:1 of a one-GPU node ("invalid device ordinal"). Processes sharing
    GPUs run gloo, whose barrier needs no device, so in this process that method becomes a barrier without one."""
    from accelerate.state import PartialState
    PartialState.wait_for_everyone = _barrier_without_a_device


def option_checks(args) -> list:
    """(ok, message) checks of the options add_options made (see config.require)."""
    return [(args.dist_timeout > 0, f"--dist-timeout must be > 0 seconds (got {args.dist_timeout})")]


def process_group_options(args) -> InitProcessGroupKwargs:
    # A backend given to a process that was not launched as one of several would make Accelerate look for a
    # process group that does not exist.
    launched = "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1
    return InitProcessGroupKwargs(backend=args.dist_backend if launched else None,
                                  timeout=timedelta(seconds=args.dist_timeout))


def plain_module(accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The module a prepared model wraps (DDP, torch.compile), the prepared model left as it is. Accelerate's
    unwrap_model keeps a compiled model compiled by setting its _orig_mod to the bare module: the live training
    model would lose DDP's no_sync (every micro-batch would all-reduce), and evaluation would run the compiled
    DDP forward (a buffer broadcast per call, recompiles for eval mode)."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def on_main_process_for_all(accelerator, decide):
    """decide() run on the main process only; every process gets its answer, or the UserError it raised."""
    answer = [None]
    if accelerator.is_main_process:
        try:
            answer = [("value", decide())]
        except UserError as e:
            answer = [("error", str(e))]
    if accelerator.num_processes > 1:
        broadcast_object_list(answer)
        # A broadcast is rank 0's send only: rank 0 could exit (on the error, or at the end of a run) with it still
        # in flight, which makes gloo abort the process (seen 2 times in 8 evaluate.py runs). All meet once more.
        accelerator.wait_for_everyone()
    kind, value = answer[0]
    if kind == "error":
        raise UserError(value, agreed=True)
    return value


def probe_shared_directory(accelerator, path: str) -> None:
    """Raises on every process unless `path` is one directory for all of them (a shared file system): a file rank
    0 writes there must be visible to every rank. Node-local output dirs would give a run in pieces. The probe
    writes a marker file into `path` and removes it before returning."""
    if accelerator.num_processes == 1:
        return
    token = broadcast_object_list([uuid.uuid4().hex])[0]
    marker = os.path.join(path, f".same-dir-{token}")
    if accelerator.is_main_process:
        open(marker, "w").close()
    accelerator.wait_for_everyone()
    views = gather_object([(os.path.exists(marker), socket.gethostname(), accelerator.process_index)])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        os.remove(marker)
    blind = [f"rank {rank} on {host}" for sees, host, rank in views if not sees]
    if blind:
        raise UserError(f"{path!r} is not the same directory on every node ({', '.join(blind)} cannot see what rank "
                        f"0 wrote there): put --output-dir on a file system all nodes share")


def sync_buffers_from_main(accelerator, module: torch.nn.Module) -> None:
    """Every process gets the main process's buffers (batch norm statistics). Each rank updated its own with its
    own batches since DDP last broadcast them; rank 0's are the ones the exported encoder holds."""
    buffers = list(module.buffers())
    if accelerator.num_processes > 1 and buffers:
        broadcast(buffers, from_process=0)  # in place (torch.distributed.broadcast)
