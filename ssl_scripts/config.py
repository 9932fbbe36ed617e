"""The one parser of options every task shares, a task's own added to it, their defaults and their checks."""
import argparse
import os
import platform
import re
import subprocess

from ssl_scripts import UserError, cli
from ssl_scripts.data import datasets as data
from ssl_scripts.data import augment, placement
from ssl_scripts.models import encoders
from ssl_scripts.outputs import files
from ssl_scripts.training import schedules
from ssl_scripts.runtime.distributed import add_distributed_arguments, distributed_checks
from ssl_scripts.training.optimizers import OPTIMIZERS

DEFAULT_EVAL_EVERY = 10  # epochs between evaluations when --eval-every is not given


class HelpFormatter(argparse.HelpFormatter):
    """--help with every option's default said once: argparse's "(default: X)", unless the help says "default:" in
    words (a default filled in after parsing, None until then) or the option is a flag or required."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default is not argparse.SUPPRESS
        if shown and not action.required and not re.search(r"%\(default\)|\bdefault:", text, re.IGNORECASE):
            text += " (default: %(default)s)"
        return text


class OptionParser(argparse.ArgumentParser):
    """The parser of every command: HelpFormatter's --help, and a bad option one `error:` line (exit status 2)
    instead of argparse's whole usage before it."""

    def __init__(self, description: str, **options):
        super().__init__(description=description, formatter_class=HelpFormatter, **options)

    def error(self, message):
        # Every process parses the same command line, so all fail alike: said once.
        cli.end_with_user_error(f"{message}; see {self.prog} --help", agreed=True)


def parse_options(task, argv=None) -> argparse.Namespace:
    """The shared options and the task's (a tasks.task.Task subclass), their defaults filled (the model's recipe,
    the task's), checked: one `error: ...` line saying what to do at the first bad one."""
    parser = build_parser(task.description)
    task.add_options(parser)
    args = parser.parse_args(argv)
    args.task = task.name
    fill_defaults(args)
    task.fill_defaults(args)
    require(option_checks(args) + task.option_checks(args))
    return args


def recipe_defaults(option: str) -> str:
    """The defaults of a recipe option by model, from encoders.MODELS: 'sgd (simple_cnn: adamw)'."""
    values = {name: spec.recipe[option] for name, spec in encoders.MODELS.items()}
    usual = max(set(values.values()), key=list(values.values()).count)
    others = ", ".join(f"{name}: {value}" for name, value in values.items() if value != usual)
    return f"{usual} ({others})" if others else str(usual)


def build_parser(description: str) -> argparse.ArgumentParser:
    """Options every task takes. Defaults follow RotNet's CIFAR-10 recipe (Gidaris et al. 2018)."""
    p = OptionParser(description)
    data = add_data_arguments(p)
    data.add_argument("--augment", choices=tuple(augment.AUGMENTATIONS), default=None,
                      help=" ".join(f"{name}: {(fn.__doc__ or name).splitlines()[0]}"
                                    for name, fn in augment.AUGMENTATIONS.items()) + " Default: the task's.")
    placement.add_placement_argument(data)

    model = p.add_argument_group("model")
    model.add_argument("--model", default="resnet18", help=f"the encoder: {', '.join(encoders.MODELS)}")
    model.add_argument("--compile", action="store_true",
                       help="torch.compile the model (Accelerate's dynamo backend 'inductor'); first steps are slow")
    model.add_argument("--sync-bn", action="store_true",
                       help="batch norm statistics over the global batch (torch.nn.SyncBatchNorm; needs GPUs "
                            "under accelerate launch). Without it each process normalizes by its own micro-batch, so a "
                            "model with batch norm (resnet18, nin) trains differently on another number of processes")

    opt = p.add_argument_group("optimization")
    opt.add_argument("--epochs", type=int, default=200, help="passes over the train split")
    opt.add_argument("--max-steps", type=int, default=None,
                     help="stop after this many optimizer steps (overrides --epochs; default: none, --epochs decides)")
    opt.add_argument("--batch-size", type=int, default=128,
                     help="images per optimizer step over all processes (RotNet: 128), split evenly over the "
                          "processes and --grad-accum micro-batches: the same recipe on any number of GPUs")
    opt.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    opt.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default=None,
                     help=" ".join(f"{name}: {(fn.__doc__ or name).splitlines()[0]}" for name, fn in OPTIMIZERS.items())
                          + f" (default: the model's recipe, {recipe_defaults('optimizer')})")
    opt.add_argument("--lr", type=float, default=None,
                     help=f"the peak learning rate (default: the model's recipe, {recipe_defaults('lr')})")
    opt.add_argument("--weight-decay", type=float, default=5e-4, help="the optimizer's weight decay (RotNet: 5e-4)")
    opt.add_argument("--schedule", choices=tuple(schedules.SCHEDULES), default=None,
                     help="; ".join(f"{name}: {what}" for name, what in schedules.SCHEDULES.items()).replace("%", "%%")
                          + f" (default: the model's recipe, {recipe_defaults('schedule')})")
    opt.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up")
    opt.add_argument("--max-grad-norm", type=float, default=None,
                     help="clip gradients to this norm (default: no clipping; the norm is logged either way)")
    opt.add_argument("--seed", type=int, default=0,
                     help="of every random draw: initial weights, data order, augmentations, pairs")
    opt.add_argument("--deterministic", action="store_true",
                     help="deterministic kernels only (torch.use_deterministic_algorithms): with it, a run stopped "
                          "and resumed ends with the weights of one that never stopped")
    opt.add_argument("--nan-policy", choices=("abort", "skip"), default="abort",
                     help="on a non-finite loss or gradient: abort (keeping the last good checkpoint) or skip the "
                          "update and count it; every process decides alike. fp16 overflow steps are the "
                          "GradScaler's and only counted")

    run = p.add_argument_group("run")
    run.add_argument("--output-dir", default="./runs/default",
                     help="where the run writes its checkpoints, logs, results and exported encoder")
    run.add_argument("--resume", default="auto",
                     help="auto: continue from the newest checkpoint in OUTPUT_DIR if any; never; or a checkpoint PATH")
    run.add_argument("--checkpoint-every", type=int, default=250, help="optimizer steps between checkpoints")
    run.add_argument("--keep-checkpoints", type=int, default=3, help="the newest checkpoints kept, older ones deleted")
    run.add_argument("--log-every", type=int, default=10, help="optimizer steps between logged train metrics")
    run.add_argument("--report-to", choices=("wandb", "tensorboard", "none"), default="wandb",
                     help="the tracker the metrics go to (none: no tracker)")
    run.add_argument("--wandb-project", default=None, help="default: $WANDB_PROJECT, else the task's name")
    run.add_argument("--wandb-entity", default=None, help="W&B team or user (default: $WANDB_ENTITY, else yours)")
    run.add_argument("--run-name", default=None,
                     help="display name of the run (default: $WANDB_NAME, else the output dir's name)")
    run.add_argument("--wandb-tags", default=None, help="comma-separated tags (default: $WANDB_TAGS)")

    run.add_argument("--count-host-syncs", action="store_true",
                     help="CUDA only: count the operations per step that make the CPU wait for the GPU "
                          "(torch.cuda.set_sync_debug_mode), reported in results.json; for the GPU check")
    add_distributed_arguments(p)

    ev = p.add_argument_group("evaluation")
    ev.add_argument("--skip-eval", action="store_true",
                    help="no evaluation at all, not even at the end (throughput benchmarks, smoke tests)")
    ev.add_argument("--eval-every", type=int, default=None,
                    help=f"epochs between evaluations, 0: only at the end (default: {DEFAULT_EVAL_EVERY}, and further "
                         f"apart where the training between two sees fewer images than an evaluation encodes; a "
                         f"value given is kept)")
    ev.add_argument("--eval-at-start", action="store_true",
                    help="also evaluate the untrained encoder, logged as eval/*_init")
    ev.add_argument("--eval-batch-size", type=int, default=512, help="images per forward pass of the evaluation")
    ev.add_argument("--knn-k", type=int, default=20, help="neighbours of the weighted k-NN (eval/knn_acc)")
    ev.add_argument("--knn-temperature", type=float, default=0.07,
                    help="the k-NN's neighbour weights are exp(similarity / this)")
    ev.add_argument("--linear-probe-epochs", type=int, default=30,
                    help="epochs of the linear probe (eval/linear_probe_acc) on the frozen encoder's features")
    return p


def add_data_arguments(parser: argparse.ArgumentParser, image_size=32):
    """Where the images come from: the same options for the training scripts and evaluate.py."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=tuple(data.DATASETS), default="cifar10",
                       help="; ".join(f"{name}: {what}" for name, what in data.DATASETS.items()))
    group.add_argument("--data-dir", default="./data",
                       help="where --dataset's files are (see --dataset), or are downloaded to when missing")
    group.add_argument("--eval-dataset", choices=data.DATASETS_TO_EVALUATE, default=None,
                       help="the labelled set the frozen encoder is evaluated on (k-NN, linear probe) at "
                            "--image-size; default: the training dataset when it has labels, else none (the "
                            "pretext's own metrics only)")
    group.add_argument("--eval-data-dir", default=None,
                       help="where --eval-dataset is (default: --data-dir for the training dataset itself, else "
                            "./data; imagefolder: required)")
    group.add_argument("--image-size", type=int, default=image_size,
                       help="square side images are resized/cropped to"
                            + ("" if image_size is not None else " (default: the encoder's)"))
    group.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "ssl-scripts"),
                       help="decoded image folders are cached here so a second run starts in seconds")
    group.add_argument("--synthetic-size", type=int, default=1024,
                       help="train images of --dataset synthetic (test: a quarter); 50000 is CIFAR-10's size")
    group.add_argument("--skip-bad-images", action="store_true",
                       help="drop (and count) unreadable images instead of stopping at the first one")
    return group


def fill_defaults(args: argparse.Namespace) -> None:
    """The shared options' defaults that depend on other options: the model's recipe (encoders.MODELS; explicit
    options win) and --eval-dataset's (fill_eval_dataset)."""
    for name, value in encoders.model_spec(args.model).recipe.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    fill_eval_dataset(args)


def fill_eval_dataset(args: argparse.Namespace) -> None:
    """--eval-dataset's default (the training scripts' and evaluate.py's): the dataset itself when it can
    evaluate itself, else none."""
    if args.eval_dataset is None:
        args.eval_dataset = args.dataset if args.dataset in data.EVALUATES_ITSELF else "none"


def option_checks(args: argparse.Namespace) -> list:
    """(ok, message) checks of the shared options (see require): values that would fail late or silently."""
    return [
        (args.lr > 0, f"--lr must be > 0 (got {args.lr})"),
        (args.batch_size > 0, f"--batch-size must be >= 1 (got {args.batch_size})"),
        (args.grad_accum > 0, f"--grad-accum must be >= 1 (got {args.grad_accum})"),
        (args.epochs > 0, f"--epochs must be >= 1 (got {args.epochs})"),
        (args.max_steps is None or args.max_steps > 0, f"--max-steps must be >= 1 (got {args.max_steps})"),
        (not (args.skip_eval and args.eval_at_start), "--skip-eval and --eval-at-start contradict: drop one"),
        *data_checks(args),
        *distributed_checks(args),
        (args.max_grad_norm is None or args.max_grad_norm > 0,
         f"--max-grad-norm must be > 0 (got {args.max_grad_norm})"),
        (args.weight_decay >= 0, f"--weight-decay must be >= 0 (got {args.weight_decay})"),
        (args.checkpoint_every > 0, f"--checkpoint-every must be >= 1 (got {args.checkpoint_every})"),
        (args.keep_checkpoints > 0, f"--keep-checkpoints must be >= 1 (got {args.keep_checkpoints})"),
        (args.log_every > 0, f"--log-every must be >= 1 (got {args.log_every})"),
        (args.eval_every is None or args.eval_every >= 0, f"--eval-every must be >= 0 (got {args.eval_every})"),
        (args.knn_k > 0, f"--knn-k must be >= 1 (got {args.knn_k})"),
        (args.knn_temperature > 0, f"--knn-temperature must be > 0 (got {args.knn_temperature})"),
        (args.linear_probe_epochs > 0, f"--linear-probe-epochs must be >= 1 (got {args.linear_probe_epochs})"),
    ]


def data_checks(args: argparse.Namespace) -> list:
    """(ok, message) checks of the options add_data_arguments made (an unset --image-size is not checked; an
    unset --eval-dataset is filled by fill_defaults first)."""
    return [(args.synthetic_size >= 8, f"--synthetic-size must be >= 8 (got {args.synthetic_size})"),
            (args.image_size is None or args.image_size >= 8, f"--image-size must be >= 8 (got {args.image_size})"),
            (args.eval_dataset in data.EVALUATES_ITSELF + ("none",),
             f"--eval-dataset {args.eval_dataset} has no labels to evaluate with: pass a labelled one "
             f"({', '.join(data.EVALUATES_ITSELF)}) or none"),
            (args.eval_dataset != "imagefolder" or args.eval_data_dir or args.dataset == "imagefolder",
             "--eval-dataset imagefolder needs --eval-data-dir: a folder with train/<class>/ and test/<class>/")]


def dataset_checks(args: argparse.Namespace, labelled) -> list:
    """(ok, message) checks of the options against the labelled evaluation set (data.load_evaluation), once loaded."""
    if labelled is None:
        return []
    memory = len(labelled.evaluation_train()[1])
    return [(args.knn_k <= memory, f"--knn-k {args.knn_k} is larger than the evaluation's train split "
                                   f"({memory} images): lower it")]


def require(checks: list) -> None:
    """Stops at the first (ok, message) that is not ok, with its message: the fix, said to the user."""
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def environment() -> dict:
    """What a run needs to be reproduced beyond its options: code version, library versions, where it ran."""
    import accelerate
    import torch
    import torchvision

    def git(*command):
        try:
            return subprocess.run(["git", *command], cwd=os.path.dirname(os.path.abspath(__file__)),
                                  capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "git_commit": git("rev-parse", "HEAD") or "unknown",
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "accelerate": accelerate.__version__,
        "python": platform.python_version(), "hostname": platform.node(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
    }


def save_config(args: argparse.Namespace, path: str, **extra) -> None:
    files.write_json(path, {**vars(args), **extra}, sort_keys=True)
