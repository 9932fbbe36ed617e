"""The training loop's machinery (ssl_scripts/training/loop.py runs it): the Accelerator, the output dir's claim, the seeding
point, the optimizer and schedule, then a Run that walks the epochs and micro-batches, takes optimizer steps, and
around each step keeps the lr schedule, the logs, the checkpoints and the stop signals.

The loop calls a Run at these points: start (resume, config.json, tracker), optimizer_step, end_batch,
evaluation_due, evaluate (stoppable between batches), log_evaluation, results and end.
"""
import math
import os
from contextlib import contextmanager
import signal
import sys
import tempfile
import time

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, gather_object, set_seed
from tqdm.auto import tqdm

from ssl_scripts import Preempted, UserError
from ssl_scripts.evaluation import frozen
from ssl_scripts.outputs import files, final, runlock
from ssl_scripts.runtime import distributed, processes
from ssl_scripts.training import checkpoints, diagnostics, schedules
from ssl_scripts.cli import AT_ONCE, EXIT_INTERRUPTED, EXIT_PREEMPTED
from ssl_scripts.evaluation.options import DEFAULT_EVAL_EVERY
from ssl_scripts.outputs.environment import environment, save_config
from ssl_scripts.data.loader import micro_batch_size
from ssl_scripts.outputs.tracking import Tracker, scalars, tracker_name

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
# fp16: the GradScaler skips a step whose gradients overflow and halves its scale. A few skips at the start are
# normal; this many in a row (scale divided by 2^50) means the run diverged and would skip every step forever.
MAX_CONSECUTIVE_AMP_SKIPS = 50


def build_accelerator(args) -> Accelerator:
    """The Accelerator of a training run: tracker, accumulation, seeded data order (distributed.make_accelerator
    adds the device and the process group)."""
    accelerator = distributed.make_accelerator(
        args,
        gradient_accumulation_steps=args.grad_accum,
        log_with=tracker_name(args),
        project_dir=args.output_dir,
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step, not once per process
        # Shuffling seeded by (seed, epoch): every rank agrees on the order, and a resume replays it. Index
        # batches of a split on the GPU are copied there from pinned memory without waiting (loader.index_loader pins
        # them); for a split in host memory or streamed they stay on the host (the loop's device_placement).
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed, non_blocking=True),
        dynamo_backend="inductor" if args.compile else None,
    )
    # torch's SyncBatchNorm (and DDP around it) refuses CPU tensors once a process group exists, even of one process
    # (accelerate launch); without one (python train_*.py) it is plain batch norm
    if args.sync_bn and accelerator.device.type != "cuda" and torch.distributed.is_initialized():
        raise UserError(f"--sync-bn needs GPUs: torch's SyncBatchNorm refuses CPU tensors in launched processes "
                        f"({accelerator.num_processes} here); leave --sync-bn out on the CPU", agreed=True)
    return accelerator


def claim_output_dir(accelerator, args) -> None:
    """Before anything is written to OUTPUT_DIR: this run holds it (one training per folder, ssl_scripts/outputs/runlock.py;
    the main process holds the lock until it exits), it is writable, and every process sees the same folder."""
    distributed.on_main_process_for_all(accelerator, lambda: runlock.acquire(args.output_dir))
    check_output_dir(args.output_dir)
    distributed.probe_shared_directory(accelerator, args.output_dir)


def seed_run(args) -> None:
    """The run's one seeding point. Each rank draws its own augmentations (restored on resume); the initial
    weights are rank 0's on every rank, as DDP broadcasts them when prepare() wraps the model."""
    set_seed(args.seed, device_specific=True, deterministic=args.deterministic)


def check_output_dir(output_dir: str) -> None:
    """Fail before any training if results could not be written (creates the folder if missing)."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise runlock.unwritable_output_dir(output_dir, e) from e


def make_schedule(args, optimizer, train_loader, num_processes: int):
    """The lr schedule over the run's optimizer steps. train_loader: the loader before accelerator.prepare, which
    shards it into len(train_loader) // num_processes batches per process."""
    steps = total_steps(args, len(train_loader) // num_processes)
    return schedules.make_scheduler(optimizer, steps, args.schedule, args.warmup_steps)


def steps_per_epoch(args, batches_per_process: int) -> int:
    return math.ceil(batches_per_process / args.grad_accum)


def total_steps(args, batches_per_process: int) -> int:
    return args.max_steps or args.epochs * steps_per_epoch(args, batches_per_process)


class TrainState:
    """Where the run is; saved in every checkpoint (Accelerate's register_for_checkpointing)."""

    def __init__(self):
        self.step = 0  # optimizer steps done
        self.epoch = 0
        self.batches_in_epoch = 0  # micro-batches of `epoch` already trained on
        self.images = 0  # over all processes
        self.samples = 0
        self.train_time_s = 0.0
        self.epoch_start_train_time_s = 0.0
        self.skipped_steps = 0  # non-finite gradients, --nan-policy skip
        self.amp_skipped_steps = 0  # fp16: steps the GradScaler skipped on overflow (normal, not errors)
        self.evaluated_step = 0  # the step of the last evaluation during training (0: none, or the untrained one)
        self.init_metrics = {}

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        self.__dict__.update(state)


class StopSignals:
    """SIGUSR1 / SIGTERM (Slurm's preemption notice, scancel, a time limit) and Ctrl-C (SIGINT): noted when they
    arrive, acted on at a step's end, where every rank can agree. Installed first thing in the loop (ssl_scripts/training/loop.py):
    a notice that arrives while the data loads or decodes is kept (the launcher's "ignore USR1" is inherited until
    then), and the run stops at its first step. A second Ctrl-C stops at once, without a checkpoint."""

    def __init__(self):
        self.received = 0
        self.ctrl_c = processes.CtrlC()
        self._pid = os.getpid()
        self._previous_sigint = signal.default_int_handler

    @classmethod
    def install(cls) -> "StopSignals":
        """Handlers for STOP_SIGNALS that note the signal; the same command resumes after the stop. Under a launcher,
        the launcher's death is a SIGTERM too (Linux): a training process is never left running on its own."""
        stop_signals = cls()
        stop_signals._previous_sigint = signal.getsignal(signal.SIGINT)
        for sig in STOP_SIGNALS:
            # A script's `cmd &` is started with SIGINT ignored: a Ctrl-C meant for the foreground is not for it
            if not (sig == signal.SIGINT and stop_signals._previous_sigint == signal.SIG_IGN):
                signal.signal(sig, stop_signals._note)
        if processes.launched():
            processes.die_with_parent(signal.SIGTERM)
        return stop_signals

    def restore_ctrl_c(self) -> None:
        """Ctrl-C as it was before install (KeyboardInterrupt, say), for a caller in the same process (a notebook,
        the tests) once the training has returned."""
        signal.signal(signal.SIGINT, self._previous_sigint)

    def _note(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked decode worker (it inherits the handler): its parent stops it
            return
        if signum == signal.SIGINT:
            if not self.ctrl_c.pressed():  # one Ctrl-C delivered twice (pkill, and a launcher)
                return
            if self.ctrl_c.count > 1:
                _say_once(AT_ONCE)
                os._exit(EXIT_INTERRUPTED)  # at once: no cleanup that could wait on another process
            _say_once("Ctrl-C: stopping at the next step the processes agree on, with a checkpoint (Ctrl-C again "
                      "stops at once, without one)")
        if not self.received:
            self.received = signum

    def all_reduce(self, accelerator, problem: str = None) -> bool:
        """An all-reduce of the processes' stop signals: True on every rank when any rank got a stop signal, so that
        all stop after the same step (a lone rank stopping would leave the others waiting forever in the next
        all-reduce). problem: this rank's reason to stop with an error (an unreadable streamed file); if any rank
        has one, every rank raises it."""
        if accelerator.num_processes == 1:
            if problem:
                raise UserError(problem)
            return self.received != 0
        flags = torch.tensor([float(self.received != 0), float(problem is not None)], device=accelerator.device)
        signalled, problems = accelerator.reduce(flags, reduction="sum").tolist()
        if problems:
            said = [p for p in gather_object([problem]) if p]
            raise UserError(said[0], agreed=True)
        return signalled > 0

    def name(self) -> str:
        if self.received == signal.SIGINT:
            return "Ctrl-C (SIGINT)"
        return signal.Signals(self.received).name if self.received else "a signal on another process"


def _say_once(message: str) -> None:
    """A line from a signal handler, on the main process only: one write (no lock a handler could deadlock on), on a
    line of its own (the progress bar may be mid-line)."""
    if os.environ.get("RANK", "0") == "0":
        try:
            os.write(2, f"\n{message}\n".encode())  # fd 2: sys.stderr may be a wrapper without one (pytest)
        except OSError:
            pass


class TrainMetrics:
    """The train/* values between two logs: per-process sums kept on the device (no wait for it per step),
    reduced over the processes only when logged; throughput counted over all processes."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self._reset()

    def _reset(self) -> None:
        self.sums, self.grad_norms = {}, []
        self.images = self.samples = 0
        self.clock = time.perf_counter()

    def add(self, images: int, samples: int, metrics: dict) -> None:
        device = self.accelerator.device
        for name, value in metrics.items():
            value = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
            self.sums[name] = self.sums.get(name, 0) + value.to(device)
        self.sums["count"] = self.sums.get("count", 0) + torch.ones((), device=device)
        self.images += images * self.accelerator.num_processes
        self.samples += samples * self.accelerator.num_processes

    def reduced(self, model_seconds: float = None) -> dict:
        """The means since the last call, over all processes; then it starts anew. model_seconds: the time this
        window's steps spent in the model (diagnostics.ModelTimer), giving train/model_samples_per_s."""
        names = list(self.sums)
        totals = self.accelerator.reduce(torch.stack([self.sums[n] for n in names]), reduction="sum")
        count = totals[names.index("count")].item()
        values = {f"train/{n}": totals[i].item() / count for i, n in enumerate(names) if n != "count"}
        elapsed = max(time.perf_counter() - self.clock, 1e-9)
        values.update({"train/images_per_s": self.images / elapsed, "train/samples_per_s": self.samples / elapsed})
        if model_seconds:
            values["train/model_samples_per_s"] = self.samples / model_seconds
        # fp16: the GradScaler's overflow steps have an inf norm and update nothing; counted (amp_skipped_steps),
        # not averaged in
        finite = [norm for norm in torch.stack(self.grad_norms).tolist() if math.isfinite(norm)] \
            if self.grad_norms else []
        if finite:
            values["train/grad_norm"] = sum(finite) / len(finite)
        self._reset()
        return values


class NonFiniteGuard:
    """Which optimizer steps to take with non-finite gradients (--nan-policy), and when a run has diverged.

    abort: the first bad step is kept on the device and read only where the host waits anyway (first_bad_step, at
    log and checkpoint steps and epoch ends), so that steps do not each wait for the GPU; skip: deciding each
    step's update makes the host wait. fp16: the GradScaler's overflow steps are normal and only counted, unless
    MAX_CONSECUTIVE_AMP_SKIPS come in a row."""

    def __init__(self, args, accelerator, state: TrainState):
        self.policy, self.accelerator, self.state = args.nan_policy, accelerator, state
        self._first_bad_step = None
        self._amp_skips_in_a_row = 0

    def decide_update(self, norm: torch.Tensor) -> bool:
        """Whether the optimizer step now due may update the weights, given its gradients' norm."""
        step = self.state.step + 1
        if self.accelerator.scaler is not None:  # fp16: overflow is the GradScaler's to handle
            return True
        if self.policy == "abort":
            bad_step = (~torch.isfinite(norm)).long() * step  # 0 when finite
            first = self._first_bad_step
            self._first_bad_step = bad_step if first is None else torch.where(first > 0, first, bad_step)
            return True
        if torch.isfinite(norm).item():
            return True
        self.state.skipped_steps += 1
        self.accelerator.print(f"warning: non-finite loss or gradients at step {step}: update skipped "
                               f"({self.state.skipped_steps} so far, --nan-policy skip)", flush=True)
        return False

    def first_bad_step(self) -> int:
        """--nan-policy abort: the first step so far with non-finite gradients, or 0 (reads the device)."""
        return 0 if self._first_bad_step is None else int(self._first_bad_step.item())

    def count_amp_skip(self) -> int:
        """fp16, after each optimizer step: how many steps in a row overflowed, when that many mean divergence."""
        if self.accelerator.scaler is None:
            return 0
        skipped = self.accelerator.optimizer_step_was_skipped  # the scaler reads its scale each step anyway
        self.state.amp_skipped_steps += skipped
        self._amp_skips_in_a_row = self._amp_skips_in_a_row + 1 if skipped else 0
        return self._amp_skips_in_a_row if self._amp_skips_in_a_row >= MAX_CONSECUTIVE_AMP_SKIPS else 0


class Run:
    """One training run around the loop (ssl_scripts/training/loop.py), made by Run.start once the model, optimizer, loader and
    schedule are prepared. must_match: the task's options a checkpoint cannot be resumed under when changed,
    besides checkpoints.MUST_MATCH. stop_signals: the loop's, installed first thing (StopSignals.install).
    train_source: the train split (placement.TrainImages), whose problem (an unreadable streamed file) stops the
    run."""

    def __init__(self, args, accelerator, model, optimizer, scheduler, train_loader, project: str, must_match=(),
                 stop_signals: StopSignals = None, train_source=None):
        self.args, self.accelerator, self.project = args, accelerator, project
        self.model, self.optimizer, self.scheduler, self.loader = model, optimizer, scheduler, train_loader
        self.parameters = list(model.parameters())  # walked every step: the module tree once
        self.steps_per_epoch = steps_per_epoch(args, len(train_loader))  # prepared: this process's batches
        self.total_steps = total_steps(args, len(train_loader))
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.must_match = tuple(must_match)
        self.state = TrainState()
        accelerator.register_for_checkpointing(self.state)
        self.tracker = Tracker(args, accelerator, project)
        self.sync_counter = (diagnostics.HostSyncCounter()
                             if args.count_host_syncs and accelerator.device.type == "cuda" else None)
        # Once (it runs git), on the process that writes configs and logs; it goes into every checkpoint.
        self.environment = environment() if accelerator.is_main_process else {}
        self.start_time = time.time()
        self.metrics = TrainMetrics(accelerator)
        self.guard = NonFiniteGuard(args, accelerator, self.state)
        self.stop_signals = stop_signals or StopSignals()  # not installed: no signal reaches it
        self.train_source = train_source
        self.record_indices = diagnostics.index_recorder(accelerator)
        self.model_timer = None  # SSL_SCRIPTS_TIME_MODEL's (Run.start)
        self._saved_step = None  # the step whose checkpoint this process last saved or resumed from
        self._said_evaluations_apart = False
        self.completed = None  # results.json's values when OUTPUT_DIR holds this run finished (Run.start)
        self._first_step = 1

    @classmethod
    def start(cls, *args, **kwargs) -> "Run":
        """A Run (the arguments are __init__'s) that has resumed from OUTPUT_DIR's newest intact checkpoint, if
        any (checkpoints.resume: loads the model, optimizer, schedule, loader position and random states), written
        config.json and started the tracker (main process), and started its progress bar and clocks."""
        run = cls(*args, **kwargs)
        # the tests' faults, if asked
        diagnostics.inject_faults(distributed.plain_module(run.accelerator, run.model), run)
        run.model_timer = diagnostics.model_timer(run.accelerator, run.model)  # the benchmark's timer, if asked
        if checkpoints.resume(run.accelerator, run.args, run.state, run.must_match, len(run.loader)):
            run._saved_step = run.state.step
        run._first_step = run.state.step + 1  # stops are agreed on there too: a notice during loading
        # The same command once the run has finished: its results stand, with no new tracker run
        run.completed = final.finished_results(run.accelerator, run.args, run.state.step) if run.finished else None
        if run.completed is None:
            run._start_logs()
        return run

    def _start_logs(self) -> None:
        args, accelerator = self.args, self.accelerator
        micro_batch = micro_batch_size(args, accelerator.num_processes)
        accelerator.print(f"global batch {args.batch_size} = {accelerator.num_processes} process(es) x "
                          f"{micro_batch} images x {args.grad_accum} accumulation step(s); lr {args.lr}; "
                          f"{self.total_steps} steps of {self.steps_per_epoch} per epoch", flush=True)
        # Main process only; a failed write (a full disk) stops every process.
        distributed.on_main_process_for_all(accelerator, self._start_files)
        # Redirected to a file (Slurm logs) the bar is redrawn every 30 s, not a few times a second.
        self.progress = tqdm(total=self.total_steps, initial=self.state.step, dynamic_ncols=True,
                             mininterval=1 if sys.stderr.isatty() else 30,
                             disable=not accelerator.is_local_main_process, desc="train")
        self._restart_clocks()

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
            if self.record_indices:
                self.record_indices(self.state.step + 1, indices)
            yield indices
        self._check_finite()  # before the epoch's evaluation
        if self.sync_counter:
            self.sync_counter.epoch_done()

    def optimizer_step(self) -> None:
        """Call after backward on every micro-batch. On the one that ends an optimizer step: clips the gradients
        to --max-grad-norm (their norm is logged either way) and updates the weights, unless --nan-policy skip
        drops a non-finite step; then zeroes the gradients. Other micro-batches only accumulate.

        After DDP's all-reduce every process holds the same gradients, so each decides alike on its own."""
        if self.accelerator.sync_gradients and self._clip_and_check_gradients():
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.model_timer and self.accelerator.sync_gradients:
            self.model_timer.step_done()

    def _clip_and_check_gradients(self) -> bool:
        if self.args.max_grad_norm:
            norm = self.accelerator.clip_grad_norm_(self.parameters, self.args.max_grad_norm)
        else:  # the norm only (logged, and --nan-policy's check); clipping to inf would still rewrite every gradient
            self.accelerator.unscale_gradients()
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.parameters if p.grad is not None])
        norm = norm.detach().float()
        usable = self.guard.decide_update(norm)
        if usable:
            self.metrics.grad_norms.append(norm)
        return usable

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
        accelerator = self.accelerator
        in_a_row = self.guard.count_amp_skip()
        if in_a_row:
            self._stop_on(f"fp16: the last {in_a_row} steps (to step {self.state.step + 1}) all overflowed and "
                          f"were skipped, so the run has diverged",
                          "Try --mixed_precision bf16, a lower --lr, --warmup-steps or --max-grad-norm 1")
        self.scheduler.step()
        self.state.step += 1
        now = time.perf_counter()
        self.state.train_time_s += now - self._clock
        self._clock = now
        self.progress.update(1)
        at_log = self.state.step % self.args.log_every == 0 or self.finished
        at_checkpoint = self.state.step % self.args.checkpoint_every == 0 or self.finished
        # Checked where the host waits for the device anyway (a check every step would stall a GPU every step; one
        # process agrees with itself without the device), and before a checkpoint is written: a checkpoint never
        # holds a step trained on a bad batch.
        check = at_log or at_checkpoint or self.state.step == self._first_step
        if check:
            self._check_finite()
        stop = False
        if check or accelerator.num_processes == 1:
            problem = self.train_source.problem if self.train_source is not None else None
            stop = self.stop_signals.all_reduce(accelerator, problem)
        if at_log:
            self._log_train()
        if at_checkpoint:
            self._save_checkpoint()
        if self.sync_counter:
            self.sync_counter.step_done(self.state.step, quiet=not (at_log or at_checkpoint))
        diagnostics.hold("step", self.state.step)
        if stop and not self.finished:
            self._stop_now()

    def _stop_now(self, during: str = None) -> None:
        self._save_checkpoint()
        self.progress.close()
        # accelerator.end_training(), with every process waiting for the main one's tracker to finish: torchrun stops
        # the others (SIGTERM, SIGKILL 30 s later) once one has exited, which would cut it short
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.wait_for_everyone()
        self.accelerator.state.destroy_process_group()
        where = f" during {during}" if during else ""
        raise Preempted(f"stopping on {self.stop_signals.name()} at step {self.state.step}{where}: checkpoint "
                        f"saved; the same command resumes from it (exit code {EXIT_PREEMPTED})")

    def _check_finite(self) -> None:
        """--nan-policy abort: raises if any step so far had non-finite gradients (reads one number from the
        device). The checkpoints are checked before they are written, so the newest one is always good."""
        bad_step = self.guard.first_bad_step()
        if bad_step:
            self._stop_on(f"non-finite loss or gradients at step {bad_step}",
                          "Try a lower --lr, --warmup-steps, --max-grad-norm 1, or --nan-policy skip")

    def _stop_on(self, problem: str, advice: str) -> None:
        last = self._saved_step and checkpoints.path_of(self.args.output_dir, self._saved_step)
        raise UserError(f"{problem}: stopped. The last good checkpoint is {last or 'none (nothing saved yet)'}. "
                        f"{advice}")

    def _save_checkpoint(self) -> None:
        if self._saved_step == self.state.step:  # e.g. a stop signal on a checkpoint step: saved once
            return
        state_bytes = files.tensor_bytes([self.model.state_dict(), self.optimizer.state_dict()])
        with self._bar_paused():
            checkpoints.save(self.accelerator, self.args, self.state.step, self.environment, state_bytes)
        self._saved_step = self.state.step
        self._restart_clocks()

    # ------------------------------------------------------------------------------------------ logs
    def _log_train(self) -> None:
        model_seconds = self.model_timer.take() if self.model_timer else None
        values = {**self.metrics.reduced(model_seconds), "train/lr": self.scheduler.get_last_lr()[0],
                  "train/epoch": self.state.step / self.steps_per_epoch}
        if self.state.skipped_steps:
            values["train/skipped_steps"] = self.state.skipped_steps
        if self.accelerator.scaler is not None:
            values["train/amp_skipped_steps"] = self.state.amp_skipped_steps
        self.log(values)
        self.progress.set_postfix(loss=f"{values['train/loss']:.4f}", img_s=f"{values['train/images_per_s']:.0f}")

    def log(self, values: dict) -> None:
        """Values (scalars and ssl_scripts.evaluation.media) to the tracker and metrics.jsonl at the current optimizer step.
        Main process only; values must already be global."""
        self.tracker.log(values, self.state.step)

    def evaluation_due(self, epoch: int, images_evaluated: int = 0) -> bool:
        """Whether to evaluate after `epoch`: every --eval-every epochs. Without --eval-every, every
        DEFAULT_EVAL_EVERY epochs once the training since the last evaluation has seen at least the images_evaluated
        that an evaluation encodes (a short run on a small dataset is then not mostly evaluation)."""
        every = self.args.eval_every if self.args.eval_every is not None else DEFAULT_EVAL_EVERY
        if self.args.skip_eval or every <= 0 or (epoch + 1) % every or self.finished:
            return False
        trained = (self.state.step - self.state.evaluated_step) * self.args.batch_size
        if self.args.eval_every is not None or trained >= images_evaluated:
            return True
        if not self._said_evaluations_apart and self.accelerator.is_main_process:
            tqdm.write(f"evaluations further apart than every {every} epochs: {trained:,} images trained since the "
                       f"last, fewer than the {images_evaluated:,} an evaluation encodes (--eval-every N keeps N)")
        self._said_evaluations_apart = True
        return False

    def evaluate(self, evaluate, *args, **kwargs) -> dict:
        """evaluate(*args, **kwargs), with stop signals agreed on between its batches (an all-reduce each): a
        long evaluation must not outlast Slurm's notice. On a stop: a checkpoint of the training so far (a resume
        evaluates again), then Preempted."""
        with frozen.checked_between_batches(self._stop_if_signalled), self._bar_paused():
            return evaluate(*args, **kwargs)

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

    @contextmanager
    def _bar_paused(self):
        """The training bar's rate and time left leave out what runs within (an evaluation, a checkpoint)."""
        bar = getattr(self, "progress", None)
        started = time.time()  # tqdm's clock
        try:
            yield
        finally:
            if bar is not None and not bar.disable:
                paused = time.time() - started
                bar.start_t += paused
                bar.last_print_t += paused

    def _restart_clocks(self) -> None:
        self._clock = self.metrics.clock = time.perf_counter()
        if self.model_timer:
            self.model_timer.take()  # the window restarts: so does the model's share of it

    # ---------------------------------------------------------------------------------------- the end
    def results(self, metrics: dict, **facts) -> dict:
        """results.json's values: the final metrics (and the untrained encoder's, if evaluated), the run's figures
        and `facts` about the run (e.g. skipped_images). Closes the progress bar: training is over."""
        state, accelerator = self.state, self.accelerator
        self.progress.close()
        return {**state.init_metrics, **scalars(metrics), **facts,
                "steps": state.step, "epochs": state.step / self.steps_per_epoch,
                "images_per_s": state.images / max(state.train_time_s, 1e-9),
                "samples_per_s": state.samples / max(state.train_time_s, 1e-9),
                "train_time_s": state.train_time_s, "wall_time_s": time.time() - self.start_time,
                "world_size": accelerator.num_processes, "peak_memory_mb": peak_memory_mb(),
                "global_batch": self.args.batch_size, **(self.sync_counter.results() if self.sync_counter else {})}

    def end(self, metrics: dict, results: dict) -> None:
        """Logs the final metrics and hands the tracker results.json's values as its summary; ends the tracker."""
        self.log(metrics)
        self.tracker.summarize(results)


def peak_memory_mb() -> float:
    """Peak GPU memory allocated by this process, or without a GPU its peak resident memory."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
