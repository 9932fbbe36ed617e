"""One training run around the loop (ssl_scripts/loop.py): the epochs and micro-batches, the optimizer
steps, and after each step what its Cadence says is due (logs, checkpoints, an agreed stop)."""
import math
import os
import time
from typing import NamedTuple

from ssl_scripts.outputs.environment import environment, save_config
from ssl_scripts.data.loader import micro_batch_size
from ssl_scripts.outputs import final
from ssl_scripts.runtime import files
from ssl_scripts.outputs.tracking import Tracker, scalars
from ssl_scripts.runtime import distributed
from ssl_scripts.training import checkpoints, gradients
from ssl_scripts.training.cadence import Cadence
from ssl_scripts.training.instruments import Instruments
from ssl_scripts.training.metrics import TrainMetrics, run_figures
from ssl_scripts.training.progress_bar import TrainingBar
from ssl_scripts.training.setup import steps_per_epoch, total_steps
from ssl_scripts.training.state import TrainState
from ssl_scripts.training.stop_signals import StopSignals


class Prepared(NamedTuple):
    """What accelerator.prepare returns for a run, in its order."""
    model: object
    optimizer: object
    train_loader: object
    scheduler: object


class Run:
    """Made by Run.start once the model, optimizer, loader and schedule are prepared. project: the tracker's (the
    task's name). must_match: the task's options a checkpoint cannot be resumed under when changed, besides
    checkpoints.MUST_MATCH. stop_signals: the loop's, installed first thing (StopSignals.install). train_source:
    the train split (placement.TrainImages), whose problem (an unreadable streamed file) stops the run. on_log: called
    with each train/* log's values and step on the main process."""

    def __init__(self, args, accelerator, prepared: Prepared, project: str, must_match=(),
                 stop_signals: StopSignals = None, train_source=None, on_log=None):
        self.args, self.accelerator, self.must_match, self.train_source = args, accelerator, must_match, train_source
        self.on_log = on_log  # on_log(values, step): shown each train/* log (main process), e.g. Task.watch
        self.model, self.optimizer, self.loader, self.scheduler = prepared
        # Clipped and checked every step: the optimizer's groups but those kept apart (an online probe, whose loss
        # never reaches the encoder); a momentum copy is in none.
        self.parameters = [p for group in self.optimizer.param_groups if not group.get("apart")
                           for p in group["params"]]
        self.steps_per_epoch = steps_per_epoch(args, len(self.loader))  # prepared: this process's batches
        self.total_steps = total_steps(args, len(self.loader))
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.state = TrainState()
        accelerator.register_for_checkpointing(self.state)
        self.tracker = Tracker(args, accelerator, project)
        # Once (it runs git), on the process that writes configs and logs; it goes into every checkpoint.
        self.environment = environment() if accelerator.is_main_process else {}
        self.start_time = time.time()
        self.metrics, self.bar = TrainMetrics(accelerator), TrainingBar()
        self._saved_step = None  # the step whose checkpoint this process last saved or resumed from
        self.guard = gradients.NonFiniteGuard(args, accelerator, self.state, last_checkpoint=lambda: (
            self._saved_step and checkpoints.path_of(args.output_dir, self._saved_step)))
        self.stop_signals = stop_signals or StopSignals()  # not installed: no signal reaches it
        self.completed = None  # results.json's values when OUTPUT_DIR holds this run finished (Run.start)

    @classmethod
    def start(cls, *args, **kwargs) -> "Run":
        """A Run (the arguments are __init__'s) with its instruments (the tests', if asked), resumed from
        OUTPUT_DIR's newest intact checkpoint if any (checkpoints.resume: the model, optimizer, schedule, loader
        position and random states), config.json written and the tracker started (main process), its bar and
        clocks started."""
        run = cls(*args, **kwargs)
        run.instruments = Instruments(run.args, run.accelerator, run.model, run.state)
        if checkpoints.resume(run.accelerator, run.args, run.state, run.must_match, len(run.loader)):
            run._saved_step = run.state.step
        # stops are agreed on at the first step too: a notice during loading
        run.cadence = Cadence(run.args, run.total_steps, run.accelerator.num_processes, run.state.step + 1)
        # The same command once the run has finished: its results stand, with no new tracker run
        run.completed = final.finished_results(run.accelerator, run.args, run.state.step) if run.finished else None
        if run.completed is not None:
            return run
        args, accelerator = run.args, run.accelerator
        accelerator.print(f"global batch {args.batch_size} = {accelerator.num_processes} process(es) x "
                          f"{micro_batch_size(args, accelerator.num_processes)} images x {args.grad_accum} "
                          f"accumulation step(s); lr {args.lr}; {run.total_steps} steps of {run.steps_per_epoch} "
                          f"per epoch", flush=True)
        # Main process only; a failed write (a full disk) stops every process.
        distributed.on_main_process_for_all(accelerator, run._start_files)
        run.bar.start(run.total_steps, run.state.step, show=accelerator.is_local_main_process)
        run._restart_clocks()
        return run

    def _start_files(self) -> None:
        save_config(self.args, os.path.join(self.args.output_dir, "config.json"),
                    world_size=self.accelerator.num_processes, mixed_precision=self.accelerator.mixed_precision)
        self.tracker.start(self.state.step, self.fresh, self.environment)

    @property
    def finished(self) -> bool:
        return self.state.step >= self.total_steps

    @property
    def fresh(self) -> bool:
        return self.state.step == 0 and self.state.batches_in_epoch == 0

    # --------------------------------------------------------------------------------------- the loop
    def epochs(self):
        while self.state.epoch < self.num_epochs and not self.finished:
            if self.state.batches_in_epoch == 0:
                self.state.epoch_start_train_time_s = self.state.train_time_s
            yield self.state.epoch
            self.log({"train/epoch_time_s": self.state.train_time_s - self.state.epoch_start_train_time_s})
            self.state.epoch += 1
            self.state.batches_in_epoch = 0

    def batches(self):
        """This epoch's index batches for this process, until the run's last step; a resumed epoch skips what
        was already trained on."""
        self.loader.set_epoch(self.state.epoch)
        if self.train_source is not None:  # what it reads ahead for a drawn batch may depend on the epoch
            self.train_source.set_epoch(self.state.epoch)
        loader = self.loader
        if self.state.batches_in_epoch:
            loader = self.accelerator.skip_first_batches(self.loader, self.state.batches_in_epoch)
        self._clock = time.perf_counter()
        for indices in loader:
            if self.finished:
                return
            self.state.batches_in_epoch += 1
            self.instruments.before_batch(self.state.step + 1, indices)
            yield indices
        self.guard.check_finite()  # before the epoch's evaluation

    def optimizer_step(self) -> bool:
        """Call after backward on every micro-batch. On the one that ends an optimizer step: clips the gradients
        to --max-grad-norm (their norm is logged either way) and updates the weights, unless --nan-policy skip
        drops a non-finite step; then zeroes the gradients. Other micro-batches only accumulate.

        After DDP's all-reduce every process holds the same gradients, so each decides alike on its own. Returns
        whether the weights were updated (every process alike)."""
        updated = False
        if self.accelerator.sync_gradients:
            norm = gradients.clipped_norm(self.accelerator, self.parameters, self.args.max_grad_norm)
            if self.guard.decide_update(norm):
                self.metrics.grad_norms.append(norm)
                self.optimizer.step()
                updated = not self.accelerator.optimizer_step_was_skipped  # fp16: an overflow step updates nothing
        self.optimizer.zero_grad(set_to_none=True)
        if self.accelerator.sync_gradients:
            self.instruments.after_update()
        return updated

    def end_batch(self, images: int, samples: int, **metrics) -> None:
        """Call after each micro-batch: adds its train metrics (local sums, reduced over processes only when
        logged). After the last micro-batch of an optimizer step: steps the lr schedule, logs, checkpoints, and
        on a stop signal (any rank's) saves a checkpoint and raises Preempted."""
        self.metrics.add(images, samples, metrics)
        self.state.images += images * self.accelerator.num_processes
        self.state.samples += samples * self.accelerator.num_processes
        if self.accelerator.sync_gradients:
            self._end_step()

    def _end_step(self) -> None:
        self.guard.check_amp_overflows()
        self.scheduler.step()
        self.state.step += 1
        now = time.perf_counter()
        self.state.train_time_s += now - self._clock
        self._clock = now
        self.bar.step_done()
        step, cadence = self.state.step, self.cadence
        at_log, at_checkpoint = cadence.due_log(step), cadence.due_checkpoint(step)
        if cadence.due_finite_check(step):
            self.guard.check_finite()
        problem = self.train_source.problem if self.train_source is not None else None
        stop = cadence.due_stop_check(step) and self.stop_signals.all_reduce(self.accelerator, problem)
        if at_log:
            values = self.metrics.at_log(self.state, self.scheduler.get_last_lr()[0], self.steps_per_epoch,
                                         self.instruments.model_seconds())
            self.log(values)
            self.bar.show(values)
            if self.on_log is not None and self.accelerator.is_main_process:
                with self.bar.paused():  # a line it prints stays off the progress bar's
                    self.on_log(values, step)
        if at_checkpoint:
            self._save_checkpoint()
        self.instruments.after_step(step, self.state.epoch, quiet=not (at_log or at_checkpoint))
        if stop and not self.finished:
            self._stop_now()

    def _stop_now(self, during: str = None) -> None:
        self._save_checkpoint()
        self.bar.close()
        self.stop_signals.stop_run(self.accelerator, self.state.step, during)

    def _save_checkpoint(self) -> None:
        if self._saved_step == self.state.step:  # e.g. a stop signal on a checkpoint step: saved once
            return
        state_bytes = files.tensor_bytes([self.model.state_dict(), self.optimizer.state_dict()])
        with self.bar.paused():
            checkpoints.save(self.accelerator, self.args, self.state.step, self.environment, state_bytes)
        self._saved_step = self.state.step
        self._restart_clocks()

    # ------------------------------------------------------------------------------------------ logs
    def log(self, values: dict) -> None:
        """Values (scalars and ssl_scripts.evaluation.media) to the tracker and metrics.jsonl at the current
        optimizer step. Main process only; values must already be global."""
        self.tracker.log(values, self.state.step)

    def evaluation_due(self, epoch: int, images_evaluated: int = 0) -> bool:
        """Whether to evaluate after `epoch` (Cadence.due_evaluation); never after the last step, where the final
        evaluation follows."""
        trained = (self.state.step - self.state.evaluated_step) * self.args.batch_size
        return not self.finished and self.cadence.due_evaluation(epoch, trained, images_evaluated,
                                                                 self.accelerator.is_main_process)

    def evaluate(self, evaluate, *args, **kwargs) -> dict:
        """evaluate(*args, **kwargs, between_batches=...), where between_batches() agrees on the stop signals (an
        all-reduce each): a long evaluation must not outlast Slurm's notice. On a stop: a checkpoint of the
        training so far (a resume evaluates again), then Preempted."""
        with self.bar.paused():
            return evaluate(*args, **kwargs, between_batches=self._stop_if_signalled)

    def _stop_if_signalled(self) -> None:
        if self.stop_signals.all_reduce(self.accelerator):
            self._stop_now(during="an evaluation")

    def log_evaluation(self, metrics: dict) -> None:
        """Logs an evaluation's metrics; the time it took does not count as training (samples/s, the bar's rate)."""
        self.log(metrics)
        self.state.evaluated_step = self.state.step
        self._restart_clocks()

    def log_initial_evaluation(self, metrics: dict) -> None:
        """The untrained encoder's eval/*_init: logged at step 0 and kept for results.json across resumes."""
        self.state.init_metrics = scalars(metrics)
        self.log_evaluation(metrics)

    def _restart_clocks(self) -> None:
        self._clock = self.metrics.clock = time.perf_counter()
        self.instruments.model_seconds()  # the window restarts: so does the model's share of it

    # ---------------------------------------------------------------------------------------- the end
    def results(self, metrics: dict, **facts) -> dict:
        """results.json's values: the final metrics (and the untrained encoder's, if evaluated), the run's figures
        and `facts` about the run (e.g. skipped_images). Closes the progress bar: training is over."""
        self.bar.close()
        figures = run_figures(self.state, self.steps_per_epoch, self.accelerator.num_processes, self.args.batch_size,
                              wall_time_s=time.time() - self.start_time)
        return {**self.state.init_metrics, **scalars(metrics), **facts, **figures, **self.instruments.results()}

    def end(self, metrics: dict, results: dict) -> None:
        """Logs the final metrics and hands the tracker results.json's values as its summary; ends the tracker."""
        self.log(metrics)
        self.tracker.summarize(results)
