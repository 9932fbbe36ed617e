"""The one training entry point every task runs through (train_rotation.py, train_siamese.py, a test's own task):
setup, the loop, the final outputs. A task (ssl_scripts/tasks/) says what differs: its options, head, batches, step and
evaluation.

    python train_rotation.py ...  ->  loop.train(tasks.Rotation)  ->  options -> Accelerator -> OUTPUT_DIR claimed
    -> seeded -> data -> model -> optimizer -> Run.start (resume, config.json, tracker) -> the loop -> final/
"""
import torch

from ssl_scripts import config
from ssl_scripts.data import evaluation_set, loader, train_split
from ssl_scripts.evaluation import frozen
from ssl_scripts.evaluation import options as evaluation_options
from ssl_scripts.models import encoders
from ssl_scripts.outputs import final
from ssl_scripts.runtime import distributed
from ssl_scripts.training import setup
from ssl_scripts.optim import optimizers
from ssl_scripts.training.run import Prepared, Run
from ssl_scripts.training.stop_signals import StopSignals


def train(task_class, argv=None) -> dict:
    """Trains `task_class` (a tasks.task.Task subclass) with the options in argv (default: the command line);
    returns results.json's values."""
    stop_signals = StopSignals.install()  # first: a preemption notice while the data loads is kept
    try:
        return _train(task_class, argv, stop_signals)
    finally:
        stop_signals.restore_ctrl_c()


def _train(task_class, argv, stop_signals) -> dict:
    args = config.parse_options(task_class, argv)
    accelerator = setup.start(args)  # the Accelerator, OUTPUT_DIR claimed, the run seeded

    # Data: decoded once (each node's first process first, the others map its cache), kept as uint8 on the device
    # or the host (--data-placement); the loader yields index batches, sharded over the processes by Accelerate.
    dataset, train_source = train_split.load_train_split(args, accelerator)
    labelled = evaluation_set.load_evaluation(args, accelerator, dataset)  # for the encoder; None: --eval-dataset none
    config.require(evaluation_options.dataset_checks(args, labelled))
    train_loader = loader.index_loader(accelerator, args, len(train_source), on_draw=train_source.read_ahead)
    task = task_class(args, dataset, train_source)
    train_source.images_to_read = task.images_to_read  # what a streamed split decodes ahead for a drawn batch

    # Model: the encoder (the product) and the task's head (thrown away after training).
    encoder = encoders.build_encoder(args.model, args.image_size, *dataset.channel_stats())
    model = encoders.EncoderWithHead(encoder, task.build_head(encoder))
    if args.sync_bn:  # batch norm over every process's images: converted before prepare() wraps the model in DDP
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = optimizers.make_optimizer(args, model, extra_groups=task.optimizer_groups(model.head))
    scheduler = setup.make_schedule(args, optimizer, train_loader, accelerator.num_processes)
    # The index batches go where the train split is indexed (the device, or the host for --data-placement host).
    prepared = Prepared(*accelerator.prepare(
        model, optimizer, train_loader, scheduler, device_placement=[True, True, train_source.on_device, True]))

    # Resumes from OUTPUT_DIR's newest intact checkpoint, if any; writes config.json, starts the tracker.
    run = Run.start(args, accelerator, prepared, project=task.name, must_match=task.must_match,
                    stop_signals=stop_signals, train_source=train_source, on_log=task.watch)
    if run.completed is not None:  # started again after it finished: nothing to train or evaluate
        return run.completed
    model = prepared.model
    unwrapped = distributed.plain_module(accelerator, model)  # evaluated eagerly; the trained model untouched

    def evaluate(suffix=""):  # stoppable between its batches by a preemption notice
        return run.evaluate(evaluation_metrics, accelerator, task, unwrapped, labelled, suffix)

    images_evaluated = evaluation_set.images_evaluated(labelled, dataset)  # spaces evaluations (Run.evaluation_due)
    if args.eval_at_start and run.fresh:
        run.log_initial_evaluation(evaluate(suffix="_init"))
    for epoch in run.epochs():
        for indices in run.batches():
            with accelerator.accumulate(model):
                batch = task.make_batch(indices, epoch)
                with accelerator.autocast():  # the forward's, for what the step runs beside it (a momentum copy)
                    loss, metrics = task.step(model, batch)
                accelerator.backward(loss)
                # on a step's last micro-batch: clip, log the norm, update (then the task's after_update); zero grads
                if run.optimizer_step():
                    task.after_update(model, run.state.step, run.total_steps)
            # After a step's last micro-batch: lr schedule, logs, checkpoint, stop on a preemption signal.
            run.end_batch(images=len(indices), samples=len(batch.inputs), loss=loss, **metrics)
        if run.evaluation_due(epoch, images_evaluated):
            run.log_evaluation(evaluate())

    final_metrics = {} if args.skip_eval else evaluate()
    results = run.results(final_metrics, skipped_images=dataset.skipped_images,
                          evaluation=evaluation_set.evaluation_summary(args, labelled, dataset))
    final.write_final(accelerator, args, unwrapped.encoder, results)  # final/ and results.json
    run.end(final_metrics, results)
    return results


def evaluation_metrics(accelerator, task, model, labelled, suffix="", between_batches=None) -> dict:
    """The frozen encoder's k-NN and linear probe on the labelled set (if any), then the task's own metrics.
    between_batches: called after each batch the evaluation encodes (Run.evaluate's stop check)."""
    metrics = {}
    if labelled:
        metrics = frozen.encoder_metrics(accelerator, model.encoder, labelled, task.args, between_batches)
    metrics.update(task.evaluate(accelerator, model, labelled, between_batches=between_batches))
    return {f"{name}{suffix}": value for name, value in metrics.items()}
