"""Before the loop: the Accelerator, OUTPUT_DIR claimed, the run's one seeding point, and the step counts the lr
schedule and the Run share."""
import math
import os
import tempfile

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, set_seed

from ssl_scripts import UserError
from ssl_scripts.outputs import runlock
from ssl_scripts.outputs.tracking import tracker_name
from ssl_scripts.runtime import distributed
from ssl_scripts.optim import schedules


def start(args) -> Accelerator:
    """The loop's first steps, in their order: the Accelerator, OUTPUT_DIR claimed (one training per folder,
    writable, shared by every process), the run's one seeding point."""
    accelerator = build_accelerator(args)
    claim_output_dir(accelerator, args)
    seed_run(args)
    return accelerator


def build_accelerator(args) -> Accelerator:
    """The Accelerator of a training run: tracker, accumulation, seeded data order (distributed.make_accelerator
    adds the device and the process group)."""
    accelerator = distributed.make_accelerator(
        args,
        gradient_accumulation_steps=args.grad_accum,
        log_with=tracker_name(args),
        project_dir=args.output_dir,
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step, not once per process
        # Shuffling seeded by (seed, epoch): every rank agrees on the order, and a resume replays it. Index
        # batches of a split on the GPU are copied there from pinned memory without waiting (loader.index_loader pins
        # them); for a split in host memory or streamed they stay on the host (the loop's device_placement).
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed, non_blocking=True),
        dynamo_backend="inductor" if args.compile else None,
    )
    # torch's SyncBatchNorm (and DDP around it) refuses CPU tensors once a process group exists, even of one process
    # (accelerate launch); without one (python train_*.py) it is plain batch norm
    if args.sync_bn and accelerator.device.type != "cuda" and torch.distributed.is_initialized():
        raise UserError(f"--sync-bn needs GPUs: torch's SyncBatchNorm refuses CPU tensors in launched processes "
                        f"({accelerator.num_processes} here); leave --sync-bn out on the CPU", agreed=True)
    return accelerator


def claim_output_dir(accelerator, args) -> None:
    """Before anything is written to OUTPUT_DIR: this run holds it (one training per folder,
    ssl_scripts/outputs/runlock.py; the main process holds the lock until it exits), it is writable, and every
    process sees the same folder."""
    distributed.on_main_process_for_all(accelerator, lambda: runlock.acquire(args.output_dir))
    check_output_dir(args.output_dir)
    distributed.probe_shared_directory(accelerator, args.output_dir)


def seed_run(args) -> None:
    """The run's one seeding point. Each rank draws its own augmentations (restored on resume); the initial
    weights are rank 0's on every rank, as DDP broadcasts them when prepare() wraps the model."""
    set_seed(args.seed, device_specific=True, deterministic=args.deterministic)


def check_output_dir(output_dir: str) -> None:
    """Fail before any training if results could not be written (creates the folder if missing)."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise runlock.unwritable_output_dir(output_dir, e) from e


def make_schedule(args, optimizer, train_loader, num_processes: int):
    """The lr schedule over the run's optimizer steps. train_loader: the loader before accelerator.prepare, which
    shards it into len(train_loader) // num_processes batches per process."""
    batches = len(train_loader) // num_processes
    warmup = args.warmup_steps
    if warmup is None:
        warmup = round(args.warmup_epochs * steps_per_epoch(args, batches))
    total = total_steps(args, batches)
    if warmup > total and PartialState().is_main_process:
        print(f"note: the lr warm-up ({warmup} steps) is longer than the run ({total} steps): the lr never reaches "
              f"--lr; lower --warmup-epochs or --warmup-steps", flush=True)
    return schedules.make_scheduler(optimizer, total, args.schedule, warmup)


def steps_per_epoch(args, batches_per_process: int) -> int:
    return math.ceil(batches_per_process / args.grad_accum)


def total_steps(args, batches_per_process: int) -> int:
    return args.max_steps or args.epochs * steps_per_epoch(args, batches_per_process)
