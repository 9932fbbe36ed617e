"""The data options: where the images come from (the training scripts' and evaluate.py's), their augmentation and
where the train split lives; --eval-dataset's default and the checks."""
import argparse
import os

from ssl_scripts.data import augment, image_data, placement


def add_options(parser: argparse.ArgumentParser):
    """The training scripts' data group: the images' source, --augment and --data-placement."""
    group = add_source_options(parser)
    group.add_argument("--augment", choices=tuple(augment.AUGMENTATIONS), default=None,
                       help=" ".join(f"{name}: {(fn.__doc__ or name).splitlines()[0]}"
                                     for name, fn in augment.AUGMENTATIONS.items()) + " Default: the task's.")
    placement.add_options(group)
    return group


def add_source_options(parser: argparse.ArgumentParser, image_size=32):
    """Where the images come from: the same options for the training scripts and evaluate.py."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=tuple(image_data.DATASETS), default="cifar10",
                       help="; ".join(f"{name}: {what}" for name, what in image_data.DATASETS.items()))
    group.add_argument("--data-dir", default="./data",
                       help="where --dataset's files are (see --dataset), or are downloaded to when missing")
    group.add_argument("--eval-dataset", choices=image_data.DATASETS_TO_EVALUATE, default=None,
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


def option_defaults(args) -> dict:
    """--eval-dataset's default (the training scripts' and evaluate.py's): the dataset itself when it can
    evaluate itself, else none."""
    if args.eval_dataset is not None:
        return {}
    return {"eval_dataset": args.dataset if args.dataset in image_data.EVALUATES_ITSELF else "none"}


def option_checks(args) -> list:
    """(ok, message) checks of the options add_source_options made (an unset --image-size is not checked;
    --eval-dataset's default is decided first, by option_defaults)."""
    return [(args.synthetic_size >= 8, f"--synthetic-size must be >= 8 (got {args.synthetic_size})"),
            (args.image_size is None or args.image_size >= 8, f"--image-size must be >= 8 (got {args.image_size})"),
            (args.eval_dataset in image_data.EVALUATES_ITSELF + ("none",),
             f"--eval-dataset {args.eval_dataset} has no labels to evaluate with: pass a labelled one "
             f"({', '.join(image_data.EVALUATES_ITSELF)}) or none"),
            (args.eval_dataset != "imagefolder" or args.eval_data_dir or args.dataset == "imagefolder",
             "--eval-dataset imagefolder needs --eval-data-dir: a folder with train/<class>/ and test/<class>/")]
