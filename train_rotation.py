"""Self-supervised rotation prediction (RotNet, Gidaris et al. 2018) with Hugging Face Accelerate.

Every image is rotated by 0/90/180/270 degrees and the network learns to tell the angle; the encoder it
leaves behind is judged by how well its frozen features classify the dataset (k-NN and linear probe).

    accelerate launch --cpu train_rotation.py --dataset synthetic --model simple_cnn --max-steps 100
"""
import torch.nn.functional as F

from common import augment, cli, config, data, evaluation, models, training

# Options a checkpoint of this script cannot be resumed under when changed (besides the shared ones).
MUST_MATCH = ("rotations_per_image",)


def parse_args(argv=None):
    parser = config.build_parser(__doc__.strip().splitlines()[0])
    parser.add_argument("--rotations-per-image", type=int, choices=(1, 4), default=4,
                        help="4: all rotations of each image in one batch (RotNet); 1: one random rotation (the "
                             "original tutorial's)")
    args = config.validate(parser.parse_args(argv))
    args.augment = args.augment or "crop_flip"
    return args


def evaluate(accelerator, model, dataset, labelled, args, suffix=""):
    """The frozen encoder on the labelled set (if any); the rotation accuracy on images never trained on."""
    metrics = evaluation.encoder_metrics(accelerator, model.encoder, labelled, args) if labelled else {}
    metrics.update(evaluation.rotation_metrics(accelerator, model, dataset.test_images, args.eval_batch_size))
    return {f"{name}{suffix}": value for name, value in metrics.items()}


def main(argv=None):
    stop_signals = training.StopSignals()  # first: a preemption notice while the data loads stops the first step
    args = parse_args(argv)
    accelerator = training.make_accelerator(args)  # also seeds: the run's one seeding point

    # Data: decoded once (each node's first process first, the others map its cache), kept as uint8 on the device
    # or the host (--data-placement); the loader yields index batches, sharded over the processes by Accelerate.
    dataset, train_images = data.load_data(args, accelerator)
    labelled = data.load_evaluation(args, accelerator, dataset)  # evaluates the encoder; None: --eval-dataset none
    config.require(config.dataset_checks(args, labelled))
    train_loader = data.index_loader(accelerator, args, len(train_images), on_draw=train_images.read_ahead)

    # Model: encoder (the product) + a 4-way rotation head (discarded after training).
    mean, std = dataset.channel_stats()
    encoder = models.build_encoder(args.model, args.image_size, mean, std)
    model = models.EncoderWithHead(encoder, models.rotation_head(encoder))

    # Optimizer and schedule; Accelerate handles devices, DDP, mixed precision and sharding of the loader.
    optimizer = training.make_optimizer(args, model)
    scheduler = training.make_schedule(args, optimizer, train_loader, accelerator.num_processes)
    # The index batches go where the train split is indexed (the device, or the host for --data-placement host).
    model, optimizer, train_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, scheduler, device_placement=[True, True, train_images.on_device, True])

    # The run: resumes from OUTPUT_DIR's newest checkpoint if there is one; logs, checkpoints, stops on signals.
    run = training.Run(args, accelerator, model, optimizer, scheduler, train_loader, "rotation", MUST_MATCH,
                       stop_signals, images=train_images)
    unwrapped = accelerator.unwrap_model(model)
    if args.eval_at_start and run.fresh:
        run.log_initial_evaluation(run.evaluate(evaluate, accelerator, unwrapped, dataset, labelled, args,
                                                suffix="_init"))

    # Loop: each step sees all four rotations of every image in the batch (4x batch-size samples).
    for epoch in run.epochs():
        for indices in run.batches():
            with accelerator.accumulate(model):
                images = augment.augment(train_images[indices], args.augment)
                inputs, labels = augment.rotate(images, args.rotations_per_image)
                logits = model(inputs)
                loss = F.cross_entropy(logits, labels)
                accelerator.backward(loss)
                run.optimizer_step()  # on a step's last micro-batch: clip, log the norm, update; zero the grads
            # After a step's last micro-batch: lr schedule, logs, checkpoint, stop on a preemption signal.
            run.end_batch(images=len(indices), samples=len(inputs), loss=loss,
                          acc=(logits.argmax(1) == labels).float().mean())
        if run.evaluation_due(epoch):
            run.log_evaluation(run.evaluate(evaluate, accelerator, unwrapped, dataset, labelled, args))

    # Evaluation of the final encoder, then final/, results.json and the tracker's summary.
    final_metrics = {} if args.skip_eval else run.evaluate(evaluate, accelerator, unwrapped, dataset, labelled, args)
    run.finish(unwrapped.encoder, final_metrics, skipped_images=dataset.skipped_files,
               evaluation=data.evaluation_summary(args, labelled, dataset))


if __name__ == "__main__":
    cli.run(main)
