"""In-process toy runs: a task's options parsed, and the real Run set up as the scripts set it up, around a tiny
model, on one CPU process; and OUTPUT_DIR released as the process's exit would release it."""
import os


def parse(argv, task="rotation"):
    """A task's options as its training command parses them (defaults filled, checked)."""
    from ssl_scripts.config import parse_options
    from ssl_scripts.tasks import TASKS
    return parse_options(TASKS[task], [str(a) for a in argv])


def training_accelerator(args):
    """The loop's Accelerator setup: built, OUTPUT_DIR claimed, the run seeded (the first lines of
    ssl_scripts/loop.py's train)."""
    from ssl_scripts.training import setup
    return setup.start(args)


def prepared_run(args, accelerator, model, samples=64, project="test", accelerator_view=None, must_match=()):
    """What the scripts set up between their model and their loop, on `samples` indices: (Run, prepared model).
    accelerator_view: what the Run is handed instead of the Accelerator (e.g. one that reports a GPU); must_match:
    the task's checkpoint fields, as the loop hands them."""
    from ssl_scripts.data.loader import index_loader
    from ssl_scripts.training import setup
    from ssl_scripts.optim.optimizers import make_optimizer
    from ssl_scripts.training.run import Prepared, Run
    from ssl_scripts.training.stop_signals import StopSignals
    loader = index_loader(accelerator, args, samples)
    optimizer = make_optimizer(args, model)
    scheduler = setup.make_schedule(args, optimizer, loader, accelerator.num_processes)
    prepared = Prepared(*accelerator.prepare(model, optimizer, loader, scheduler))
    run = Run.start(args, accelerator_view or accelerator, prepared, project, must_match,
                    stop_signals=StopSignals.install())  # as the loop installs them
    return run, prepared.model


def toy_run(output_dir, *extra, accelerator_view=None):
    """A real Run around a 2 -> 1 linear model, set up as the scripts do, on 64 samples (one CPU process):
    --batch-size 8, a checkpoint every 3 steps, a log every 2, 2 epochs of 8 steps. Returns (run, model)."""
    import torch
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    args = parse(
        ["--output-dir", str(output_dir), "--report-to", "none", "--batch-size", "8", "--checkpoint-every", "3",
         "--epochs", "2", "--log-every", "2", *map(str, extra)])
    return prepared_run(args, training_accelerator(args), torch.nn.Linear(2, 1),
                        accelerator_view=accelerator_view)


def toy_train(output_dir, *extra, stop_after=None):
    """The scripts' loop around toy_run's model; returns (the index batches it trained on, in order; the run)."""
    run, model = toy_run(output_dir, *extra)
    seen = []
    toy_steps(run, model, stop_after, seen)
    return seen, run


def task_toy_run(task, output_dir, *extra):
    """toy_run with a task's own options (e.g. siamese's --embedding-dim) and its checkpoint fields (its
    must_match, handed to the Run as the loop hands it). Returns (run, model)."""
    import torch
    from accelerate.state import AcceleratorState
    from ssl_scripts.tasks import TASKS
    AcceleratorState._reset_state(True)
    args = parse(["--output-dir", output_dir, "--report-to", "none", "--batch-size", "8", "--checkpoint-every", "3",
                  "--epochs", "2", "--log-every", "2", *extra], task)
    return prepared_run(args, training_accelerator(args), torch.nn.Linear(2, 1), project=task,
                        must_match=TASKS[task].must_match)


def toy_steps(run, model, stop_after=None, seen=None):
    """The loop around a toy Run (toy_run's, task_toy_run's), until step `stop_after` (None: the end);
    the index batches it trains on are appended to `seen`, if given."""
    import torch
    for _ in run.epochs():
        for indices in run.batches():
            if seen is not None:
                seen.append(indices.tolist())
            with run.accelerator.accumulate(model):
                loss = model(torch.ones(len(indices), 2)).mean()
                run.accelerator.backward(loss)
                run.optimizer_step()
            run.end_batch(images=len(indices), samples=len(indices), loss=loss)
            if run.state.step == stop_after:
                return run
    return run


def exited(output_dir):
    """OUTPUT_DIR as this process leaves it when it exits: the run lock an in-process toy run took there (held until
    the process exits, ssl_scripts/outputs/runlock.py) released and its file removed, as at exit."""
    from ssl_scripts.outputs import runlock
    runlock.release_in(str(output_dir))
