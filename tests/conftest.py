import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

# A few seconds of training on the synthetic set: what the end-to-end tests run.
SMALL = ["--dataset", "synthetic", "--model", "simple_cnn", "--batch-size", "32", "--eval-batch-size", "256",
         "--linear-probe-epochs", "5", "--report-to", "none"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tests' subprocesses (launched probes, generated scripts, accelerate's workers) import the project and these
# helpers as pytest does (pyproject.toml's pythonpath).
os.environ["PYTHONPATH"] = os.pathsep.join([REPO, os.path.join(REPO, "tests"),
                                            *filter(None, [os.environ.get("PYTHONPATH")])])


def pytest_terminal_summary(terminalreporter):
    """Why tests were skipped, one line per file and reason (e.g. how to run the Slurm tests where no cluster
    answers): plain `pytest -q` prints only how many; -rs, which prints them itself, one line per test function."""
    if terminalreporter.hasopt("s"):
        return
    skipped = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        key = (report.location[0], reason.removeprefix("Skipped: "))
        skipped[key] = skipped.get(key, 0) + 1
    for (path, reason), count in skipped.items():
        terminalreporter.write_line(f"SKIPPED [{count}] {path}: {reason}")


@pytest.fixture
def image_folder(tmp_path):
    """A tiny ImageFolder with every kind of file users have: RGB, grayscale, RGBA, palette, odd sizes."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 6), ("test", 3)):
        for c, name in enumerate(("cat", "dog")):
            d = tmp_path / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                size = [(32, 32), (40, 24), (17, 50)][i % 3]
                arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
                img = Image.fromarray(arr)
                mode = ["RGB", "L", "RGBA", "P"][(i + c) % 4]
                img = img.convert(mode) if mode != "P" else img.convert("P", palette=Image.Palette.ADAPTIVE)
                img.save(d / f"{i}.png")
            (d / "notes.txt").write_text("not an image: ignored")
    return tmp_path


REQUIRE_SMALL_DISK = "SSL_SCRIPTS_REQUIRE_SMALL_DISK"  # set by .ci/run: no tmpfs is then a failure, not a skip


def required_by(variable: str) -> bool:
    """Whether an environment variable such as SSL_SCRIPTS_REQUIRE_SMALL_DISK asks for something: unset, empty,
    "0", "false", "no" and "off" (any case, spaces around) do not; any other value does."""
    return os.environ.get(variable, "").strip().lower() not in ("", "0", "false", "no", "off")


class SmallDisk:
    """A file system of its own (a 64 MiB tmpfs) to fill: fill() leaves `leave` bytes free, free() frees them."""

    def __init__(self, path):
        self.path, self.ballast = path, path / ".ballast"

    def fill(self, leave: int = 0) -> None:
        import shutil
        self.free()
        take = shutil.disk_usage(self.path).free - leave
        fd = os.open(self.ballast, os.O_CREAT | os.O_WRONLY)
        try:
            os.posix_fallocate(fd, 0, take)
        finally:
            os.close(fd)

    def free(self) -> None:
        if self.ballast.exists():
            self.ballast.unlink()


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mounted for the test (mount needs root: CI runs as root, where REQUIRE_SMALL_DISK makes its absence
    a failure; elsewhere these tests are skipped with the reason)."""
    path = tmp_path / "disk"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode:
        reason = f"needs a small file system to fill: run as root, which may mount a tmpfs ({mounted.stderr.strip()})"
        (pytest.fail if required_by(REQUIRE_SMALL_DISK) else pytest.skip)(reason)
    yield SmallDisk(path)
    subprocess.run(["umount", "-l", str(path)], check=True)


def run_script(args, cwd=REPO, timeout=600, env=None):
    """Runs a command line (e.g. accelerate launch ...) and returns the CompletedProcess."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def python_script(script, *args, env=None):
    """One process without the launcher: the quickest real run of a script."""
    return run_script([sys.executable, os.path.join(REPO, script), *map(str, args)], env=env)


def accelerate_command(script, *args, num_processes=1):
    return ["accelerate", "launch", "--config_file", os.path.join(REPO, "accelerate_configs", "cpu.yaml"),
            "--num_processes", str(num_processes), "--num_cpu_threads_per_process", "1",
            os.path.join(REPO, script), *map(str, args)]


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(script, *args, num_processes=1, **kw):
    return run_script(accelerate_command(script, *args, num_processes=num_processes), **kw)


def killed_when_held(command, out, point, env=None, timeout=300):
    """Runs `command` (a training writing to OUTPUT_DIR `out`) until it holds at `point` (SSL_SCRIPTS_HOLD, e.g.
    "step@5": step 5 done; "checkpoint@8": step 8's checkpoint written but incomplete), then kills all its processes
    with SIGKILL: a kill at a known moment, not after a sleep. Fails with the run's output if it ends first."""
    import signal
    import time
    marker, log = f"{out}.hold", open(f"{out}.log", "w")
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "SSL_SCRIPTS_HOLD": f"{point}:{marker}",
                                    **(env or {})})
    deadline = time.time() + timeout  # a bound on a hang, not a timing the test relies on
    while not os.path.exists(marker + ".held"):
        assert process.poll() is None and time.time() < deadline, open(f"{out}.log").read()[-3000:]
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-KILL", "-f", str(out)])  # launched workers may run in sessions of their own
    process.wait()
    log.close()


def steps_of(prefix, processes):
    """{step: the sample indices it trained on, rank by rank and micro-batch by micro-batch} from the index records
    (SSL_SCRIPTS_RECORD_INDICES) of every process of one or several runs."""
    per_rank = [[json.loads(line) for line in open(f"{prefix}.rank{rank}.jsonl")] for rank in range(processes)]
    steps = {}
    for records in per_rank:  # rank 0's micro-batches of a step, then rank 1's: the order of the global batches
        for record in records:
            steps.setdefault(record["step"], []).extend(record["indices"])
    return steps


# Small runs with the default tracker (W&B, offline here): SMALL without its --report-to none.
TRACKED = [a for a in SMALL if a not in ("--report-to", "none")]


def wandb_runs(output_dir):
    """The offline W&B run folders a training wrote under OUTPUT_DIR/wandb, oldest first."""
    return sorted((output_dir / "wandb").glob("offline-run-*"))


def wandb_read(run_dir):
    """A run read back with wandb's own tool: (summary object of `leet inspect --summary`, history items)."""
    summary = subprocess.run(["wandb", "leet", "inspect", "--summary", "--json", str(run_dir)],
                             capture_output=True, text=True, check=True)
    records = subprocess.run(["wandb", "leet", "inspect", "--json", str(run_dir)],
                             capture_output=True, text=True, check=True)
    history = [json.loads(line)["history"]["item"] for line in records.stdout.splitlines()
               if '"type":"history"' in line]
    return json.loads(summary.stdout), history


class HostWaits:
    """Records what would make the host wait for a GPU, in code run on CPU tensors or on `meta` tensors (which
    stand in for a device here): tensors made from host data on a device, host tensors copied to a device, device
    values read by the host (.item(), bool(), ...), and boolean-mask indexing (its size is read by the host).

    with HostWaits(device_only=False) as waits: ...; waits.seen is the list of what happened, in order. A test
    that asserts nothing was seen also calls waits.alive() inside the same `with`: a detector that stopped seeing
    would pass it otherwise."""
    READS = {"item", "tolist", "__bool__", "__float__", "__int__", "nonzero", "cpu", "numpy"}

    def __init__(self, device_only=True):
        self.device_only, self.seen = device_only, []

    def __enter__(self):
        import torch
        from torch.overrides import TorchFunctionMode
        watch = self

        def on_device(t):
            return isinstance(t, torch.Tensor) and (t.device.type != "cpu" or not watch.device_only)

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = getattr(func, "__name__", str(func))
                device = kwargs.get("device")
                if name in ("tensor", "as_tensor") and device is not None and torch.device(device).type != "cpu":
                    watch.seen.append(f"torch.{name}(host data, device={device})")
                elif name == "to" and args and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu" \
                        and any(isinstance(a, (str, torch.device)) and torch.device(a).type != "cpu"
                                for a in (*args[1:], device) if a is not None):
                    watch.seen.append("host tensor .to(device)")
                elif name in watch.READS and args and on_device(args[0]):
                    watch.seen.append(f".{name}() of a device tensor")
                elif name == "__getitem__" and len(args) > 1 and any(
                        isinstance(i, torch.Tensor) and i.dtype == torch.bool
                        for i in (args[1] if isinstance(args[1], tuple) else (args[1],))):
                    watch.seen.append("boolean-mask indexing")
                return func(*args, **kwargs)

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)

    def alive(self) -> bool:
        """Whether a deliberate wait made now (host data made into a `meta` tensor) is seen; it is then dropped
        from `seen`. Call it inside the `with`, after the code under test."""
        import torch
        before = len(self.seen)
        torch.tensor(0, device="meta")
        caught = self.seen[before:] == ["torch.tensor(host data, device=meta)"]
        del self.seen[before:]
        return caught


def parse(argv, task="rotation"):
    """A task's options as its training command parses them (defaults filled, checked)."""
    from ssl_scripts.config import parse_options
    from ssl_scripts.tasks import TASKS
    return parse_options(TASKS[task], [str(a) for a in argv])


def training_accelerator(args):
    """The loop's Accelerator setup: built, OUTPUT_DIR claimed, the run seeded (ssl_scripts/training/loop.py's first lines)."""
    from ssl_scripts.training import run as training
    accelerator = training.build_accelerator(args)
    training.claim_output_dir(accelerator, args)
    training.seed_run(args)
    return accelerator


def prepared_run(args, accelerator, model, samples=64, project="test", accelerator_view=None):
    """What the scripts set up between their model and their loop, on `samples` indices: (Run, prepared model).
    accelerator_view: what the Run is handed instead of the Accelerator (e.g. one that reports a GPU)."""
    from ssl_scripts.training import run as training
    from ssl_scripts.data import datasets as data
    from ssl_scripts.training.optimizers import make_optimizer
    loader = data.index_loader(accelerator, args, samples)
    optimizer = make_optimizer(args, model)
    scheduler = training.make_schedule(args, optimizer, loader, accelerator.num_processes)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    run = training.Run.start(args, accelerator_view or accelerator, model, optimizer, scheduler, loader, project,
                             stop_signals=training.StopSignals.install())  # as the loop installs them
    return run, model


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


def write_unlabeled_images(root, count=40, nested=False):
    """`count` unlabeled images as users have them: JPEG (RGB and grayscale) and PNG (RGBA, palette), of different
    sizes, flat or in sub-folders of sub-folders; plus what the scan must leave out (hidden files and folders, a
    text file) and a symlinked image, which it must take. Returns the image paths the scan should find, sorted."""
    rng = np.random.default_rng(1)
    found = []
    for i in range(count):
        folder = root / f"set{i % 3}" / f"day{i % 2}" if nested else root
        folder.mkdir(parents=True, exist_ok=True)
        width, height = [(32, 32), (48, 20), (21, 60), (100, 75)][i % 4]
        img = Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))
        kind = i % 4
        if kind == 0:
            path = folder / f"img{i:03d}.jpg"
            img.save(path, quality=90)
        elif kind == 1:
            path = folder / f"img{i:03d}.JPEG"
            img.convert("L").save(path, "JPEG")
        elif kind == 2:
            path = folder / f"img{i:03d}.png"
            img.convert("RGBA").save(path)
        else:
            path = folder / f"img{i:03d}.png"
            img.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
        found.append(str(path))
    (root / ".hidden.jpg").write_bytes(open(found[0], "rb").read())
    (root / ".thumbnails").mkdir()
    (root / ".thumbnails" / "t.jpg").write_bytes(open(found[0], "rb").read())
    (root / "README.txt").write_text("not an image: left out")
    os.symlink(found[0], root / "linked.jpg")
    found.append(str(root / "linked.jpg"))
    return sorted(found)


def exited(output_dir):
    """OUTPUT_DIR as this process leaves it when it exits: the run lock an in-process toy run took there (held until
    the process exits, ssl_scripts/outputs/runlock.py) released and its file removed, as at exit."""
    from ssl_scripts.outputs import runlock
    lock = os.path.abspath(os.path.join(str(output_dir), runlock.LOCK_NAME))
    for fd, path in list(runlock._held.items()):
        if os.path.abspath(path) == lock:
            runlock.release(fd)


def tree_contents(folder) -> dict:
    """Every file and folder under `folder`, hidden ones included: {relative path: SHA-256 of its bytes, or "dir"}.
    Equal before and after: nothing was added, removed or overwritten."""
    import hashlib
    seen = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs:
            seen[os.path.relpath(os.path.join(root, name), folder)] = "dir"
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                seen[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(f.read()).hexdigest()
    return seen


def task_toy_run(task, output_dir, *extra):
    """toy_run with a task's own options (e.g. siamese's --embedding-dim) and its checkpoint fields (its
    must_match, handed to the Run as the loop hands it). Returns (run, model)."""
    import torch
    from accelerate.state import AcceleratorState
    from ssl_scripts.training import run as training
    from ssl_scripts.data import datasets as data
    from ssl_scripts.training.optimizers import make_optimizer
    from ssl_scripts.tasks import TASKS
    AcceleratorState._reset_state(True)
    args = parse(["--output-dir", output_dir, "--report-to", "none", "--batch-size", "8", "--checkpoint-every", "3",
                  "--epochs", "2", "--log-every", "2", *extra], task)
    accelerator = training_accelerator(args)
    model = torch.nn.Linear(2, 1)
    loader = data.index_loader(accelerator, args, 64)
    optimizer = make_optimizer(args, model)
    scheduler = training.make_schedule(args, optimizer, loader, accelerator.num_processes)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    run = training.Run.start(args, accelerator, model, optimizer, scheduler, loader, task, TASKS[task].must_match,
                             stop_signals=training.StopSignals.install())
    return run, model


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
