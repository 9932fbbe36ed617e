"""Training machinery both scripts share: the Accelerator, optimizer and schedule, checkpoints and resume,
logging (tracker + metrics.jsonl), the progress bar and the final outputs.

Each script keeps its own loop (data, model, loss, step) and calls a Run for everything around it.
"""
import importlib.util
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
import warnings

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from tqdm.auto import tqdm

from common import UserError, distributed, media
from common.config import environment, save_config

CHECKPOINT_PREFIX = "step_"
EXIT_PREEMPTED = 3  # stopped on SIGUSR1/SIGTERM with a checkpoint saved: run the same command again to resume
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
# fp16: the GradScaler skips a step whose gradients overflow and halves its scale. A few skips at the start are
# normal; this many in a row (scale divided by 2^50) means the run diverged and would skip every step forever.
MAX_CONSECUTIVE_AMP_SKIPS = 50


def cli(main):
    """Runs main(); a UserError becomes one line on stderr and exit status 2, never a traceback."""
    try:
        main()
    except UserError as e:
        for bar in list(getattr(tqdm, "_instances", [])):
            bar.close()  # ends the progress bar's line, so the error starts a line of its own
        # One write, so lines of several processes do not interleave; the other ranks start a new line, as rank
        # 0's progress bar may be mid-line on the same terminal.
        new_line = "" if os.environ.get("RANK", "0") == "0" else "\n"
        sys.stderr.write(f"{new_line}error: {e}\n")
        sys.stderr.flush()
        sys.exit(2)


def make_accelerator(args) -> Accelerator:
    tracker = args.report_to if args.report_to != "none" else None
    if tracker == "wandb" and importlib.util.find_spec("wandb") is None:
        print("warning: wandb is not installed (pip install wandb), so this run is not tracked; "
              "pass --report-to none to silence this", file=sys.stderr)
        tracker = None
    if tracker == "wandb" and not os.environ.get("WANDB_MODE") and not _wandb_credentials():
        os.environ["WANDB_MODE"] = "offline"  # nodes without credentials still get a run, synced later
    accelerator = distributed.make_accelerator(
        args,
        gradient_accumulation_steps=args.grad_accum,
        log_with=tracker,
        project_dir=args.output_dir,
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step, not once per process
        # Shuffling seeded by (seed, epoch): every rank agrees on the order, and a resume replays it. Index
        # batches are copied to the GPU from pinned memory without waiting (index_loader pins them).
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed, non_blocking=True),
        dynamo_backend="inductor" if args.compile else None,
    )
    check_output_dir(args.output_dir)
    distributed.probe_shared_directory(accelerator, args.output_dir)
    set_seed(args.seed, deterministic=args.deterministic)  # same initial weights on every rank
    return accelerator


def _wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.join(os.path.expanduser("~"), ".netrc")
    return os.path.exists(netrc) and "api.wandb.ai" in open(netrc).read()


def check_output_dir(output_dir: str) -> None:
    """Fail before any training if results could not be written."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write to output dir {output_dir!r} ({e.strerror}): "
                        f"choose a writable --output-dir") from e


def make_optimizer(args, model) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                               weight_decay=args.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def make_scheduler(args, optimizer, total_steps: int):
    """Per optimizer step. 'step' is RotNet's: lr x0.2 at 30%, 60% and 80% of training (60/120/160 of 200)."""
    def factor(step):
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        progress = step / max(1, total_steps)
        if args.schedule == "step":
            return 0.2 ** sum(progress >= m for m in (0.3, 0.6, 0.8))
        if args.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def load_data(args, accelerator):
    """The dataset, decoded by each node's first process first (the node's other processes then read its cache,
    which may be node-local), and its train images moved to the device as uint8, where the batches are indexed
    and augmented."""
    from common.data import load_dataset

    with accelerator.local_main_process_first():
        dataset = load_dataset(args)
    if args.knn_k > len(dataset.train_images):
        raise UserError(f"--knn-k {args.knn_k} is larger than the train split "
                        f"({len(dataset.train_images)} images): lower it")
    return dataset, dataset.train_images.to(accelerator.device)


def micro_batch_size(args, num_processes: int) -> int:
    """Images per process per micro-batch: --batch-size is the global batch of one optimizer step, so a recipe
    means the same (samples per step, steps per epoch, lr) on any number of processes."""
    parts = num_processes * args.grad_accum
    if args.batch_size % parts:
        raise UserError(f"--batch-size {args.batch_size} (images per optimizer step, over all processes) does not "
                        f"divide into {num_processes} processes x {args.grad_accum} accumulation steps: "
                        f"use a multiple of {parts}")
    return args.batch_size // parts


def index_loader(accelerator, args, num_samples: int):
    """Batches of sample indices for this process's micro-batches; the images stay on the device and are indexed
    there. Pinned on a GPU, so Accelerate's copy of each batch to the device does not make the host wait.

    The loader gets a generator of its own: without one, every new iterator draws a seed from the global RNG (at
    the start of an epoch; mid-epoch after a resume), shifting the augmentations a resumed run draws."""
    batch = micro_batch_size(args, accelerator.num_processes)
    # Per process: Accelerate's prepare shards the sampler, each process taking every num_processes-th batch.
    return torch.utils.data.DataLoader(torch.arange(num_samples), batch_size=batch, shuffle=True, drop_last=True,
                                       generator=torch.Generator().manual_seed(0),
                                       pin_memory=accelerator.device.type == "cuda")


def prepare(args, accelerator, model, optimizer, train_loader, project: str):
    """Accelerate wraps model, optimizer, loader and schedule; then the Run resumes from a checkpoint if any."""
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    run = Run(args, accelerator, train_loader, project)
    _inject_faults(accelerator.unwrap_model(model), run)
    scheduler = accelerator.prepare(make_scheduler(args, optimizer, run.total_steps))  # before load_state
    run.start()
    return model, optimizer, scheduler, run


# ---------------------------------------------------------------------------------------------- checkpoints
def list_checkpoints(output_dir: str) -> list:
    """Complete checkpoints, oldest first. Incomplete ones keep a '.tmp-' name until renamed."""
    root = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    names = [n for n in os.listdir(root) if n.startswith(CHECKPOINT_PREFIX)]
    return [os.path.join(root, n) for n in sorted(names, key=lambda n: int(n[len(CHECKPOINT_PREFIX):]))]


# Options a checkpoint cannot be resumed under when they changed: the weights' or optimizer state's shapes, the
# data order, or the meaning of the saved position. Others (lr, --max-steps, logging, evaluation) may change.
MUST_MATCH = ("model", "image_size", "embedding_dim", "pairs", "rotations_per_image", "optimizer", "batch_size",
              "grad_accum", "dataset", "synthetic_size", "seed", "world_size")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(path: str) -> None:
    """Size and SHA-256 of every file of a checkpoint, written last: what verify_checkpoint checks."""
    files = {name: {"bytes": os.path.getsize(os.path.join(path, name)), "sha256": _sha256(os.path.join(path, name))}
             for name in sorted(os.listdir(path))}
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump(files, f, indent=1)


def verify_checkpoint(path: str):
    """None when the checkpoint is complete and intact, else what is wrong with it."""
    try:
        with open(os.path.join(path, "manifest.json")) as f:
            files = json.load(f)
    except FileNotFoundError:
        return "it has no manifest.json (written last), so it is incomplete"
    except ValueError:
        return "its manifest.json is unreadable"
    for name, expected in files.items():
        file = os.path.join(path, name)
        if not os.path.exists(file):
            return f"{name} is missing"
        if os.path.getsize(file) != expected["bytes"]:
            return f"{name} has {os.path.getsize(file)} bytes instead of {expected['bytes']} (truncated?)"
        if _sha256(file) != expected["sha256"]:
            return f"{name} does not match its checksum (corrupted)"
    return None


def check_compatible(args, checkpoint: str, world_size: int) -> None:
    """Refuse a checkpoint written with options that change what it holds, naming every field that differs."""
    with open(os.path.join(checkpoint, "config.json")) as f:
        saved = json.load(f)
    now = {**vars(args), "world_size": world_size}
    differ = [f"{name} {saved[name]!r} in the checkpoint, {now[name]!r} now" for name in MUST_MATCH
              if name in saved and name in now and saved[name] != now[name]]
    if differ:
        raise UserError(f"checkpoint {checkpoint} was written with other options ({'; '.join(differ)}): run with "
                        f"the checkpoint's options, or start a new training with another --output-dir")


def checkpoint_to_resume(args, world_size: int):
    """The checkpoint to start from: with --resume auto the newest intact one (damaged ones are reported and
    passed over), an explicit path only if intact, or None; refused if written with incompatible options."""
    checkpoint = _intact_checkpoint(args)
    if checkpoint:
        check_compatible(args, checkpoint, world_size)
    return checkpoint


def _intact_checkpoint(args):
    existing = list_checkpoints(args.output_dir)
    if args.resume == "never":
        if existing:
            raise UserError(f"{args.output_dir!r} already holds checkpoints of a run: pass --resume auto to "
                            f"continue it, or choose a new --output-dir (nothing was overwritten)")
        return None
    if args.resume == "auto":
        for checkpoint in reversed(existing):
            problem = verify_checkpoint(checkpoint)
            if problem is None:
                return checkpoint
            print(f"warning: not resuming from {checkpoint}: {problem}; trying the one before", flush=True)
        return None
    if not os.path.isdir(args.resume):
        raise UserError(f"checkpoint {args.resume!r} does not exist: pass a folder under OUTPUT_DIR/checkpoints/")
    problem = verify_checkpoint(args.resume)
    if problem:
        raise UserError(f"checkpoint {args.resume} is damaged: {problem}; pass another one or --resume auto")
    return args.resume


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
        self.init_metrics = {}

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        self.__dict__.update(state)


class Run:
    """Everything around a script's loop: resume, epochs and batches, metrics, checkpoints, outputs."""

    def __init__(self, args, accelerator, train_loader, project: str):
        self.args, self.accelerator, self.loader, self.project = args, accelerator, train_loader, project
        self.steps_per_epoch = math.ceil(len(train_loader) / args.grad_accum)
        if self.steps_per_epoch == 0:
            raise UserError(f"the train split ({len(train_loader.dataset)} images) is smaller than one --batch-size "
                            f"({args.batch_size}): lower it")
        self.total_steps = args.max_steps or args.epochs * self.steps_per_epoch
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.state = TrainState()
        accelerator.register_for_checkpointing(self.state)
        set_seed(args.seed, device_specific=True)  # each rank draws its own augmentations (restored on resume)
        self.start_time = time.time()
        self._sums, self._clock = {}, time.perf_counter()
        self._grad_norms = []
        self._images_since_log = self._samples_since_log = 0
        self._log_clock = time.perf_counter()
        self.metrics_path = os.path.join(args.output_dir, "metrics.jsonl")
        # Once (it runs git), on the process that writes configs and logs; it goes into every checkpoint.
        self.environment = environment() if accelerator.is_main_process else {}
        self._stop_signal = 0
        self._saved_step = None  # the step whose checkpoint this process last saved or resumed from
        # Non-finite gradients under --nan-policy abort: the first such step, kept on the device and read where the
        # host waits anyway (log and checkpoint steps, epoch ends), so that steps do not each wait for the GPU.
        self._first_bad_step = None
        self._amp_skips_in_a_row = 0
        self.sync_counter = HostSyncCounter() if args.count_host_syncs and accelerator.device.type == "cuda" else None
        for sig in STOP_SIGNALS:  # preemption (Slurm's --signal, scancel) and time limits
            signal.signal(sig, self._on_stop_signal)

    def start(self) -> None:
        """Resumes from a checkpoint if there is one (call after preparing the scheduler), starts logging."""
        args, accelerator = self.args, self.accelerator
        # Verifying a checkpoint reads all of its files: once, on the main process, not once per process.
        checkpoint = distributed.decided_by_main(
            accelerator, lambda: checkpoint_to_resume(args, accelerator.num_processes))
        if checkpoint:
            accelerator.load_state(checkpoint)
            self._saved_step = self.state.step
            accelerator.print(f"resumed from {checkpoint} at step {self.state.step} "
                              f"(epoch {self.state.epoch}, batch {self.state.batches_in_epoch})")
        accelerator.print(f"global batch {args.batch_size} = {accelerator.num_processes} process(es) x "
                          f"{micro_batch_size(args, accelerator.num_processes)} images x "
                          f"{args.grad_accum} accumulation step(s); lr {args.lr}; {self.total_steps} steps of "
                          f"{self.steps_per_epoch} per epoch", flush=True)
        if accelerator.is_main_process:
            save_config(args, os.path.join(args.output_dir, "config.json"), world_size=accelerator.num_processes)
            self._truncate_metrics()
        self._init_tracker(self.project)
        # Redirected to a file (Slurm logs) the bar is redrawn every 30 s, not a few times a second.
        self.progress = tqdm(total=self.total_steps, initial=self.state.step, dynamic_ncols=True,
                             mininterval=1 if sys.stderr.isatty() else 30,
                             disable=not accelerator.is_local_main_process, desc="train")

    def _truncate_metrics(self) -> None:
        """Drop lines logged after the checkpoint we start from: they will be logged again."""
        if not os.path.exists(self.metrics_path):
            return
        with open(self.metrics_path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= self.state.step]
        if self.fresh:
            kept = []
        with open(self.metrics_path, "w") as f:
            f.writelines(kept)

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
        """This epoch's index batches for this process; a resumed epoch skips what was already trained on."""
        self.loader.set_epoch(self.state.epoch)
        loader = self.loader
        if self.state.batches_in_epoch:
            loader = self.accelerator.skip_first_batches(self.loader, self.state.batches_in_epoch)
        self._clock = time.perf_counter()
        for indices in loader:
            self.state.batches_in_epoch += 1
            yield indices
        self.check_finite()  # before the epoch's evaluation
        if self.sync_counter:
            self.sync_counter.epoch_done()

    def track(self, images: int, samples: int, **values) -> None:
        """Per micro-batch: local sums of the train metrics, reduced over processes only when logged."""
        for name, value in values.items():
            value = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
            self._sums[name] = self._sums.get(name, 0) + value.to(self.accelerator.device)
        self._sums["count"] = self._sums.get("count", 0) + torch.ones((), device=self.accelerator.device)
        n = self.accelerator.num_processes
        self.state.images += images * n
        self.state.samples += samples * n
        self._images_since_log += images * n
        self._samples_since_log += samples * n

    def gradients_ok(self, model) -> bool:
        """Call after backward. On the micro-batch that ends an optimizer step: clips the gradients to
        --max-grad-norm, records their norm, and returns whether to take the step (--nan-policy). False on the
        other micro-batches (no step is due).

        After DDP's all-reduce every process holds the same gradients, so each decides alike on its own."""
        acc = self.accelerator
        if not acc.sync_gradients:
            return False
        norm = acc.clip_grad_norm_(model.parameters(), self.args.max_grad_norm or math.inf).detach().float()
        if acc.scaler is not None:  # fp16: overflow is the GradScaler's to handle (counted in step_done)
            self._grad_norms.append(norm)
            return True
        if self.args.nan_policy == "abort":
            # Recorded on the device, read in step_done where the host waits anyway: no wait in this step.
            bad_step = (~torch.isfinite(norm)).long() * (self.state.step + 1)  # 0 when finite
            first = self._first_bad_step
            self._first_bad_step = bad_step if first is None else torch.where(first > 0, first, bad_step)
            self._grad_norms.append(norm)
            return True
        if torch.isfinite(norm).item():  # skip: deciding this step's update makes the host wait for the device
            self._grad_norms.append(norm)
            return True
        self.state.skipped_steps += 1
        acc.print(f"warning: non-finite loss or gradients at step {self.state.step + 1}: update skipped "
                  f"({self.state.skipped_steps} so far, --nan-policy skip)", flush=True)
        return False

    def check_finite(self) -> None:
        """--nan-policy abort: raises if any step so far had non-finite gradients (reads one number from the
        device). The checkpoints are checked before they are written, so the newest one is always good."""
        bad_step = 0 if self._first_bad_step is None else int(self._first_bad_step.item())
        if bad_step:
            self._stop_on(f"non-finite loss or gradients at step {bad_step}",
                          "Try a lower --lr, --warmup-steps, --max-grad-norm 1, or --nan-policy skip")

    def _stop_on(self, problem: str, advice: str) -> None:
        last = self._saved_step and os.path.join(self.args.output_dir, "checkpoints",
                                                 f"{CHECKPOINT_PREFIX}{self._saved_step:08d}")
        raise UserError(f"{problem}: stopped. The last good checkpoint is {last or 'none (nothing saved yet)'}. "
                        f"{advice}")

    def step_done(self, scheduler) -> None:
        """After each optimizer step: schedule, time, log, checkpoint."""
        acc = self.accelerator
        if acc.scaler is not None:  # fp16 (the GradScaler reads its scale from the device each step anyway)
            skipped = acc.optimizer_step_was_skipped
            self.state.amp_skipped_steps += skipped
            self._amp_skips_in_a_row = self._amp_skips_in_a_row + 1 if skipped else 0
            if self._amp_skips_in_a_row >= MAX_CONSECUTIVE_AMP_SKIPS:
                self._stop_on(f"fp16: the last {self._amp_skips_in_a_row} steps (to step {self.state.step + 1}) "
                              f"all overflowed and were skipped, so the run has diverged",
                              "Try --mixed_precision bf16, a lower --lr, --warmup-steps or --max-grad-norm 1")
        scheduler.step()
        self.state.step += 1
        now = time.perf_counter()
        self.state.train_time_s += now - self._clock
        self._clock = now
        self.progress.update(1)
        at_log = self.state.step % self.args.log_every == 0 or self.finished
        at_checkpoint = self.state.step % self.args.checkpoint_every == 0 or self.finished
        if at_log or at_checkpoint:
            self.check_finite()
        if at_log:
            self._log_train(scheduler.get_last_lr()[0])
        if at_checkpoint:
            self.save_checkpoint()
        if self.sync_counter:
            self.sync_counter.step_done(self.state.step, quiet=not (at_log or at_checkpoint))
        # Checked where the log already waits for the device: a check every step would stall a GPU every step.
        if (at_log or acc.num_processes == 1) and self._stop_agreed() and not self.finished:
            self.save_checkpoint()
            name = signal.Signals(self._stop_signal).name if self._stop_signal else "a signal on another process"
            acc.print(f"stopping on {name} at step {self.state.step}: checkpoint saved; "
                      f"the same command resumes from it (exit code {EXIT_PREEMPTED})", flush=True)
            self.progress.close()
            acc.end_training()
            sys.exit(EXIT_PREEMPTED)

    def _on_stop_signal(self, signum, frame) -> None:
        self._stop_signal = signum  # acted on at the next step boundary, where every rank can agree

    def _stop_agreed(self) -> bool:
        """True on every rank when any rank got a stop signal: all stop after the same step (a lone rank
        stopping would leave the others waiting forever in the next all-reduce)."""
        if self.accelerator.num_processes == 1:
            return self._stop_signal != 0
        flag = torch.tensor(float(self._stop_signal != 0), device=self.accelerator.device)
        return self.accelerator.reduce(flag, reduction="sum").item() > 0

    def _log_train(self, lr: float) -> None:
        names = list(self._sums)
        totals = self.accelerator.reduce(torch.stack([self._sums[n] for n in names]), reduction="sum")
        count = totals[names.index("count")].item()
        values = {f"train/{n}": totals[i].item() / count for i, n in enumerate(names) if n != "count"}
        elapsed = time.perf_counter() - self._log_clock
        values.update({"train/lr": lr, "train/epoch": self.state.step / self.steps_per_epoch,
                       "train/images_per_s": self._images_since_log / max(elapsed, 1e-9),
                       "train/samples_per_s": self._samples_since_log / max(elapsed, 1e-9)})
        if self._grad_norms:
            values["train/grad_norm"] = torch.stack(self._grad_norms).mean().item()
        if self.state.skipped_steps:
            values["train/skipped_steps"] = self.state.skipped_steps
        if self.accelerator.scaler is not None:
            values["train/amp_skipped_steps"] = self.state.amp_skipped_steps
        self.log(values)
        self.progress.set_postfix(loss=f"{values['train/loss']:.4f}",
                                  img_s=f"{values['train/images_per_s']:.0f}")
        self._sums, self._grad_norms, self._log_clock = {}, [], time.perf_counter()
        self._images_since_log = self._samples_since_log = 0

    def should_evaluate(self, epoch: int) -> bool:
        every = self.args.eval_every
        return not self.args.skip_eval and every > 0 and (epoch + 1) % every == 0 and not self.finished

    def log(self, values: dict) -> None:
        """Scalars to the tracker and OUTPUT_DIR/metrics.jsonl, media (common.media) to the tracker, at the
        current optimizer step. Main process only; values must already be global."""
        if not self.accelerator.is_main_process:
            return
        numbers = scalars(values)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({"step": self.state.step, **numbers}) + "\n")
        self.accelerator.log(numbers, step=self.state.step)
        pictures = {k: v for k, v in values.items() if k not in numbers}
        for tracker in self.accelerator.trackers if pictures else ():
            if tracker.name == "wandb":
                import wandb
                tracker.log({k: wandb.Image(v.pixels, caption=v.caption) if isinstance(v, media.Picture)
                             else wandb.Histogram(v.values) for k, v in pictures.items()}, step=self.state.step)
            elif tracker.name == "tensorboard":
                for k, v in pictures.items():
                    if isinstance(v, media.Picture):
                        tracker.writer.add_image(k, v.pixels, self.state.step, dataformats="HWC")
                    else:
                        tracker.writer.add_histogram(k, v.values, self.state.step)

    def record_init_metrics(self, metrics: dict) -> None:
        """The untrained encoder's eval/*_init: logged at step 0 and kept for results.json across resumes."""
        self.state.init_metrics = scalars(metrics)
        self.log(metrics)
        self.resume_clock()

    def resume_clock(self) -> None:
        """Call after work that is not training (evaluation) so it does not count in samples/s."""
        self._clock = self._log_clock = time.perf_counter()

    # ------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        """save_state into a temporary folder, renamed once every rank has written: complete or invisible.

        Every process takes the same path through here whatever it sees on the file system; only the main process
        looks there (ranks that branch on what their node sees enter different barriers and hang)."""
        acc, root = self.accelerator, os.path.join(self.args.output_dir, "checkpoints")
        if self._saved_step == self.state.step:  # e.g. a stop signal on a checkpoint step: saved once
            return
        name = f"{CHECKPOINT_PREFIX}{self.state.step:08d}"
        final, tmp, old = (os.path.join(root, prefix + name) for prefix in ("", ".tmp-", ".old-"))
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(tmp)
        if acc.is_main_process:
            save_config(self.args, os.path.join(tmp, "config.json"), world_size=acc.num_processes,
                        environment=self.environment)
            write_manifest(tmp)
        acc.wait_for_everyone()
        if acc.is_main_process:
            if os.path.isdir(final):  # saved before a resume from an older checkpoint (maybe damaged): replaced
                shutil.rmtree(old, ignore_errors=True)
                os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            for stale in list_checkpoints(self.args.output_dir)[:-self.args.keep_checkpoints]:
                shutil.rmtree(stale, ignore_errors=True)
        acc.wait_for_everyone()
        self._saved_step = self.state.step
        self.resume_clock()

    # ----------------------------------------------------------------------------------------- tracker
    def _init_tracker(self, project: str) -> None:
        if not self.accelerator.log_with or not self.accelerator.is_main_process:  # trackers live on the main one
            return
        args = self.args
        config = {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for k, v in vars(args).items()}
        config.update(world_size=self.accelerator.num_processes,
                      mixed_precision=str(self.accelerator.mixed_precision), **self.environment)
        init_kwargs = {}
        if args.report_to == "wandb":
            # Options win over WANDB_* variables; wandb itself reads WANDB_ENTITY, WANDB_TAGS, WANDB_MODE, ...
            project = args.wandb_project or os.environ.get("WANDB_PROJECT") or project
            init_kwargs["wandb"] = {
                "id": self._wandb_run_id(), "resume": "allow", "dir": os.environ.get("WANDB_DIR") or args.output_dir,
                "name": args.run_name or os.environ.get("WANDB_NAME") or os.path.basename(
                    os.path.abspath(args.output_dir)),
                "entity": args.wandb_entity, "tags": args.wandb_tags.split(",") if args.wandb_tags else None}
        self.accelerator.init_trackers(project, config=config, init_kwargs=init_kwargs)
        if args.report_to == "wandb":
            run = self.accelerator.get_tracker("wandb", unwrap=True)
            if run.settings.mode == "offline":
                # Each (re)start writes its own offline folder; synced together they become one run again.
                parts = os.path.join(os.path.dirname(os.path.dirname(run.dir)), f"offline-run-*-{run.id}")
                print(f"W&B is offline (no credentials found): the run is in {os.path.dirname(run.dir)}; "
                      f"upload it (all its resumed parts as one run) with: wandb sync {parts}", flush=True)

    def _wandb_run_id(self) -> str:
        """One training is one W&B run: the id is kept in OUTPUT_DIR and reused on resume and requeue. Main process
        only (trackers live there), so no other process depends on what its node sees of the file."""
        path = os.path.join(self.args.output_dir, "wandb_run_id")
        if not os.path.exists(path):
            with open(path, "w") as f:  # W&B's own id format: 8 lowercase alphanumerics
                f.write(os.environ.get("WANDB_RUN_ID") or uuid.uuid4().hex[:8])
        with open(path) as f:
            return f.read().strip()

    # ---------------------------------------------------------------------------------------- outputs
    def finish(self, encoder, metrics: dict) -> dict:
        """Writes final/ (encoder), results.json and the last metrics; ends the tracker."""
        results = {**self.state.init_metrics, **scalars(metrics),
                   "steps": self.state.step, "epochs": self.state.step / self.steps_per_epoch,
                   "images_per_s": self.state.images / max(self.state.train_time_s, 1e-9),
                   "samples_per_s": self.state.samples / max(self.state.train_time_s, 1e-9),
                   "train_time_s": self.state.train_time_s, "wall_time_s": time.time() - self.start_time,
                   "world_size": self.accelerator.num_processes, "peak_memory_mb": peak_memory_mb(),
                   "global_batch": self.args.batch_size, **(self.sync_counter.results() if self.sync_counter else {})}
        self.progress.close()
        if self.accelerator.is_main_process:
            from common.models import save_encoder
            save_encoder(self.accelerator.unwrap_model(encoder), os.path.join(self.args.output_dir, "final"),
                         trained_by=os.path.basename(sys.argv[0]), steps=self.state.step)
            with open(os.path.join(self.args.output_dir, "results.json"), "w") as f:
                json.dump(results, f, indent=2)
            summary = "  ".join(f"{k}={v:.4f}" for k, v in results.items() if k.startswith("eval/"))
            print(f"done: {self.state.step} steps, {results['images_per_s']:.0f} images/s; {summary}")
            if self.sync_counter:
                print(f"host syncs per steady step: {results['host_syncs_per_step']:.2f} on average, "
                      f"{results['host_syncs_max_step']} at most, over {results['host_syncs_steady_steps']} steps "
                      f"({results['host_syncs_other_steps_total']} in all other steps)", flush=True)
            elif self.args.count_host_syncs:
                print("host syncs: not counted (--count-host-syncs needs a GPU)", flush=True)
        self.log(metrics)
        if self.accelerator.is_main_process and "wandb" in [t.name for t in self.accelerator.trackers]:
            self.accelerator.get_tracker("wandb", unwrap=True).summary.update(results)
        self.accelerator.end_training()
        return results


def _inject_faults(model, run) -> None:
    """Fault injection for the fault tests: SSL_SCRIPTS_FAULT="nan@STEP[:RANK]" makes the model's output, hence
    the loss, non-finite at that step on that rank (all ranks without :RANK), and DDP's all-reduce carries it to
    every rank's gradients, as a real NaN would. Unset in normal use."""
    spec = os.environ.get("SSL_SCRIPTS_FAULT", "")
    if not spec.startswith("nan@"):
        return
    step_spec, _, rank_spec = spec[len("nan@"):].partition(":")
    if rank_spec and int(rank_spec) != run.accelerator.process_index:
        return

    def poison(module, inputs, output):
        return output * math.nan if module.training and run.state.step + 1 == int(step_spec) else output
    model.register_forward_hook(poison)


class HostSyncCounter:
    """--count-host-syncs: CUDA's sync debug mode warns at every operation that makes the host wait for the GPU;
    the warnings are counted per optimizer step. Steady steps are those after a warm-up (cuDNN autotuning) that
    neither log, checkpoint nor start an epoch (evaluation): where the GPU should never wait for the host."""
    WARMUP_STEPS = 5

    def __init__(self):
        self.steady, self.other = [], []
        self._count, self._epoch_start = 0, True
        self._show = warnings.showwarning
        warnings.filterwarnings("always", message=".*synchronizing CUDA operation")
        warnings.showwarning = self._seen
        torch.cuda.set_sync_debug_mode("warn")

    def _seen(self, message, category, filename, lineno, file=None, line=None):
        if "synchronizing CUDA operation" in str(message):
            self._count += 1
        else:
            self._show(message, category, filename, lineno, file, line)

    def step_done(self, step: int, quiet: bool) -> None:
        steady = quiet and step > self.WARMUP_STEPS and not self._epoch_start
        (self.steady if steady else self.other).append(self._count)
        self._count, self._epoch_start = 0, False

    def epoch_done(self) -> None:
        self._epoch_start = True

    def results(self) -> dict:
        steady = self.steady or [math.nan]
        return {"host_syncs_per_step": sum(steady) / len(steady), "host_syncs_max_step": max(steady),
                "host_syncs_steady_steps": len(self.steady), "host_syncs_other_steps_total": sum(self.other)}


def peak_memory_mb() -> float:
    """Peak GPU memory allocated by this process, or without a GPU its peak resident memory."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def scalars(values: dict) -> dict:
    """values without the dashboard media: what metrics.jsonl, results.json and checkpoints hold."""
    return {k: v for k, v in values.items() if not isinstance(v, (media.Picture, media.Histogram))}
