"""RotNet's evaluation protocol (Gidaris et al. 2018, Table 1) for an exported encoder.

The encoder is frozen; the features after each of its conv blocks are computed once and cached on the device; a
non-linear classifier (3 fully connected layers with batch norm) and a linear one are trained on each block's
features and scored on the test split. The same network, untrained, is probed alike and reported next to it.

    accelerate launch evaluate.py --encoder runs/rotation/final --dataset cifar10   (or: ssl-evaluate ...)

It takes the training scripts' data options: --dataset (and --data-dir) evaluate with the dataset's own labelled
splits; --eval-dataset (and --eval-data-dir) with another labelled set, e.g. after training on unlabeled images.
"""
import os
import time

import torch
from ssl_scripts import UserError, config
from ssl_scripts.runtime import cli
from ssl_scripts.data import evaluation_set
from ssl_scripts.data import options as data_options
from ssl_scripts.evaluation import rotnet_protocol
from ssl_scripts.models import encoders
from ssl_scripts.runtime import files
from ssl_scripts.outputs.environment import environment
from ssl_scripts.runtime import distributed


def comma_list(text: str) -> list:
    """--classifiers: 'a,b' -> ['a', 'b']."""
    return text.split(",")


def comma_list_or_all(text: str):
    """--blocks: 'a,b' -> ['a', 'b']; empty: None, every block."""
    return comma_list(text) if text else None


def parse_args(argv=None) -> config.Options:
    parser = config.OptionParser(__doc__.strip().splitlines()[0])
    parser.add_argument("--encoder", required=True, help="an exported encoder: the final/ folder of a training run")
    data_options.add_source_options(parser, image_size=None)  # --image-size defaults to the encoder's
    distributed.add_options(parser)
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument("--blocks", type=comma_list_or_all, default=None,
                          help="comma-separated blocks to probe (default: all; nin: block1..block4, "
                               "resnet18 and resnet50: stem, layer1..layer4; torchvision:NAME: its stages, "
                               "docs/models.md)")
    protocol.add_argument("--classifiers", type=comma_list, default=",".join(rotnet_protocol.CLASSIFIERS),
                          help=f"any of: {', '.join(rotnet_protocol.CLASSIFIERS)}")
    protocol.add_argument("--classifier-epochs", type=int, default=50, help="RotNet: 50")
    protocol.add_argument("--classifier-batch-size", type=int, default=128, help="RotNet: 128")
    protocol.add_argument("--classifier-lr", type=float, default=0.1, help="x0.2 at 40%%, 80%% and 90%% of the epochs")
    protocol.add_argument("--classifier-weight-decay", type=float, default=5e-4, help="RotNet: 5e-4")
    protocol.add_argument("--train-subset", type=int, default=None,
                          help="probe on this many train images (seeded random choice; default: all), for quick runs")
    protocol.add_argument("--max-feature-dim", type=int, default=rotnet_protocol.MAX_FEATURE_DIM,
                          help="larger block maps are 2x2 average-pooled until they fit (NIN's largest: 24576)")
    protocol.add_argument("--skip-untrained", action="store_true", help="do not probe the untrained network")
    protocol.add_argument("--eval-batch-size", type=int, default=512, help="images per forward pass")
    protocol.add_argument("--seed", type=int, default=0, help="of the untrained network, subset and probes")
    parser.add_argument("--output", default=None,
                        help="JSON of the results (default: probes.json next to the encoder's folder); "
                             "the table also goes to the same name with .md")
    # Defaults: --eval-dataset the dataset's own labelled splits (if it has them), --output beside the encoder.
    args = config.decide_defaults(parser.parse_args(argv), data_options.option_defaults, output_default)
    config.require([
        (all(c in rotnet_protocol.CLASSIFIERS for c in args.classifiers),
         f"--classifiers takes {' and/or '.join(rotnet_protocol.CLASSIFIERS)} (got {','.join(args.classifiers)})"),
        (args.classifier_epochs > 0, f"--classifier-epochs must be >= 1 (got {args.classifier_epochs})"),
        (args.classifier_batch_size > 1,
         f"--classifier-batch-size must be >= 2 for batch norm (got {args.classifier_batch_size})"),
        (args.classifier_lr > 0, f"--classifier-lr must be > 0 (got {args.classifier_lr})"),
        (args.train_subset is None or args.train_subset > 1, f"--train-subset must be >= 2 (got {args.train_subset})"),
        *data_options.option_checks(args),
        (args.eval_dataset != "none", f"evaluate.py trains classifiers on labelled images, and --dataset "
                                      f"{args.dataset} has none: pass --eval-dataset (e.g. cifar10, or imagefolder "
                                      f"--eval-data-dir DIR)"),
        *distributed.option_checks(args),
    ])
    return args


def output_default(args) -> dict:
    """--output's default: probes.json next to the encoder's folder."""
    if args.output:
        return {}
    return {"output": os.path.join(os.path.dirname(os.path.abspath(args.encoder)), "probes.json")}


def main(argv=None):
    args = parse_args(argv)
    accelerator = distributed.make_accelerator(args)  # mixed precision from `accelerate launch`
    start = time.time()

    # Model: the exported encoder, and the same architecture untrained (seeded), both frozen.
    trained = encoders.load_encoder(args.encoder, accelerator.device)
    if args.image_size not in (None, trained.image_size):
        raise UserError(f"--image-size {args.image_size} differs from the encoder's {trained.image_size}: drop it")
    at_encoder_size = args.replace(image_size=trained.image_size)  # the options the data and the report get
    torch.manual_seed(args.seed)
    mean, std = trained.mean.flatten().tolist(), trained.std.flatten().tolist()
    untrained = encoders.build_encoder(trained.name, trained.image_size, mean, std, stem=trained.stem)
    untrained = untrained.to(accelerator.device).eval()
    probed = {"trained": trained} if args.skip_untrained else {"trained": trained, "untrained": untrained}
    blocks = rotnet_protocol.check_blocks(trained, args.blocks)
    dims = dict(zip(blocks, rotnet_protocol.feature_dims(trained, blocks, args.max_feature_dim)))

    # Data: the labelled set (--eval-dataset, by default --dataset's own), a folder scanned by the main process and
    # decoded once per node; uint8 until each batch is encoded.
    dataset = evaluation_set.load_evaluation(at_encoder_size, accelerator)
    subset = None
    if args.train_subset is not None and args.train_subset < len(dataset.train_labels):
        subset = torch.randperm(len(dataset.train_labels), generator=torch.Generator().manual_seed(args.seed))
        subset = subset[:args.train_subset].sort().values

    # Probes: per encoder, block features cached once, then every classifier of every block trained together.
    results = {}
    for name, encoder in probed.items():
        began = time.time()
        results[name] = rotnet_protocol.probe_encoder(
            accelerator, encoder, dataset, blocks, args.classifiers, subset, args.eval_batch_size,
            args.max_feature_dim, epochs=args.classifier_epochs, batch_size=args.classifier_batch_size,
            lr=args.classifier_lr, weight_decay=args.classifier_weight_decay, seed=args.seed)
        accelerator.print(f"{name}: probed {len(blocks)} blocks in {time.time() - began:.0f} s")

    # Report: the table (with RotNet's figures for NIN), and a JSON of everything needed to compare runs. Written
    # by the main process; a failed write (a full disk) stops every process with one line.
    def write_report():
        paper = rotnet_protocol.PAPER_NIN_NONLINEAR if trained.name == "nin" else None
        table = rotnet_protocol.format_table(results["trained"], results.get("untrained"), dims, paper)
        report = {"encoder": os.path.abspath(args.encoder), "model": trained.name, "feature_dims": dims,
                  **results, "paper_nonlinear": paper, "train_images": len(subset) if subset is not None
                  else len(dataset.train_labels), "test_images": len(dataset.test_labels),
                  "world_size": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
                  "time_s": time.time() - start, "options": vars(at_encoder_size), **environment()}
        files.write_json(args.output, report)
        files.write_text(os.path.splitext(args.output)[0] + ".md", table + "\n")
        print(f"top-1 (%) on {report['test_images']} test images, classifiers trained on "
              f"{report['train_images']} images for {args.classifier_epochs} epochs:\n{table}\n"
              f"written: {args.output}; {time.time() - start:.0f} s in all")
    # The others wait here for the main process's classifiers: see --dist-timeout.
    distributed.on_main_process_for_all(accelerator, write_report)
    accelerator.end_training()  # the process group goes down before exit, not in the interpreter's teardown


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
