"""The labelled set that evaluates the encoder (--eval-dataset): the training dataset's own or another one, what
an evaluation encodes, and what results.json says of it.
"""
import argparse

from ssl_scripts.data import sources, streaming
from ssl_scripts.data.folders import scan_imagefolder
from ssl_scripts.data.image_data import ImageData, split_sizes_of


def evaluates_itself(args) -> bool:
    """Whether the labelled evaluation set is the training dataset's own."""
    return args.eval_dataset == args.dataset and args.eval_data_dir in (None, args.data_dir)


def load_evaluation(args, accelerator, dataset: ImageData = None):
    """The labelled set the encoder is evaluated on (--eval-dataset; an ImageData whose every image has a label), at
    the training's --image-size, or None (--eval-dataset none, --skip-eval). dataset: the training dataset, if
    loaded. Says once what the evaluation will use."""
    if getattr(args, "skip_eval", False):
        return None
    if args.eval_dataset == "none":
        held_out = f" on its {len(dataset.test_images):,} held-out images" if dataset is not None else ""
        accelerator.print(f"evaluation: none (--eval-dataset none): no labelled images, so no k-NN or linear probe; "
                          f"the pretext's own metrics only{held_out}. For them, pass --eval-dataset cifar10 (or "
                          f"imagefolder --eval-data-dir DIR, ...)", flush=True)
        return None
    if evaluates_itself(args):
        return (dataset or sources.load_shared(args, accelerator)).labelled()
    options = dict(vars(args), dataset=args.eval_dataset, data_dir=args.eval_data_dir or "./data")
    labelled = sources.load_shared(argparse.Namespace(**options), accelerator).labelled()
    accelerator.print(f"evaluation: on the labelled images of {args.eval_dataset} {options['data_dir']} "
                      f"({len(labelled.train_labels):,} train + {len(labelled.test_labels):,} test images, "
                      f"{len(labelled.classes)} classes) at {args.image_size} px", flush=True)
    return labelled


def evaluated_images(args, n_train: int, n_test: int) -> int:
    """How many images an evaluation encodes (k-NN memory, probe data and test), for the memory it needs."""
    if args.eval_dataset == "none":
        return 0
    if evaluates_itself(args):
        if args.dataset == "stl10":
            return 5_000 + n_test
        if args.data_placement == "stream":
            return min(n_train, streaming.STREAM_EVAL_SAMPLE) + n_test
        return n_train + n_test
    if args.eval_dataset == "imagefolder":
        return sum(map(len, scan_imagefolder(args.eval_data_dir)[0].values()))
    return sum(split_sizes_of(args.eval_dataset, args.synthetic_size))


def images_evaluated(labelled: ImageData, dataset: ImageData) -> int:
    """The images an evaluation encodes: the labelled set's probe and test images, and the pretext's held-out ones."""
    labelled_images = len(labelled.evaluation_train()[1]) + len(labelled.test_labels) if labelled is not None else 0
    return labelled_images + len(dataset.test_images)


def evaluation_summary(args, labelled: ImageData, dataset: ImageData) -> dict:
    """What results.json says of the evaluation: the labelled set (or none) and the images the pretext's own
    metrics are measured on."""
    summary = {"labelled": "none" if labelled is None else args.eval_dataset,
               "pretext_images": 0 if args.skip_eval else len(dataset.test_images)}
    if labelled is not None:
        summary.update(data_dir=args.data_dir if evaluates_itself(args) else args.eval_data_dir or "./data",
                       classes=len(labelled.classes), train_images=len(labelled.evaluation_train()[1]),
                       test_images=len(labelled.test_labels))
    if args.skip_eval:
        summary["skipped"] = True
    return summary
