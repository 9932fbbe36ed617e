"""Self-supervised rotation prediction (RotNet, Gidaris et al. 2018) with Hugging Face Accelerate.

Every image is rotated by 0/90/180/270 degrees and the network learns to tell the angle; the encoder it
leaves behind is judged by how well its frozen features classify the dataset (k-NN and linear probe).

    accelerate launch --config_file accelerate_configs/cpu.yaml train_rotation.py --dataset synthetic --max-steps 20
"""
import torch.nn.functional as F

from common import config, data, evaluation, models, training


def parse_args(argv=None):
    parser = config.build_parser(__doc__.strip().splitlines()[0])
    parser.add_argument("--rotations-per-image", type=int, choices=(1, 4), default=4,
                        help="4: all rotations of each image in one batch (RotNet); 1: one random rotation (the seed)")
    args = config.validate(parser.parse_args(argv))
    args.augment = args.augment or "crop_flip"
    return args


def evaluate(accelerator, model, dataset, args, suffix=""):
    metrics = evaluation.encoder_metrics(accelerator, model.encoder, dataset, args)
    metrics.update(evaluation.rotation_metrics(accelerator, model, dataset.test_images, args.eval_batch_size))
    return {f"{name}{suffix}": value for name, value in metrics.items()}


def main(argv=None):
    args = parse_args(argv)
    accelerator = training.make_accelerator(args)

    # Data: decoded once (main process first, so the others read its cache), then kept on the device as uint8.
    dataset, train_images = training.load_data(args, accelerator)
    train_loader = training.index_loader(accelerator, args, len(train_images))

    # Model: encoder (the product) + a 4-way rotation head (discarded after training).
    mean, std = dataset.channel_stats()
    encoder = models.build_encoder(args.model, args.image_size, mean, std)
    model = models.EncoderWithHead(encoder, models.rotation_head(encoder))

    # Optimizer and schedule; Accelerate handles devices, DDP, mixed precision and sharding of the loader.
    optimizer = training.make_optimizer(args, model)
    model, optimizer, scheduler, run = training.prepare(args, accelerator, model, optimizer, train_loader, "rotation")

    unwrapped = accelerator.unwrap_model(model)
    if args.eval_at_start and run.fresh:
        run.record_init_metrics(evaluate(accelerator, unwrapped, dataset, args, suffix="_init"))

    # Loop: each step sees all four rotations of every image in the batch (4x batch-size samples).
    for epoch in run.epochs():
        for indices in run.batches():
            with accelerator.accumulate(model):
                images = data.augment(train_images[indices], args.augment)
                inputs, labels = data.rotate(images, args.rotations_per_image)
                logits = model(inputs)
                loss = F.cross_entropy(logits, labels)
                accelerator.backward(loss)
                if run.gradients_ok(model):  # on optimizer steps: gradient norm logged, clipped if asked
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            run.track(images=len(indices), samples=len(inputs), loss=loss,
                      acc=(logits.argmax(1) == labels).float().mean())
            if accelerator.sync_gradients:
                run.step_done(scheduler)
                if run.finished:
                    break
        if run.should_evaluate(epoch):
            run.log(evaluate(accelerator, unwrapped, dataset, args))
            run.resume_clock()

    # Evaluation of the final encoder, then final/, results.json and the tracker's summary.
    run.finish(unwrapped.encoder, {} if args.skip_eval else evaluate(accelerator, unwrapped, dataset, args))


if __name__ == "__main__":
    training.cli(main)
