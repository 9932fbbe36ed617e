"""The training's options: the optimization group (its length and batch, the optimizer's and the schedule's, how
each step goes) and the run group (output dir, resume, checkpoints, logs, the tracker's); with their checks."""
import argparse

from ssl_scripts.outputs import tracking
from ssl_scripts.optim import optimizers, schedules


def add_options(parser: argparse.ArgumentParser) -> None:
    optimization = parser.add_argument_group("optimization")
    optimization.add_argument("--epochs", type=int, default=200, help="passes over the train split")
    optimization.add_argument("--max-steps", type=int, default=None,
                              help="stop after this many optimizer steps (overrides --epochs; default: none, --epochs "
                                   "decides)")
    optimization.add_argument("--batch-size", type=int, default=None,
                              help="images per optimizer step over all processes (default: the method's recipe, "
                                   "else 128, RotNet's), split evenly over the "
                                   "processes and --grad-accum micro-batches: the same recipe on any number of GPUs")
    optimization.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    optimizers.add_options(optimization)
    schedules.add_options(optimization)
    optimization.add_argument("--max-grad-norm", type=float, default=None,
                              help="clip gradients to this norm (default: no clipping; the norm is logged either way)")
    optimization.add_argument("--seed", type=int, default=0,
                              help="of every random draw: initial weights, data order, augmentations, pairs")
    optimization.add_argument("--deterministic", action="store_true",
                              help="deterministic kernels only (torch.use_deterministic_algorithms): with it, a run "
                                   "stopped and resumed ends with the weights of one that never stopped")
    optimization.add_argument("--nan-policy", choices=("abort", "skip"), default="abort",
                              help="on a non-finite loss or gradient: abort (keeping the last good checkpoint) or skip "
                                   "the update and count it; every process decides alike. fp16 overflow steps are the "
                                   "GradScaler's and only counted")

    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", default="./runs/default",
                     help="where the run writes its checkpoints, logs, results and exported encoder")
    run.add_argument("--resume", default="auto",
                     help="auto: continue from the newest checkpoint in OUTPUT_DIR if any; never; or a checkpoint PATH")
    run.add_argument("--checkpoint-every", type=int, default=250, help="optimizer steps between checkpoints")
    run.add_argument("--keep-checkpoints", type=int, default=3, help="the newest checkpoints kept, older ones deleted")
    run.add_argument("--log-every", type=int, default=10, help="optimizer steps between logged train metrics")
    tracking.add_options(run)
    run.add_argument("--count-host-syncs", action="store_true",
                     help="CUDA only: count the operations per step that make the CPU wait for the GPU "
                          "(torch.cuda.set_sync_debug_mode), reported in results.json; for the GPU check")


def option_defaults(args) -> dict:
    """The plain defaults of options a task's recipe may set (Task.recipe), for those it left unset."""
    plain = {"batch_size": 128, "weight_decay": 5e-4, "warmup_epochs": 0}
    return {name: value for name, value in plain.items() if getattr(args, name) is None}


def option_checks(args) -> list:
    """(ok, message) checks of add_options's options (see config.require): values that would fail late or
    silently."""
    return [
        (args.batch_size > 0, f"--batch-size must be >= 1 (got {args.batch_size})"),
        (args.grad_accum > 0, f"--grad-accum must be >= 1 (got {args.grad_accum})"),
        (args.epochs > 0, f"--epochs must be >= 1 (got {args.epochs})"),
        (args.max_steps is None or args.max_steps > 0, f"--max-steps must be >= 1 (got {args.max_steps})"),
        *optimizers.option_checks(args),
        (args.max_grad_norm is None or args.max_grad_norm > 0,
         f"--max-grad-norm must be > 0 (got {args.max_grad_norm})"),
        (args.checkpoint_every > 0, f"--checkpoint-every must be >= 1 (got {args.checkpoint_every})"),
        (args.keep_checkpoints > 0, f"--keep-checkpoints must be >= 1 (got {args.keep_checkpoints})"),
        (args.log_every > 0, f"--log-every must be >= 1 (got {args.log_every})"),
    ]
