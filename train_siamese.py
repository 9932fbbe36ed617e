"""Siamese network with the contrastive loss (Hadsell, Chopra & LeCun 2006), with Hugging Face Accelerate.

One shared encoder embeds both images of a pair; similar pairs are pulled together, dissimilar pairs pushed
beyond a margin. Pairs come from labels (same class = similar) or, self-supervised, from augmentation (two
views of one image = similar). The encoder is judged like the rotation script's (k-NN and linear probe), plus
the ROC-AUC of embedding distances on balanced test pairs.

    accelerate launch --cpu train_siamese.py --dataset synthetic --model simple_cnn --max-steps 100
"""
import torch

from common import UserError, augment, cli, config, data, evaluation, models, training
from common.losses import PAIR_LOSSES
from common.pairs import PairSampler

# Options a checkpoint of this script cannot be resumed under when changed (besides the shared ones).
MUST_MATCH = ("pairs", "embedding_dim")


def parse_args(argv=None):
    parser = config.build_parser(__doc__.strip().splitlines()[0])
    parser.add_argument("--pairs", choices=("label", "augment"), default="label",
                        help="label: same class = similar; augment: two views of one image = similar (no labels)")
    parser.add_argument("--positive-fraction", type=float, default=0.5, help="share of similar pairs")
    parser.add_argument("--loss", choices=tuple(PAIR_LOSSES), default="contrastive", help="see common/losses.py")
    parser.add_argument("--margin", type=float, default=1.0, help="dissimilar pairs are pushed this far apart")
    parser.add_argument("--embedding-dim", type=int, default=128)
    args = config.validate(parser.parse_args(argv))
    args.augment = args.augment or ("simclr" if args.pairs == "augment" else "crop_flip")
    if args.pairs == "label" and args.dataset not in data.LABELLED:
        raise UserError(f"--pairs label needs a label for every train image, and --dataset {args.dataset} has "
                        f"unlabeled ones: use --pairs augment (two views of one image are a similar pair)")
    if not 0 <= args.positive_fraction <= 1:
        raise UserError(f"--positive-fraction must be within [0, 1] (got {args.positive_fraction})")
    if args.margin <= 0 or args.embedding_dim <= 0:
        raise UserError("--margin and --embedding-dim must be > 0")
    return args


def evaluate(accelerator, model, dataset, labelled, args, suffix=""):
    """The frozen encoder and its class pairs on the labelled set (if any); augment pairs: two views of one image
    told from two images, on images never trained on."""
    metrics = {}
    if labelled:
        metrics.update(evaluation.encoder_metrics(accelerator, model.encoder, labelled, args))
        metrics.update(evaluation.pair_metrics(accelerator, model, labelled.test_images, labelled.test_labels,
                                               args.eval_batch_size))
    if args.pairs == "augment":
        metrics.update(evaluation.view_pair_metrics(accelerator, model, dataset.test_images, args.augment,
                                                    args.eval_batch_size))
    return {f"{name}{suffix}": value for name, value in metrics.items()}


def main(argv=None):
    stop_signals = training.StopSignals()  # first: a preemption notice while the data loads stops the first step
    args = parse_args(argv)
    accelerator = training.make_accelerator(args)  # also seeds: the run's one seeding point

    # Data: uint8 images on the device or the host (--data-placement); the loader yields anchor indices, sharded
    # by Accelerate; each anchor's partner is a pure function of (seed, epoch, index), drawn where they are.
    dataset, train_images = data.load_data(args, accelerator)
    labelled = data.load_evaluation(args, accelerator, dataset)  # evaluates the encoder; None: --eval-dataset none
    config.require(config.dataset_checks(args, labelled))
    train_loader = data.index_loader(accelerator, args, len(train_images), on_draw=train_images.read_ahead)
    pairs = PairSampler(dataset.train_labels, args.pairs, args.positive_fraction, args.seed,
                        dataset.classes).to(train_images.index_device)

    # Model: the shared encoder (the product) + a projection to the embedding compared by the loss.
    mean, std = dataset.channel_stats()
    encoder = models.build_encoder(args.model, args.image_size, mean, std)
    model = models.EncoderWithHead(encoder, models.projection_head(encoder, args.embedding_dim))
    loss_fn = PAIR_LOSSES[args.loss]

    # Optimizer and schedule; Accelerate handles devices, DDP, mixed precision and sharding of the loader.
    optimizer = training.make_optimizer(args, model)
    scheduler = training.make_schedule(args, optimizer, train_loader, accelerator.num_processes)
    # The index batches go where the train split is indexed (the device, or the host for --data-placement host).
    model, optimizer, train_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, scheduler, device_placement=[True, True, train_images.on_device, True])

    # The run: resumes from OUTPUT_DIR's newest checkpoint if there is one; logs, checkpoints, stops on signals.
    run = training.Run(args, accelerator, model, optimizer, scheduler, train_loader, "siamese", MUST_MATCH,
                       stop_signals, images=train_images)
    unwrapped = accelerator.unwrap_model(model)
    if args.eval_at_start and run.fresh:
        run.log_initial_evaluation(run.evaluate(evaluate, accelerator, unwrapped, dataset, labelled, args,
                                                suffix="_init"))

    # Loop: both images of every pair go through the encoder in one forward pass (one DDP call per step).
    for epoch in run.epochs():
        for anchors in run.batches():
            with accelerator.accumulate(model):
                partners, similar = pairs(anchors, epoch)
                similar = similar.to(accelerator.device, non_blocking=True)
                views = augment.augment(torch.cat([train_images[anchors], train_images[partners]]), args.augment)
                emb_anchor, emb_partner = model(views).chunk(2)
                loss = loss_fn(emb_anchor, emb_partner, similar, args.margin)
                accelerator.backward(loss)
                run.optimizer_step()  # on a step's last micro-batch: clip, log the norm, update; zero the grads
            # After a step's last micro-batch: lr schedule, logs, checkpoint, stop on a preemption signal.
            run.end_batch(images=len(anchors), samples=2 * len(anchors), loss=loss, positive_fraction=similar.mean())
        if run.evaluation_due(epoch):
            run.log_evaluation(run.evaluate(evaluate, accelerator, unwrapped, dataset, labelled, args))

    final_metrics = {} if args.skip_eval else run.evaluate(evaluate, accelerator, unwrapped, dataset, labelled, args)
    run.finish(unwrapped.encoder, final_metrics, skipped_images=dataset.skipped_files,
               evaluation=data.evaluation_summary(args, labelled, dataset))


if __name__ == "__main__":
    cli.run(main)
