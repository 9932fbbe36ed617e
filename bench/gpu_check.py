"""One check of the project's GPU path, in under 8 minutes on one H100/H200, with one report:

    bash bench/gpu_check.sh [OUT_DIR]        # = PYTHON -m bench.gpu_check; OUT_DIR: $OUT, else runs/gpu_check

The report is printed at the end and written to OUT_DIR/gpu_check.txt and gpu_check.json each time a step starts
or ends, so a check stopped half-way (SIGTERM, or a machine taken back) still reports the steps it finished. Each
step's log goes to OUT_DIR/logs/, its small outputs (results.json, metrics.jsonl, probes.json) to OUT_DIR/<step>/.
Checkpoints and models go to WORK_DIR (default: a temporary folder, removed at the end unless KEEP_WORK=1).

Made for one unattended run on a machine without internet, dataset or wandb: CIFAR-sized synthetic data (and a
small generated folder of JPEGs for 6c-6d), --report-to none. Two processes share the one GPU under gloo (NCCL
refuses two ranks on one device; Accelerate puts process i on cuda:(i % device_count)). Every step is
independent: a failing one is reported as FAIL with the tail of its log and the next one runs; each has a time
limit, and the whole run a budget (BUDGET_S, from the start, pre-flight included). STEP_LIMIT_SCALE (default 1)
multiplies every step's limit: the tests' CPU-mode runs share 2 cores with other work, and there a limit is only a
bound on a hang. ONLY (e.g. ONLY=1e,3) runs just those steps, the others SKIPPED: a rerun of a failed step. Exit
status: 0 when no step failed, 1 when one did, 2 when the pre-flight stopped it.

    1a-1d  both scripts, bf16 and fp16, --eval-at-start and evaluation every epoch, 2 epochs (resnet18: batch norm)
    1e     siamese with NT-Xent (--method simclr): negatives gathered from both processes (the
           gather's backward on CUDA tensors), eval/view_pair_auc finite at start and end
    1f     --sync-bn, rotation, resnet18: SyncBatchNorm across the 2 processes
    1g     train_siamese.py --method byol (LARS, momentum copy) and mocov2 (its queue filled with the keys gathered
           from both processes), 8 steps each; --sync-bn on a GPU
    2      SIGUSR1: checkpoint and stop (worker exit code 3, "stopping on SIGUSR1 at step N"), then resume to the end
    3      --deterministic: 12 steps straight, and killed after the step-4 checkpoint then resumed: the two step-12
           model.safetensors must be bitwise equal
    4      resume with --compile toggled: N steps eager, then the same output dir with --compile to 2N
    5      evaluate.py (2 processes) on the encoder of step 1a: probes.json
    6a-6b  --count-host-syncs, 1 process, bf16: synchronizing CUDA operations per steady step (target 0)
    6c-6d  the same with the other data placements, on a generated folder of JPEGs: the train split in host memory
           (--data-placement host, rotation) and decoded from its files batch by batch (stream, siamese)
    7      bash bench/gpu.sh: a throughput table sized to fit (see step_gpu_sh; the compiled row if time is left)

Before any step, a pre-flight: the Python packages import (with $PYTHON, default python3), and torch sees the GPU
that nvidia-smi lists (unless DEVICE=cpu); else one line says what to do, the report says so, exit status 2. This
module itself needs only the standard library, so it can say so.

Without a GPU (or with DEVICE=cpu) the same steps run at tiny sizes on the CPU (accelerate_configs/cpu.yaml,
gloo, no mixed precision: the bf16 steps run as "no", which their titles say), in 2-5 minutes on 2 shared cores;
steps 1b-1c (fp16 needs a GPU: they would be 1d and 1a again), 1f (SyncBatchNorm refuses CPU tensors), 6a-6d (the
scripts count host syncs only on CUDA; 6c-6d still check the placement the run took) and 7 are SKIPPED, saying
why. Steps 1-6 run in three concurrent lanes (most of their time is process start-up; PARALLEL=0 runs them one
after the other), step 7 alone at the end, with at least GPU_SH_MIN_S of the budget kept for it.

Every command of a step starts in a process group of its own, with the step's mark in its environment
(GPU_CHECK_PROCESS); when the step ends or times out, that group is stopped (os.killpg), and so is every process
that carries the mark or descends from the step's commands: torchrun starts its workers in sessions of their own,
which a signal to the launcher's group does not reach. No other process is touched.
"""
import datetime
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "GPU_CHECK_PROCESS"  # environment variable: "<check token>:<step id>" in every process a step starts
LANE_PORTS = {"a": 29610, "b": 29620, "c": 29630}  # a main process port per lane: lanes run at once
TIMED_OUT = 124  # a command's status when the step's time ran out (as timeout(1) says it)


class UserError(Exception):
    """The pre-flight's one line: what to do."""


class Failed(Exception):
    """The step failed; the message says why."""


class Skipped(Exception):
    """The step was skipped; the message says why."""


# ------------------------------------------------------------------------------------------ mode and sizes
@dataclass(frozen=True)
class Mode:
    """The device the check runs on and every size that follows from it (read once, from the environment)."""
    device: str  # "gpu" or "cpu"
    gpus: int  # torch.cuda.device_count()
    python: str
    size: int  # synthetic train images
    batch: int
    probe_epochs: int
    bn_model: str
    det_model: str
    usr1_steps: int
    usr1_log: int
    compile_n: int
    sync_steps: int
    sync_batch: int
    eval_batch: int
    bf16: str
    fp16: str
    budget_s: float
    gpu_sh_min_s: float
    limit_scale: float
    parallel: bool
    only: tuple  # step ids or their prefixes before "_" (ONLY=1a,3); empty: every step
    keep_work: bool
    env: dict  # the environment of every command


def mode_for(device: str, gpus: int, python: str, environ: dict) -> Mode:
    env = {**environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled",
           "HF_HUB_OFFLINE": "1", "PYTHON": python}
    common = dict(device=device, gpus=gpus, python=python, limit_scale=float(environ.get("STEP_LIMIT_SCALE") or 1),
                  parallel=environ.get("PARALLEL", "1") != "0", keep_work=environ.get("KEEP_WORK") == "1",
                  only=tuple(x.strip() for x in environ.get("ONLY", "").split(",") if x.strip()))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the scripts pick the CPU (and gloo) when torch sees no GPU
        # 96 images: the siamese pair AUC needs 2 test images (a quarter: 24) of each of the 10 classes.
        # bf16 would only be slow on the CPU: its steps run without autocast (their titles say "no"); fp16 is not
        # supported there: its steps are SKIPPED.
        return Mode(**common, size=96, batch=16, probe_epochs=2, bn_model="simple_cnn", det_model="simple_cnn",
                    usr1_steps=60, usr1_log=5, compile_n=4, sync_steps=12, sync_batch=16, eval_batch=64, bf16="no",
                    fp16="fp16", budget_s=float(environ.get("BUDGET_S") or 600), gpu_sh_min_s=0, env=env)
    # 4096 images, 256 per step (128 per process): 16 steps an epoch. resnet18 where batch norm matters (1a-1f:
    # BN buffers under evaluation at start and every epoch; 3: its ~50 ms steps leave time to kill the run between
    # its checkpoints), simple_cnn elsewhere. Steps 1-6 end by BUDGET_S - GPU_SH_MIN_S, so that step 7 gets that
    # much at least; it gets whatever steps 1-6 leave.
    return Mode(**common, size=4096, batch=256, probe_epochs=5, bn_model="resnet18", det_model="resnet18",
                usr1_steps=1000, usr1_log=10, compile_n=20, sync_steps=60, sync_batch=128, eval_batch=512,
                bf16="bf16", fp16="fp16", budget_s=float(environ.get("BUDGET_S") or 465),
                gpu_sh_min_s=float(environ.get("GPU_SH_MIN_S") or 150), env=env)


# ------------------------------------------------------------------------------------------------ pre-flight
PROBE = r'''
import importlib, sys
# leaves first: accelerate imports safetensors, torchvision torch; the first to fail is the one named
for name in ("numpy", "PIL", "safetensors", "torch", "torchvision", "accelerate"):
    try:
        importlib.import_module(name)
    except Exception as e:
        print("missing", name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        sys.exit(1)
import accelerate, torch
print("ok", torch.cuda.device_count(), torch.__version__, torch.version.cuda or "none", accelerate.__version__)
'''


def preflight(device: str, python: str, environ: dict, log_path: str):
    """(device "gpu" or "cpu", torch's GPU count, "torch X, accelerate Y"), or UserError with the line to print.
    A missing package would fail every step one by one, and a torch that sees no GPU would run the CPU mode on a
    GPU machine and pass: both stop the check at once."""
    if device not in ("auto", "cpu", "gpu"):
        raise UserError(f"DEVICE must be auto, cpu or gpu, not '{device}'")
    if not shutil.which(python):
        raise UserError(f"no Python interpreter '{python}': set PYTHON to the environment's python (default python3)")
    if not shutil.which("accelerate"):
        raise UserError("no 'accelerate' command on PATH: activate the environment, or pip install -r "
                        "requirements.txt")
    with open(log_path, "w") as log:
        try:  # a wedged driver can hang `import torch` or the device count: before any report exists
            probe = subprocess.run([python, "-c", PROBE], stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO,
                                   timeout=180)
        except subprocess.TimeoutExpired:
            raise UserError(f"{python} did not import torch and count the GPUs in 180 s: check the driver with "
                            "nvidia-smi") from None
    last = (probe.stdout.strip().splitlines() or [""])[-1].split()
    if last[:1] == ["missing"] and len(last) >= 2:
        raise UserError(f"cannot import {last[1]} with {python} ({' '.join(last[2:])}): pip install -r "
                        "requirements.txt (or set PYTHON to the environment's python)")
    if last[:1] != ["ok"] or len(last) != 5:
        with open(log_path) as f:
            error = (f.read().strip().splitlines() or [""])[-1]
        raise UserError(f"{python} failed importing torch, torchvision, accelerate, safetensors, numpy, PIL "
                        f"({error}): pip install -r requirements.txt")
    _, gpus, torch_version, cuda, accelerate_version = last
    gpus = int(gpus)
    versions = f"torch {torch_version}, accelerate {accelerate_version}"
    if device == "cpu":
        return "cpu", gpus, versions
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        listed = ""
    listed = sum(line.startswith("GPU ") for line in listed.splitlines())
    if gpus == 0 and listed == 0 and device == "gpu":
        raise UserError("DEVICE=gpu but neither torch nor nvidia-smi sees a GPU: run it on a GPU machine, or "
                        "DEVICE=cpu")
    if gpus == 0 and listed > 0:
        if cuda == "none":
            why = f"torch {torch_version} is a CPU build: pip install -r requirements.txt from a CUDA wheel index"
        elif "CUDA_VISIBLE_DEVICES" in environ:
            why = f"CUDA_VISIBLE_DEVICES='{environ['CUDA_VISIBLE_DEVICES']}' hides them: unset it"
        else:
            why = f"torch {torch_version} (CUDA {cuda}) cannot use them: check the driver with nvidia-smi"
        raise UserError(f"nvidia-smi lists {listed} GPU(s) but torch sees none: {why} (or DEVICE=cpu for the CPU "
                        "check)")
    return ("gpu" if device == "gpu" or gpus > 0 else "cpu"), gpus, versions


# -------------------------------------------------------------------------------------------- processes
def process_table() -> dict:
    """{pid: parent pid} of every live process /proc lists (zombies left out: they have ended)."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    state, parent = f.read().rsplit(")", 1)[1].split()[:2]
            except (OSError, ValueError):
                continue  # ended meanwhile
            if state != "Z":
                table[int(name)] = int(parent)
    return table


def descendants(roots, table: dict) -> set:
    children = {}
    for pid, parent in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def marked(prefix: str, table: dict, whole: bool = False) -> set:
    """Processes whose environment holds MARK=<prefix>... (MARK=<prefix> itself when whole; only this user's can be
    read: the others cannot be ours)."""
    entry = f"{MARK}={prefix}".encode()
    found = set()
    for pid in table:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if any(e == entry if whole else e.startswith(entry) for e in f.read().split(b"\0")):
                    found.add(pid)
        except OSError:
            pass
    return found


def signal_processes(pids, sig) -> None:
    """sig to each pid and to the process group it leads, if it leads one (a worker in a session of its own)."""
    for pid in pids:
        for send in (os.killpg, os.kill):
            try:
                if send is os.kill or os.getpgid(pid) == pid:
                    send(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


# ------------------------------------------------------------------------------------------------- a step
@dataclass(frozen=True)
class Step:
    id: str
    title: str  # formatted with the Mode's fields: "{bf16}", "{bn_model}"
    limit_s: int  # on a GPU; times STEP_LIMIT_SCALE
    run: Callable  # run(ctx): returns on PASS, raises Failed or Skipped
    lane: str  # "a", "b", "c": steps 1-6, in three concurrent lanes; "alone": after them, with the rest of the budget
    cpu_skip: str = ""  # CPU mode: SKIPPED with this reason, nothing run


class StepRun:
    """One step's run: its log, its time, its commands and what it reports (detail, results)."""

    def __init__(self, check, step: Step, deadline: float, port: int):
        self.check, self.step, self.id, self.mode, self.port = check, step, step.id, check.mode, port
        self.dir = os.path.join(check.work, step.id)
        self.out = check.out
        self.log_path = os.path.join(check.out, "logs", f"{step.id}.log")
        os.makedirs(self.dir, exist_ok=True)
        self.start = time.monotonic()
        self.end = min(self.start + step.limit_s * self.mode.limit_scale, deadline)
        self.parts, self.results, self.procs = [], None, []
        self.env = {}  # the step's own additions to every command's environment
        open(self.log_path, "w").close()
        self.log = open(self.log_path, "ab", buffering=0)  # appended to by the step and its commands alike

    # what the step reports
    def echo(self, text: str) -> None:
        self.log.write(f"{text}\n".encode())

    def say(self, text: str) -> None:
        self.parts.append(f"{text}; ")
        self.echo(f"== {text}")

    def note(self, text: str) -> None:  # one piece of detail, as is
        self.parts.append(text)
        self.echo(text)

    def fail(self, reason: str):
        raise Failed(reason)

    def skip(self, reason: str):
        raise Skipped(reason)

    def left(self) -> float:
        return self.end - time.monotonic()

    def log_text(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read().replace("\r", "\n")

    # commands
    def start_command(self, cmd: list, quiet: bool = False) -> subprocess.Popen:
        """cmd in a session (and process group) of its own, output to the step's log, the step's mark in its
        environment."""
        if not quiet:
            self.echo("$ " + " ".join(cmd))
        env = {**self.mode.env, **self.env, MARK: f"{self.check.token}:{self.id}"}
        with self.check.lock:  # not after the check was stopped: its stop would miss it
            if self.check.stopped:
                self.fail(f"the check got {self.check.stopped}")
            proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=REPO, env=env, start_new_session=True)
            self.procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen) -> int:
        """proc's exit status; TIMED_OUT, its processes stopped, when the step's time runs out first."""
        try:
            rc = proc.wait(timeout=max(0.0, self.left()))
        except subprocess.TimeoutExpired:
            self.stop_processes(signal.SIGTERM, grace_s=10)
            rc = TIMED_OUT
        self.echo(f"== exit status {rc}")
        if rc == TIMED_OUT:
            self.echo("== timed out (the step's limit)")
        return rc

    def run(self, cmd: list) -> int:
        if self.left() <= 0:
            self.echo("== no time left in this step")
            return TIMED_OUT
        return self.finish(self.start_command(cmd))

    def processes(self) -> set:
        """The step's processes still there: its commands and their descendants, and whatever carries its mark."""
        table = process_table()
        roots = [p.pid for p in self.procs if p.poll() is None]
        return (set(roots) | descendants(roots, table) | marked(f"{self.check.token}:{self.id}", table, whole=True)) - \
            {os.getpid()}

    def send(self, sig) -> None:
        pids = self.processes()
        for proc in self.procs:  # each command's own process group, whole
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        signal_processes(pids, sig)

    def stop_processes(self, sig=signal.SIGKILL, grace_s: float = 0) -> None:
        """sig to every process of the step; after grace_s, SIGKILL to what is left."""
        if sig != signal.SIGKILL:
            self.send(sig)
            until = time.monotonic() + grace_s
            while time.monotonic() < until and self.processes():
                time.sleep(0.1)
        self.send(signal.SIGKILL)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    # the project's commands
    def launcher(self, n: int, precision: str) -> list:
        """`accelerate launch` for n processes in this mode."""
        m = self.mode
        if m.device == "gpu" and n == 1:
            return ["accelerate", "launch", "--config_file", "accelerate_configs/single_gpu.yaml",
                    "--mixed_precision", precision]
        if m.device == "gpu":
            return ["accelerate", "launch", "--config_file", "accelerate_configs/multi_gpu.yaml", "--num_processes",
                    str(n), "--mixed_precision", precision, "--main_process_port", str(self.port)]
        return ["accelerate", "launch", "--config_file", "accelerate_configs/cpu.yaml", "--num_processes", str(n),
                "--num_cpu_threads_per_process", "1", "--mixed_precision", "no", "--main_process_port",
                str(self.port)]

    def data(self) -> list:
        return ["--dataset", "synthetic", "--synthetic-size", str(self.mode.size), "--report-to", "none"]

    def dist(self, backend: str = "gloo") -> list:
        return ["--dist-backend", backend, "--dist-timeout", "120"]

    def keep(self, run_dir: str) -> None:
        """A run's small outputs, next to the log."""
        dest = os.path.join(self.out, self.id)
        os.makedirs(dest, exist_ok=True)
        for name in ("results.json", "metrics.jsonl", "config.json", "probes.json", "probes.md"):
            if os.path.isfile(os.path.join(run_dir, name)):
                shutil.copy(os.path.join(run_dir, name), os.path.join(dest, f"{os.path.basename(run_dir)}-{name}"))


def failed(rc: int) -> str:
    return "timed out (the step's time limit)" if rc in (TIMED_OUT, 137) else f"failed (exit {rc})"


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def metrics_lines(run: str) -> list:
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------------------------------------- the steps
def train_and_eval(ctx: StepRun, script: str, precision: str, options=(), metrics=(), model: str = None,
                   backend: str = "gloo") -> dict:
    """1a-1e: a script, 2 processes, a precision; evaluation at start, after epoch 1 and at the end. Returns the
    run's config.json."""
    m, run = ctx.mode, os.path.join(ctx.dir, "run")
    rc = ctx.run([*ctx.launcher(2, precision), f"train_{script}.py", *ctx.data(), "--model", model or m.bn_model,
                  "--batch-size", str(m.batch), "--epochs", "2", "--eval-at-start", "--eval-every", "1",
                  "--eval-batch-size", str(m.eval_batch), "--linear-probe-epochs", str(m.probe_epochs),
                  "--log-every", "4", "--checkpoint-every", "1000", "--output-dir", run, *ctx.dist(backend),
                  *options])
    if rc:
        ctx.fail(f"the run {failed(rc)}")
    ctx.keep(run)
    from ssl_scripts.tasks import TASKS  # the project's own (the check runs from the repository root)
    r, lines = read_json(os.path.join(run, "results.json")), metrics_lines(run)
    task = TASKS[script].headline_metric
    problems, values = [], {}
    for key in ("eval/knn_acc", "eval/linear_probe_acc", task, *metrics):
        for name in (key + "_init", key):
            values[name] = r.get(name)
            if not number(values[name]):
                problems.append(f"results.json {name} = {values[name]}")
    evals = sorted({l["step"] for l in lines if "eval/knn_acc" in l or "eval/knn_acc_init" in l} | {r.get("steps")})
    if 0 not in evals:
        problems.append("no evaluation at start (step 0) in metrics.jsonl")
    if not [s for s in evals if 0 < s < r.get("steps", 0)]:
        problems.append(f"no evaluation after epoch 1 (evaluations at steps {evals})")
    if r.get("epochs") != 2 or r.get("world_size") != 2:
        problems.append(f"epochs {r.get('epochs')}, world size {r.get('world_size')} (expected 2, 2)")
    losses = [l["train/loss"] for l in lines if "train/loss" in l]
    if not losses or not all(map(number, losses)):
        problems.append(f"train/loss not finite: {losses}")
    scaler = [l["train/amp_skipped_steps"] for l in lines if "train/amp_skipped_steps" in l]
    if precision == "fp16" and not scaler:
        problems.append("fp16 but no train/amp_skipped_steps logged: no GradScaler, was fp16 applied?")
    if precision != "fp16" and scaler:
        problems.append(f"{precision} but a GradScaler ran (train/amp_skipped_steps logged)")
    config = read_json(os.path.join(run, "config.json")) or {}
    if str(config.get("mixed_precision")) != precision:  # the Accelerator's, as config.json records it
        problems.append(f"asked for mixed precision {precision}, the run had {config.get('mixed_precision')}")

    def f(k):
        return "%.3f" % values[k] if number(values.get(k)) else str(values.get(k))
    shown = [f"{key[5:]} {f(key)} (init {f(key + '_init')})" for key in (task, *metrics)]
    detail = (f"{r.get('steps')} steps, evaluated at steps {evals}; knn {f('eval/knn_acc')} (init "
              f"{f('eval/knn_acc_init')}), linear {f('eval/linear_probe_acc')} (init "
              f"{f('eval/linear_probe_acc_init')}), {', '.join(shown)}"
              + (f"; loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "")
              + (f"; fp16 overflow steps {scaler[-1]}" if scaler else "")
              + f"; {r.get('images_per_s', 0):.0f} images/s, peak {r.get('peak_memory_mb', 0):.0f} MB")
    ctx.results = {"steps": r.get("steps"), "eval_steps": evals, **values,
                   "amp_skipped_steps": scaler[-1] if scaler else None, "images_per_s": r.get("images_per_s"),
                   "peak_memory_mb": r.get("peak_memory_mb"), "world_size": r.get("world_size")}
    if problems:
        ctx.note("FAILED: " + "; ".join(problems) + "; " + detail)
        ctx.fail("")
    ctx.note(detail)
    return config


def fp16_or_skip(ctx: StepRun, same: str) -> None:
    """fp16 needs CUDA (a GradScaler); on the CPU this step would be step `same`'s run again."""
    if ctx.mode.device != "gpu":
        ctx.skip(f"fp16 needs a GPU (on the CPU it would be step {same}'s run again, without mixed precision)")


def step_rotation_bf16(ctx):
    train_and_eval(ctx, "rotation", ctx.mode.bf16)


def step_siamese_fp16(ctx):
    fp16_or_skip(ctx, "1d")
    train_and_eval(ctx, "siamese", ctx.mode.fp16)


def step_rotation_fp16(ctx):
    fp16_or_skip(ctx, "1a")
    train_and_eval(ctx, "rotation", ctx.mode.fp16)


def step_siamese_bf16(ctx):
    train_and_eval(ctx, "siamese", ctx.mode.bf16)


def step_ntxent(ctx):
    """1e: NT-Xent's negatives are gathered from every process with their gradients (models/collectives.py); its
    backward sends them back: NCCL's reduce-scatter with a GPU per process, gloo's all-to-all where the 2 processes
    share one GPU. eval/view_pair_auc: the augment pairs' own metric, at start and at the end."""
    backend = "nccl" if ctx.mode.device == "gpu" and ctx.mode.gpus >= 2 else "gloo"
    config = train_and_eval(ctx, "siamese", ctx.mode.bf16, ["--method", "simclr"],
                            metrics=("eval/view_pair_auc",), backend=backend)
    ctx.results.update(method=config.get("method"), pairs=config.get("pairs"), dist_backend=backend)
    if (config.get("method"), config.get("pairs")) != ("simclr", "augment"):
        ctx.fail(f"config.json says --method {config.get('method')} --pairs {config.get('pairs')}")
    ctx.note(f"; NT-Xent negatives gathered from 2 processes over {backend}")


def step_sync_bn(ctx):
    """1f: --sync-bn (SyncBatchNorm across processes: CUDA only) on resnet18, a few steps."""
    m, run, steps = ctx.mode, os.path.join(ctx.dir, "run"), 8
    rc = ctx.run([*ctx.launcher(2, m.bf16), "train_rotation.py", *ctx.data(), "--model", "resnet18",
                  "--batch-size", str(m.batch), "--max-steps", str(steps), "--log-every", "4", "--checkpoint-every",
                  "1000", "--skip-eval", "--sync-bn", "--output-dir", run, *ctx.dist()])
    if rc:
        ctx.fail(f"the run {failed(rc)}")
    ctx.keep(run)
    r, config = read_json(os.path.join(run, "results.json")), read_json(os.path.join(run, "config.json"))
    losses = [l["train/loss"] for l in metrics_lines(run) if "train/loss" in l]
    ctx.results = {"steps": r.get("steps"), "world_size": r.get("world_size"), "sync_bn": config.get("sync_bn"),
                   "losses": losses, "images_per_s": r.get("images_per_s")}
    if config.get("sync_bn") is not True:
        ctx.fail(f"config.json says sync_bn {config.get('sync_bn')}")
    if r.get("steps") != steps or r.get("world_size") != 2 or not losses or not all(map(number, losses)):
        ctx.fail(f"results.json: {r.get('steps')} steps, world size {r.get('world_size')}, losses {losses}")
    ctx.say(f"{steps} steps on 2 processes with SyncBatchNorm (config.json sync_bn true), loss {losses[0]:.3f} -> "
            f"{losses[-1]:.3f}, {r.get('images_per_s', 0):.0f} images/s")


def step_family(ctx):
    """1g: BYOL (LARS, a momentum copy) and MoCo v2 (a queue filled with the global batch's keys, gathered from both
    processes) on 2 processes, {bf16}; on a GPU with --sync-bn, as their recipes. The queue's write position after
    N steps is N x the global batch: the keys of both processes were queued on each."""
    m, steps, queue = ctx.mode, 8, 4096
    ctx.results = {}
    for method in ("byol", "mocov2"):
        run = os.path.join(ctx.dir, method)
        rc = ctx.run([*ctx.launcher(2, m.bf16), "train_siamese.py", *ctx.data(), "--model", m.bn_model, "--method",
                      method, "--batch-size", str(m.batch), "--max-steps", str(steps), "--warmup-epochs", "0",
                      "--log-every", "4", "--checkpoint-every", str(steps), "--skip-eval", "--queue-size", str(queue),
                      "--output-dir", run, *(["--sync-bn"] if m.device == "gpu" else []), *ctx.dist()])
        ctx.keep(run)
        if rc:
            ctx.fail(f"--method {method}: the run {failed(rc)}")
        lines, config = metrics_lines(run), read_json(os.path.join(run, "config.json")) or {}
        losses = [l["train/loss"] for l in lines if "train/loss" in l]
        spread = [l.get("train/embedding_std") for l in lines if "train/loss" in l]
        probe = [l.get("train/online_linear_acc") for l in lines if "train/loss" in l]
        if config.get("method") != method or config.get("world_size") != 2:
            ctx.fail(f"config.json says --method {config.get('method')}, world size {config.get('world_size')}")
        if not losses or not all(map(number, losses + spread + probe)):
            ctx.fail(f"--method {method}: losses {losses}, embedding_std {spread}, online_linear_acc {probe}")
        from safetensors.torch import load_file
        weights = load_file(os.path.join(run, "checkpoints", f"step_{steps:08d}", "model.safetensors"))
        copied = sorted(name for name in weights if name.startswith("head.momentum.copies.encoder."))
        if not copied:
            ctx.fail(f"--method {method}: no momentum copy of the encoder in the checkpoint")
        moved = max((weights[name].float() - weights[name.replace("head.momentum.copies.encoder.", "encoder.")]
                     .float()).abs().max().item() for name in copied)
        ctx.results[method] = {"losses": losses, "embedding_std": spread[-1], "sync_bn": config.get("sync_bn"),
                               "copy_vs_online_max_diff": moved}
        if method == "mocov2":
            position, expected = int(weights["head.queue.next"]), steps * m.batch % queue
            ctx.results[method]["queue_next"] = position
            if position != expected:
                ctx.fail(f"MoCo's queue is at {position} after {steps} steps of {m.batch}: expected {expected} (the "
                         f"global batch's keys, gathered from both processes)")
        ctx.note(f"{method}: loss {losses[0]:.3f} -> {losses[-1]:.3f}, embedding_std {spread[-1]:.3g}")
    ctx.say(f"{steps} steps each on 2 processes{' with SyncBatchNorm' if m.device == 'gpu' else ''}; MoCo's queue "
            f"holds the keys of both processes")


def step_backbones(ctx):
    """1h: resnet50 and torchvision's EfficientNet-B0 by name (--model torchvision:efficientnet_b0), simclr, {bf16}, on
    2 processes, 4 steps each. Each export's torchvision.safetensors, loaded into torchvision's own network by the
    lines its config.json gives, must give load_encoder's features on the device."""
    m, steps = ctx.mode, 4
    ctx.results = {}
    for model in ("resnet50", "torchvision:efficientnet_b0"):
        run = os.path.join(ctx.dir, model.replace(":", "_"))
        rc = ctx.run([*ctx.launcher(2, m.bf16), "train_siamese.py", *ctx.data(), "--model", model, "--method",
                      "simclr", "--batch-size", str(m.batch), "--max-steps", str(steps), "--log-every", "2",
                      "--checkpoint-every", str(steps), "--skip-eval", "--output-dir", run, *ctx.dist(),
                      *(["--image-size", "16"] if m.device == "cpu" else [])])  # the CPU: half the time
        ctx.keep(run)
        if rc:
            ctx.fail(f"--model {model}: the run {failed(rc)}")
        losses = [l["train/loss"] for l in metrics_lines(run) if "train/loss" in l]
        if not losses or not all(map(number, losses)):
            ctx.fail(f"--model {model}: losses {losses}")
        gap = torchvision_form_gap(os.path.join(run, "final"), "cuda" if m.device == "gpu" else "cpu")
        ctx.results[model] = {"losses": losses, "torchvision_form_relative_gap": gap}
        if not gap < 1e-2:  # TF32 convolutions on a GPU differ by ~1e-3; a wrong key or stem by far more
            ctx.fail(f"--model {model}: torchvision's network with the exported weights differs from load_encoder's "
                     f"by {gap:.3g} (relative)")
        ctx.note(f"{model}: loss {losses[0]:.3f} -> {losses[-1]:.3f}, torchvision form within {gap:.1e}; ")
    ctx.say(f"{steps} steps each on 2 processes; the torchvision exports give load_encoder's features")


def torchvision_form_gap(final: str, device: str) -> float:
    """max |torchvision's network - load_encoder's| / max |load_encoder's| over random images, the network rebuilt
    from the export's own lines (config.json's "torchvision") as a user outside the project runs them."""
    import torch
    import torchvision
    from safetensors.torch import load_file
    from ssl_scripts.models import load_encoder
    config = read_json(os.path.join(final, "config.json"))
    scope = {"torch": torch, "torchvision": torchvision}
    exec("\n".join(config["torchvision"]["build"]), scope)  # the export's lines, checked as they are written
    model = scope["model"]
    model.load_state_dict(load_file(os.path.join(final, config["torchvision"]["weights"])), strict=True)
    size = config["image_size"]
    images = torch.rand(8, 3, size, size, device=device)
    with torch.no_grad():
        theirs = model.to(device).eval()(torchvision.transforms.Normalize(config["mean"], config["std"])(images))
        ours = load_encoder(final, device)(images)
    return ((theirs - ours).abs().max() / ours.abs().max()).item()


def step_sigusr1(ctx):
    """2: SIGUSR1 to the training processes: checkpoint, exit code 3; the same command resumes and finishes."""
    m, run = ctx.mode, os.path.join(ctx.dir, "run")
    cmd = [*ctx.launcher(2, m.bf16), "train_rotation.py", *ctx.data(), "--model", "simple_cnn", "--batch-size",
           str(m.batch), "--skip-eval", "--max-steps", str(m.usr1_steps), "--log-every", str(m.usr1_log),
           "--checkpoint-every", "100000", "--output-dir", run, *ctx.dist()]
    ctx.echo("$ " + " ".join(cmd))
    # accelerate launch and torchrun do not forward USR1 and would die of it: they inherit "ignore" (through
    # exec), the training processes install their own handler.
    proc = ctx.start_command(["sh", "-c", "trap '' USR1; exec \"$@\"", "sh", *cmd], quiet=True)
    metrics = os.path.join(run, "metrics.jsonl")
    while not (os.path.isfile(metrics) and os.path.getsize(metrics)) and proc.poll() is None and ctx.left() > 0:
        time.sleep(0.05)
    if not (os.path.isfile(metrics) and os.path.getsize(metrics)):
        ctx.fail(f"no metrics.jsonl line: the run {failed(ctx.finish(proc))}")
    ctx.echo("== metrics.jsonl has a line: SIGUSR1 to the run's processes")
    ctx.send(signal.SIGUSR1)
    rc = ctx.finish(proc)
    log = ctx.log_text()
    found = re.search(r"stopping on SIGUSR1 at step (\d+)", log)
    if not found:
        ctx.fail(f"no 'stopping on SIGUSR1 at step N' line (exit status {rc})")
    n = int(found.group(1))
    if n >= m.usr1_steps:
        ctx.fail(f"stopped at step {n}, the last one: the signal came too late to test a resume")
    # With 2 processes the workers exit 3 and accelerate launch reports them (torchrun's ChildFailedError) with 1.
    if rc == 3:
        ctx.say(f"stopped at step {n}, exit status 3")
    elif rc != 0 and re.search(r"exitcode *: 3", log):
        ctx.say(f"stopped at step {n}, workers' exit code 3 (accelerate launch: {rc})")
    else:
        ctx.fail(f"stopped at step {n} but exit status {rc} and no worker exit code 3")
    if not os.path.isdir(os.path.join(run, "checkpoints", f"step_{n:08d}")):
        ctx.fail(f"no checkpoint step_{n} after the stop")
    rc = ctx.run(cmd)
    if rc:
        ctx.fail(f"the resumed run {failed(rc)}")
    if not re.search(rf"resumed from .* at step {n} ", ctx.log_text()):
        ctx.fail(f"the rerun did not say 'resumed from ... at step {n}'")
    ctx.keep(run)
    try:
        steps = read_json(os.path.join(run, "results.json"))["steps"]
    except (OSError, ValueError, KeyError):
        ctx.fail("no results.json after the resume")
    if steps != m.usr1_steps:
        ctx.fail(f"results.json says {steps} steps, expected {m.usr1_steps}")
    ctx.say(f"resumed from that checkpoint, results.json: {steps} steps")


def step_deterministic(ctx):
    """3: --deterministic: straight vs killed after the step-4 checkpoint and resumed; step-12 weights bitwise
    equal."""
    m, whole, cut = ctx.mode, os.path.join(ctx.dir, "whole"), os.path.join(ctx.dir, "cut")
    ctx.env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    opts = [*ctx.launcher(2, m.bf16), "train_rotation.py", *ctx.data(), "--model", m.det_model, "--batch-size",
            str(m.batch), "--max-steps", "12", "--checkpoint-every", "4", "--log-every", "4", "--skip-eval",
            "--deterministic", *ctx.dist()]
    rc = ctx.run([*opts, "--output-dir", whole])
    if rc:
        ctx.fail(f"the straight run {failed(rc)}")
    ctx.echo("$ " + " ".join([*opts, "--output-dir", cut]) + "   (killed after its step-4 checkpoint)")
    proc = ctx.start_command([*opts, "--output-dir", cut], quiet=True)
    fourth = os.path.join(cut, "checkpoints", "step_00000004")
    while not os.path.isdir(fourth) and proc.poll() is None and ctx.left() > 0:
        time.sleep(0.01)
    ctx.stop_processes(signal.SIGKILL)
    ctx.echo(f"== killed (exit status {proc.wait()})")
    if not os.path.isdir(fourth):
        ctx.fail("the run to be killed never wrote its step-4 checkpoint")
    if os.path.exists(os.path.join(cut, "results.json")) or os.path.isdir(os.path.join(cut, "checkpoints",
                                                                                        "step_00000012")):
        ctx.fail("the run finished before it was killed: nothing was resumed")
    before = " ".join(sorted(os.listdir(os.path.join(cut, "checkpoints"))))
    rc = ctx.run([*opts, "--output-dir", cut])
    if rc:
        ctx.fail(f"the resumed run {failed(rc)}")
    resumed = re.findall(r"resumed from \S* at step (\d+)", ctx.log_text())
    if not resumed:
        ctx.fail("the rerun did not say 'resumed from'")
    at = int(resumed[-1])
    ctx.say(f"killed with checkpoints [{before}], resumed at step {at}")
    import torch
    from safetensors.torch import load_file
    name = "checkpoints/step_00000012/model.safetensors"
    try:
        a, b = load_file(os.path.join(whole, name)), load_file(os.path.join(cut, name))
    except Exception as e:
        ctx.fail(f"weights could not be compared: {type(e).__name__}: {e}")
    differ = sorted(n for n in a if n not in b or not torch.equal(a[n], b[n])) + sorted(set(b) - set(a))
    ctx.results = {"compared_tensors": len(a), "equal": not differ, "differing": differ[:20], "resumed_at": at,
                   "file": name}
    ctx.echo(f"{len(a)} tensors compared, {len(differ)} differ: {differ[:5]}")
    if differ or not a:
        ctx.fail(f"weights differ: {len(differ)} of {len(a)} tensors, {differ[:5]}")
    ctx.say(f"step-12 model.safetensors: all {len(a)} tensors bitwise equal (torch.equal)")


def step_compile(ctx):
    """4: N steps without --compile, then the same output dir resumed with --compile to 2N."""
    m, run, n = ctx.mode, os.path.join(ctx.dir, "run"), ctx.mode.compile_n
    opts = [*ctx.launcher(2, m.bf16), "train_rotation.py", *ctx.data(), "--model", "simple_cnn", "--batch-size",
            str(m.batch), "--skip-eval", "--checkpoint-every", str(n), "--log-every", str(n), "--output-dir", run,
            *ctx.dist()]
    rc = ctx.run([*opts, "--max-steps", str(n)])
    if rc:
        ctx.fail(f"the eager run {failed(rc)}")
    t0 = time.monotonic()
    rc = ctx.run([*opts, "--max-steps", str(2 * n), "--compile"])
    if rc:
        ctx.fail(f"the resume with --compile {failed(rc)}")
    if not re.search(rf"resumed from .* at step {n} ", ctx.log_text()):
        ctx.fail(f"the --compile run did not resume at step {n}")
    ctx.keep(run)
    steps = read_json(os.path.join(run, "results.json")).get("steps")
    losses = [l["train/loss"] for l in metrics_lines(run) if l.get("train/loss") is not None]
    ctx.echo(f"{steps} {losses}")
    if steps != 2 * n or not losses or not all(map(number, losses)):
        ctx.fail("results.json: wrong step count or non-finite loss")
    ctx.say(f"{n} steps eager, resumed with --compile to {2 * n}: it worked ({time.monotonic() - t0:.0f} s with "
            f"compilation)")


def step_evaluate(ctx):
    """5: evaluate.py, 2 processes, on an exported encoder (step 1a's; a 2-step one of its own if 1a left none)."""
    m = ctx.mode
    launch = ctx.launcher(2, m.bf16)
    encoder = os.path.join(ctx.check.work, "1a_rotation_bf16", "run", "final")
    if not os.path.isfile(os.path.join(encoder, "config.json")):
        encoder = os.path.join(ctx.dir, "pretrain", "final")
        ctx.say("step 1a left no encoder: trained one (2 steps)")
        rc = ctx.run([*launch, "train_rotation.py", *ctx.data(), "--model", m.bn_model, "--batch-size",
                      str(m.batch), "--max-steps", "2", "--skip-eval", "--output-dir",
                      os.path.join(ctx.dir, "pretrain"), *ctx.dist()])
        if rc:
            ctx.fail(f"training an encoder {failed(rc)}")
    probes = os.path.join(ctx.dir, "probes.json")
    rc = ctx.run([*launch, "evaluate.py", "--encoder", encoder, "--dataset", "synthetic", "--synthetic-size",
                  str(m.size), "--classifier-epochs", "2", "--eval-batch-size", str(m.eval_batch), "--output",
                  probes, *ctx.dist()])
    if rc:
        ctx.fail(f"evaluate.py {failed(rc)}")
    ctx.keep(ctx.dir)
    p = read_json(probes)
    trained, untrained = p.get("trained", {}), p.get("untrained", {})
    accs = [a for res in (trained, untrained) for block in res.values() for a in block.values()]
    ok = trained and set(trained) == set(untrained) and accs and all(map(number, accs)) and p.get("world_size") == 2
    best = max(((100 * a, b, c) for b, v in trained.items() for c, a in v.items()), default=(float("nan"), "?", "?"))
    detail = (f"probes.json: {p.get('model')}, blocks {','.join(trained)}, world size {p.get('world_size')}, "
              f"{p.get('mixed_precision')}; best trained: {best[1]} {best[2]} {best[0]:.1f}%; "
              f"{p.get('time_s', 0):.1f} s")
    ctx.results = {"model": p.get("model"), "blocks": list(trained), "world_size": p.get("world_size"),
                   "trained": trained, "untrained": untrained}
    ctx.note(detail if ok else "FAILED: incomplete probes.json: " + detail)
    if not ok:
        ctx.fail("")


def host_syncs(ctx: StepRun, script: str, placement: str = "") -> None:
    """6a-6d: synchronizing CUDA operations per steady step, 1 process, bf16; 6c-6d on the image folder, with the
    train split in host memory or streamed from its files (the placement the run's data line names is checked)."""
    m, run = ctx.mode, os.path.join(ctx.dir, "run")
    data = ctx.data()
    if placement:
        if not os.path.exists(os.path.join(ctx.check.work, "images.done")):
            ctx.fail("no image folder: generating it failed (logs/image_folder.log)")
        data = ["--dataset", "imagefolder", "--data-dir", os.path.join(ctx.check.work, "images"), "--cache-dir",
                os.path.join(ctx.dir, "cache"), "--data-placement", placement, "--report-to", "none"]
    rc = ctx.run([*ctx.launcher(1, m.bf16), f"train_{script}.py", *data, "--model", "simple_cnn", "--batch-size",
                  str(m.sync_batch), "--skip-eval", "--max-steps", str(m.sync_steps), "--log-every", "10",
                  "--checkpoint-every", "25", "--output-dir", run, "--count-host-syncs"])
    if rc:
        ctx.fail(f"the run {failed(rc)}")
    ctx.keep(run)
    lines, shown = ctx.log_text().splitlines(), ""
    if placement:
        first = next((line for line in lines if line.startswith("data: ")), "")
        if f"; placement {placement} (--data-placement {placement})" not in first:
            ctx.fail(f"the run's data line says '{first or 'nothing'}': expected 'placement {placement}'")
        shown = f"its data line says placement {placement} (--data-placement {placement}), "
    try:
        r = read_json(os.path.join(run, "results.json"))
        steps = r["steps"]
    except (OSError, ValueError, KeyError):
        ctx.fail("no results.json (or no steps in it)")
    if steps != m.sync_steps:
        ctx.fail(f"results.json says {steps} steps, expected {m.sync_steps}")
    shown += f"results.json: {steps} steps"
    line = next((line for line in reversed(lines) if line.startswith("host syncs")), "")
    if not line:
        ctx.fail("no log line starting 'host syncs'")
    # Without CUDA the scripts count nothing ("host syncs: not counted"): the run checked the rest only.
    if m.device != "gpu":
        ctx.skip(f"GPU only (the CPU run of the same command passed: {shown}; {line})")
    mean, worst = r.get("host_syncs_per_step"), r.get("host_syncs_max_step")
    ctx.results = {**{k: v for k, v in r.items() if k.startswith("host_syncs")}, "log_line": line}
    if not number(mean) or not number(worst):
        problem = f"results.json: host_syncs_per_step {mean}, host_syncs_max_step {worst} (no steady steps?)"
    elif mean > 0 or worst > 0:
        problem = "target 0 per steady step missed"
    else:
        problem = None
    detail = (f"{shown}; host_syncs_per_step {mean}, host_syncs_max_step {worst} over "
              f"{r.get('host_syncs_steady_steps')} steady steps ({r.get('host_syncs_other_steps_total')} in the "
              f"other steps; target 0)")
    ctx.note(("FAILED: " + problem + ": " if problem else "") + detail)
    if problem:
        ctx.fail("")


def step_syncs_rotation(ctx):
    host_syncs(ctx, "rotation")


def step_syncs_siamese(ctx):
    host_syncs(ctx, "siamese")


def step_placement_host(ctx):
    host_syncs(ctx, "rotation", "host")


def step_placement_stream(ctx):
    host_syncs(ctx, "siamese", "stream")


# Step 7's table: the guaranteed GPU_SH_MIN_S (150 s) holds resnet18's rotation and siamese rows (6 processes of
# about 10 s start-up each: imports, CUDA/cuDNN, 8192 synthetic images instead of 50,000, then ~5 s measured at
# 2 s a measurement), about 90 s; the compiled row (3 more processes, each compiling) runs only when
# bench/gpu.sh's COMPILE_S (140 s) is left after them. Figures to quote come from bash bench/gpu.sh at its defaults.
GPU_SH_ROWS = {"MODELS": "resnet18", "SCRIPTS": "rotation siamese", "SYNTHETIC_SIZE": "8192", "MEASURE_S": "2"}


def step_gpu_sh(ctx):
    """7: the throughput table, alone on the GPU, bench/gpu.sh given the step's time but a margin, so that it ends
    by itself (the compiled row only if enough is left) and this step still reports; the rows it finished are
    reported even when it did not finish them all."""
    budget = int(ctx.left() - 15)
    ctx.env.update(GPU_SH_ROWS, BUDGET_S=str(budget))
    ctx.echo(" ".join(f"{k}={v}" for k, v in sorted({**GPU_SH_ROWS, "BUDGET_S": budget}.items())))
    rc = ctx.run(["bash", "bench/gpu.sh", ctx.dir])
    dest = os.path.join(ctx.out, ctx.id)
    os.makedirs(dest, exist_ok=True)
    for name in sorted(os.listdir(ctx.dir)):
        if re.fullmatch(r"throughput_gpu.*\.(json|txt)", name):
            shutil.copy(os.path.join(ctx.dir, name), dest)
    table = os.path.join(ctx.dir, "throughput_gpu.json")
    eager = read_json(table) if os.path.exists(table) else {"rows": [], "planned_rows": None}
    rows = list(eager["rows"])
    compiled = os.path.join(ctx.dir, "throughput_gpu_compiled.json")
    if os.path.exists(compiled):
        rows += [dict(r, model=r["model"] + "+compile") for r in read_json(compiled)["rows"]]
    parts = [f"{r['script']} {r['model']}: {r['project']['samples_per_s']:.0f} samples/s, efficiency "
             f"{r['efficiency']:.2f}, {r['project']['samples_per_s'] / r['tutorial']['samples_per_s']:.1f}x "
             f"tutorial" for r in rows]
    note = next((line for line in ctx.log_text().splitlines() if line.startswith("compiled row: ")), "")
    parts += [note] if note else []  # why the compiled row is missing
    ctx.results = {"rows": rows, "eager_rows_planned": eager.get("planned_rows")}
    if rc:
        ctx.fail(f"bench/gpu.sh {failed(rc)}; {len(eager['rows'])} of {eager.get('planned_rows') or '?'} eager "
                 f"rows measured" + "".join(f"; {p}" for p in parts))
    ctx.note("; ".join(parts))


STEPS = [
    Step("1a_rotation_bf16", "rotation, {bf16}, {bn_model}, eval at start + every epoch", 90, step_rotation_bf16, "a"),
    Step("1b_siamese_fp16", "siamese, {fp16}, {bn_model}, eval at start + every epoch", 90, step_siamese_fp16, "a"),
    Step("1c_rotation_fp16", "rotation, {fp16}, {bn_model}, eval at start + every epoch", 90, step_rotation_fp16, "a"),
    Step("1d_siamese_bf16", "siamese, {bf16}, {bn_model}, eval at start + every epoch", 90, step_siamese_bf16, "b"),
    Step("1e_siamese_ntxent", "siamese NT-Xent (--method simclr), {bf16}, {bn_model}, eval at start + "
         "every epoch, view_pair_auc", 90, step_ntxent, "c"),
    Step("1f_rotation_sync_bn", "rotation --sync-bn, {bf16}, resnet18, 2 processes, 8 steps", 60, step_sync_bn, "c",
         cpu_skip="GPU only: SyncBatchNorm needs CUDA"),
    Step("1g_siamese_family", "siamese --method byol and mocov2, {bf16}, {bn_model}, 2 processes, 8 steps", 160,
         step_family, "b"),
    Step("1h_backbones", "siamese --model resnet50 and torchvision:efficientnet_b0, {bf16}, 2 processes, 4 steps; "
         "their torchvision exports", 120, step_backbones, "a"),
    Step("2_sigusr1_resume", "SIGUSR1: checkpoint, stop, resume", 120, step_sigusr1, "c"),
    Step("3_deterministic_resume", "--deterministic: kill + resume = straight run, bitwise", 120, step_deterministic,
         "c"),
    Step("4_compile_resume", "resume with --compile toggled", 200, step_compile, "b"),
    Step("5_evaluate", "evaluate.py, 2 processes", 90, step_evaluate, "a"),
    Step("6a_host_syncs_rotation", "host syncs per step, rotation, 1 process, {bf16}", 60, step_syncs_rotation, "b"),
    Step("6b_host_syncs_siamese", "host syncs per step, siamese, 1 process, {bf16}", 60, step_syncs_siamese, "b"),
    Step("6c_placement_host", "host syncs per step, --data-placement host, rotation, {bf16}", 60, step_placement_host,
         "c"),
    Step("6d_placement_stream", "host syncs per step, --data-placement stream, siamese, {bf16}", 60,
         step_placement_stream, "c"),
    Step("7_gpu_sh", "bench/gpu.sh: throughput table", 330, step_gpu_sh, "alone",
         cpu_skip="no GPU: bench/gpu.sh measures GPU throughput"),
]


def make_image_folder(root: str, train: int = 64, test: int = 10) -> str:
    """6c-6d's folder: 10 classes of `train` and `test` JPEGs at 32 px, seeded; each class a colour of its own
    under the noise (batches of the host-sync steps leave steady steps in an epoch)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, per_class in (("train", train), ("test", test)):
        for c in range(10):
            os.makedirs(f"{root}/{split}/class{c}", exist_ok=True)
            tint = rng.integers(0, 256, 3)
            for i in range(per_class):
                pixels = np.clip(tint + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(f"{root}/{split}/class{c}/{i}.jpg", quality=90)
    return f"{root}: {10 * train} train and {10 * test} test JPEGs, 10 classes, 32 px"


# -------------------------------------------------------------------------------------------------- report
def log_tail(path: str) -> list:
    """The errors a log holds (each once), then its last lines; progress bars left out."""
    try:
        with open(path, errors="replace") as f:
            text = f.read().replace("\r", "\n")
    except OSError:
        return []
    lines = [l for l in text.splitlines() if l.strip() and not re.search(r"[0-9]+/[0-9]+ \[[0-9:]+<", l)]
    errors = []
    for line in lines:
        if re.search(r"(^|: )(error: |[A-Za-z_.]*(Error|Exception): )", line) and "ChildFailedError" not in line:
            line = re.sub(r"^\[rank[0-9]+\]: ", "", line)
            if line not in errors:
                errors.append(line)
    return [f"  error> {e}" for e in errors[:6]] + lines[-25:]


def git(*args) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


class Check:
    def __init__(self, mode: Mode, out: str, work: str, versions: str, gpu: str, start: float = None):
        self.mode, self.out, self.work, self.versions, self.gpu = mode, out, work, versions, gpu
        self.start = time.monotonic() if start is None else start
        self.token = uuid.uuid4().hex
        self.lock = threading.RLock()  # the report, the steps' states, starting commands
        self.results = {}  # step id -> {"status", "seconds", "detail", "results"}
        self.running = {}  # step id -> StepRun
        self.stopped = ""  # the signal that stopped the check
        self.commit, self.short = git("rev-parse", "HEAD"), git("rev-parse", "--short", "HEAD")
        self.dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        self.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def title(self, step: Step) -> str:
        return step.title.format(**vars(self.mode))

    def chosen(self, step: Step) -> bool:
        return not self.mode.only or any(step.id == x or step.id.split("_")[0] == x for x in self.mode.only)

    # one step
    def run_step(self, step: Step, deadline: float, port: int = 0) -> None:
        with self.lock:
            if self.stopped:
                return
        t0 = time.monotonic()
        log_path = os.path.join(self.out, "logs", f"{step.id}.log")
        if not self.chosen(step):
            return self.record(step, "SKIPPED", t0, f"not chosen (ONLY={','.join(self.mode.only)})", log_path)
        if self.mode.device != "gpu" and step.cpu_skip:
            return self.record(step, "SKIPPED", t0, step.cpu_skip, log_path)
        if deadline - t0 < min(20, step.limit_s * self.mode.limit_scale):
            return self.record(step, "FAIL", t0, f"not run: the time budget (BUDGET_S={self.mode.budget_s:g}, "
                               f"GPU_SH_MIN_S={self.mode.gpu_sh_min_s:g} of it kept for step 7) was spent", log_path)
        ctx = StepRun(self, step, deadline, port)
        with self.lock:
            self.running[step.id] = ctx
            self.write_report()
        try:
            step.run(ctx)
            status, why = "PASS", ""
        except Skipped as e:
            status, why = "SKIPPED", str(e)
        except Failed as e:
            status, why = "FAIL", f"FAILED: {e}" if str(e) else ""
        except Exception as e:  # a check's own error fails its step, and the next step runs
            ctx.echo(traceback.format_exc())
            status, why = "FAIL", f"FAILED: {type(e).__name__}: {e}"
        finally:
            ctx.stop_processes(signal.SIGKILL)  # whatever the step left running
        if why:
            ctx.echo(f"== {why}" if status == "FAIL" else f"== SKIPPED: {why}")
        detail = "".join(ctx.parts) + why
        with self.lock:
            self.running.pop(step.id, None)
            if self.stopped:
                return
            self.results[step.id] = {"status": status, "seconds": round(time.monotonic() - t0),
                                     "detail": re.sub(r"; $", "", detail.replace("\t", " ").replace("\n", " ")),
                                     "results": ctx.results}
            self.write_report()
        ctx.log.close()
        print(f"[{time.strftime('%H:%M:%S')}] {step.id}: {status} ({round(time.monotonic() - t0)} s)", flush=True)

    def record(self, step: Step, status: str, t0: float, detail: str, log_path: str) -> None:
        with open(log_path, "w") as f:
            f.write(f"== SKIPPED: {detail}\n" if status == "SKIPPED" else "")
        with self.lock:
            if self.stopped:
                return
            self.results[step.id] = {"status": status, "seconds": round(time.monotonic() - t0), "detail": detail,
                                     "results": None}
            self.write_report()
        print(f"[{time.strftime('%H:%M:%S')}] {step.id}: {status} (0 s)", flush=True)

    def lane(self, steps: list, deadline: float, port: int) -> None:
        for step in steps:
            self.run_step(step, deadline, port)

    def run(self) -> None:
        m = self.mode
        lanes_deadline = self.start + m.budget_s - m.gpu_sh_min_s
        try:
            with open(os.path.join(self.out, "logs", "image_folder.log"), "w") as log:
                log.write(make_image_folder(os.path.join(self.work, "images")) + "\n")
            open(os.path.join(self.work, "images.done"), "w").close()
        except Exception:
            with open(os.path.join(self.out, "logs", "image_folder.log"), "a") as log:
                log.write(traceback.format_exc())
        lanes = {lane: [s for s in STEPS if s.lane == lane] for lane in LANE_PORTS}
        if m.parallel:
            threads = [threading.Thread(target=self.lane, args=(steps, lanes_deadline, LANE_PORTS[lane]), daemon=True)
                       for lane, steps in lanes.items()]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.5)  # signals reach the main thread between joins
        else:
            self.lane([s for s in STEPS if s.lane in LANE_PORTS], lanes_deadline, LANE_PORTS["a"])
        for step in STEPS:
            if step.lane not in LANE_PORTS:
                self.run_step(step, self.start + m.budget_s)

    def stop(self, signum: int) -> None:
        """The check got signum: its steps' processes are ended, the running steps reported as stopped."""
        name = signal.Signals(signum).name
        with self.lock:
            self.stopped = name
            table = process_table()
            pids = (descendants([os.getpid()], table) | marked(f"{self.token}:", table)) - {os.getpid()}
            signal_processes(pids, signal.SIGKILL)
            for step_id, ctx in self.running.items():
                seconds = round(time.monotonic() - ctx.start)
                self.results[step_id] = {"status": "FAIL", "seconds": seconds, "results": ctx.results,
                                         "detail": "".join(ctx.parts) + f"FAILED: stopped after {seconds} s: the check "
                                                                        f"got {name}"}
            for step in STEPS:
                self.results.setdefault(step.id, {"status": "FAIL", "seconds": 0, "results": None,
                                                  "detail": f"not run: the check got {name}"})
            self.running.clear()

    # the report
    def step_rows(self) -> list:
        rows = []
        for step in STEPS:
            if step.id in self.results:
                r = self.results[step.id]
            elif step.id in self.running:
                r = {"status": "RUNNING", "seconds": round(time.monotonic() - self.running[step.id].start),
                     "detail": "running", "results": None}
            else:
                r = {"status": "PENDING", "seconds": 0, "detail": "not run yet", "results": None}
            row = {"id": step.id, "title": self.title(step), "status": r["status"], "seconds": r["seconds"],
                   "detail": r["detail"], "log": f"logs/{step.id}.log"}
            if r["results"] is not None:
                row["results"] = r["results"]
            rows.append(row)
        return rows

    def write_report(self) -> str:
        """gpu_check.txt and gpu_check.json as they stand (each replaced whole); returns the text."""
        with self.lock:
            rows = self.step_rows()
            total = round(time.monotonic() - self.start)
            counts = {s: sum(r["status"] == s for r in rows) for s in ("PASS", "FAIL", "SKIPPED")}
            unfinished = len(rows) - sum(counts.values())
            lanes = "in 3 concurrent lanes (times overlap)" if self.mode.parallel else "one after the other"
            text = [f"GPU check of {self.short}{' (dirty)' if self.dirty else ''}, {self.date}, device: "
                    f"{self.mode.device}{', ' + self.gpu if self.gpu else ''}", self.versions, "",
                    "%-26s %-7s %6s  %s" % ("step", "status", "time", "detail")]
            text += ["%-26s %-7s %5ss  %s: %s" % (r["id"], r["status"], r["seconds"], r["title"], r["detail"])
                     for r in rows]
            text += ["", f"{'total' if not unfinished else 'so far'}: {total} s ({counts['PASS']} PASS, "
                         f"{counts['FAIL']} FAIL, {counts['SKIPPED']} SKIPPED"
                         + (f", {unfinished} not finished: this report is rewritten as each step ends" if unfinished
                            else "") + f"); steps 1-6 ran {lanes}"]
            for r in rows:
                tail = log_tail(os.path.join(self.out, r["log"])) if r["status"] == "FAIL" else []
                if tail:
                    text += ["", f"--- {r['id']} FAILED; last lines of {r['log']}:", *tail]
            text = "\n".join(text) + "\n"
            versions = dict(v.split(" ", 1) for v in self.versions.split(", "))  # "torch X, accelerate Y"
            report = {"device": self.mode.device, "gpu": self.gpu, "git_commit": self.commit, **versions,
                      "total_s": total, "budget_s": round(self.mode.budget_s), "concurrent_lanes": self.mode.parallel,
                      **{k.lower(): v for k, v in counts.items()}, "unfinished": unfinished,
                      "finished": not unfinished, "stopped_by": self.stopped or None,
                      "ok": counts["FAIL"] == 0 and not unfinished, "steps": rows}
            write_whole(os.path.join(self.out, "gpu_check.txt"), text)
            write_whole(os.path.join(self.out, "gpu_check.json"), json.dumps(report, indent=2) + "\n")
            self.ok = report["ok"]
            return text


def write_whole(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def preflight_failed(out: str, device: str, line: str) -> int:
    """The pre-flight's line, printed and written as the report (no step has run): exit status 2."""
    print(line, file=sys.stderr)
    write_whole(os.path.join(out, "gpu_check.txt"), line + "\n")
    write_whole(os.path.join(out, "gpu_check.json"), json.dumps(
        {"ok": False, "preflight_error": line, "device": device, "steps": [], "pass": 0, "fail": 0,
         "skipped": 0}) + "\n")
    return 2


def main(argv=None) -> int:
    start = time.monotonic()  # BUDGET_S counts from here, the pre-flight included
    argv = sys.argv[1:] if argv is None else argv
    environ = dict(os.environ)
    os.chdir(REPO)  # relative paths (OUT_DIR, the configs) are the repository's, as the scripts' commands expect
    out = os.path.abspath(argv[0] if argv else environ.get("OUT") or "runs/gpu_check")
    try:
        os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    except OSError as e:
        print(f"gpu_check: cannot write OUT_DIR {out}: {e.strerror}", file=sys.stderr)
        return 2
    device, python = environ.get("DEVICE", "auto"), environ.get("PYTHON") or "python3"
    try:
        device, gpus, versions = preflight(device, python, environ, os.path.join(out, "logs", "preflight.log"))
    except UserError as e:
        return preflight_failed(out, device, f"gpu_check: {e}")
    mode = mode_for(device, gpus, python, environ)
    if environ.get("WORK_DIR"):
        work, remove = os.path.abspath(environ["WORK_DIR"]), False
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix="gpu_check.", dir=environ.get("TMPDIR") or None)
        remove = not mode.keep_work
    gpu = ""
    if mode.device == "gpu":
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=20).stdout.strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            gpu = ""
    check = Check(mode, out, work, versions, gpu, start)

    def on_signal(signum, frame):
        check.stop(signum)
        print(check.write_report(), end="", flush=True)
        print(f"(written: {out}/gpu_check.txt, {out}/gpu_check.json; stopped by {check.stopped})", flush=True)
        if remove:
            shutil.rmtree(work, ignore_errors=True)
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    print(f"gpu_check: device {mode.device}{f' ({gpu})' if gpu else ''}, lanes "
          f"{'concurrent' if mode.parallel else 'sequential'}, budget {mode.budget_s:g} s; logs in {out}/logs, runs "
          f"in {work}", flush=True)
    try:
        check.write_report()
        check.run()
        text = check.write_report()
    finally:
        if remove:
            shutil.rmtree(work, ignore_errors=True)
    print(text, end="")
    print(f"(written: {out}/gpu_check.txt, {out}/gpu_check.json)")
    return 0 if check.ok else 1


if __name__ == "__main__":
    sys.exit(main())
