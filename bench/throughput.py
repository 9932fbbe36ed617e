"""Throughput: the model's own limit, this project's training end to end, and the original tutorial's pipeline.

    python -m bench.throughput --data-dir ../shared/data/cifar10-jpeg   # real CIFAR-10 (ImageFolder copy)
    python -m bench.throughput --models simple_cnn                      # CIFAR-sized synthetic data

For each row (rotation, siamese, and rotation at the tutorial's own batch: 64 images, one rotation each) and model,
at the same samples per step (images through the network):
  project  `python train_<script>.py ... --skip-eval`: the scripts' real code path (uint8 data on the device,
           batched augmentation, rotations or pairs, step, logging), timed over its steady-state log windows;
  limit    the same run's steps timed from their first forward call to the end of the optimizer's update
           (SSL_SCRIPTS_TIME_MODEL: train/model_samples_per_s of the same windows, CUDA events on a GPU): the
           model's part of the project's own steps, in the same process, moment and caches. Efficiency = project /
           limit is the model's share of each step, at most 1 by construction; the rest is what the project adds
           (index batches, gathering, augmentation, rotations or pairs, logs). Measured apart, in processes of
           their own, a limit and a project minutes apart differ by up to 15% on a shared VM either way;
  tutorial the tutorial's RotatedCIFAR10 / SiameseCIFAR10 (per-image PIL, ToTensor, Normalize, rotate) in a
           DataLoader with no workers over in-memory CIFAR arrays (as torchvision's CIFAR10 holds them),
           feeding the same model the way the tutorial did (NCHW; siamese: one forward call per side of the pairs).
speedup = project / tutorial. The project and the tutorial run in processes of their own, so their peak memory
(GPU: allocated; CPU: resident) is their own.
"""
import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# glibc hands large blocks (activations) back to the OS after every step and page-faults them in again on the
# next; on this project's CPU VM that costs ~40% of a simple_cnn step and makes timings noisy. Every measurement
# (limit, project and tutorial alike) runs with the allocator keeping its memory. No effect on GPU memory.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2 ** 32), "MALLOC_TRIM_THRESHOLD_": str(2 ** 32),
              "MALLOC_TOP_PAD_": str(2 ** 29)}
from ssl_scripts import config
from ssl_scripts.training.metrics import peak_memory_mb
from ssl_scripts.data import sources
from ssl_scripts.models import encoders
from ssl_scripts.runtime import files
from ssl_scripts.runtime import distributed
from ssl_scripts.models.losses import contrastive_loss
from ssl_scripts.optim.optimizers import make_optimizer
from ssl_scripts.tasks import TASKS


TUTORIAL_BATCH = 64  # the original tutorial's DataLoader batch: 64 images, one random rotation each


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="ImageFolder copy of CIFAR-10 (train/, test/); default: synthetic, 50k")
    p.add_argument("--synthetic-size", type=int, default=50000, help="train images of the synthetic data")
    p.add_argument("--scripts", nargs="+", default=["rotation", "siamese", "rotation-tutorial-batch"],
                   choices=("rotation", "siamese", "rotation-tutorial-batch"),
                   help=f"rotation-tutorial-batch: the tutorial's own batch, {TUTORIAL_BATCH} images with one "
                        f"rotation each (--rotations-per-image 1), whatever --samples-per-step says")
    p.add_argument("--models", nargs="+", default=["simple_cnn", "resnet18"], choices=tuple(encoders.MODELS))
    p.add_argument("--samples-per-step", type=int, default=None,
                   help="images through the network per step (default: 512 on a GPU, RotNet's 128 x 4; 256 on CPU)")
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per measurement (default: GPU 5, CPU 10)")
    p.add_argument("--repeats", type=int, default=None,
                   help="measure each this many times, interleaved, and keep the best (default: GPU 1, CPU 3; "
                        "shared VMs vary by 15%% from minute to minute)")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None,
                   help="default: bf16 on a GPU, no on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in all three")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--measure", choices=("tutorial",), help=argparse.SUPPRESS)  # one measurement, internal
    p.add_argument("--script", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args()
    gpu = torch.cuda.is_available()
    args.samples_per_step = args.samples_per_step or (512 if gpu else 256)
    args.seconds = args.seconds or (5 if gpu else 10)
    args.repeats = args.repeats or (1 if gpu else 3)
    args.mixed_precision = args.mixed_precision or ("bf16" if gpu else "no")
    return args


def data_options(args) -> list:
    if args.data_dir:
        return ["--dataset", "imagefolder", "--data-dir", args.data_dir]
    return ["--dataset", "synthetic", "--synthetic-size", str(args.synthetic_size)]


def task_of(row: str) -> str:
    """The training script a row runs: rotation-tutorial-batch is train_rotation.py."""
    return "rotation" if row.startswith("rotation") else row


def samples_per_step(args, row: str) -> int:
    return TUTORIAL_BATCH if row == "rotation-tutorial-batch" else args.samples_per_step


def script_argv(args, row: str, model: str, output_dir: str) -> list:
    """The training script's command-line options for this row (what the limit's process builds as well)."""
    if row == "rotation-tutorial-batch":
        shape = ["--batch-size", str(TUTORIAL_BATCH), "--rotations-per-image", "1"]
    else:
        shape = ["--batch-size", str(args.samples_per_step // (4 if row == "rotation" else 2))]
    return [*data_options(args), "--model", model, *shape, "--report-to", "none", "--output-dir", output_dir,
            *(["--compile"] if args.compile else [])]


def script_args(args, row: str, model: str, output_dir: str) -> argparse.Namespace:
    """The training script's own options, as its own parser fills them."""
    return config.parse_options(TASKS[task_of(row)], script_argv(args, row, model, output_dir))


# ---------------------------------------------------------------------------------------- the tutorial's data
class TutorialRotatedCIFAR10(torch.utils.data.Dataset):
    """The tutorial's RotatedCIFAR10: CIFAR10.__getitem__ (PIL image, transform), then one random rotation."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform  # (N, 32, 32, 3) uint8, as CIFAR10

    def __len__(self):
        return len(self.images)

    def item(self, index):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]

    def __getitem__(self, index):
        from torchvision import transforms
        img, _ = self.item(index)
        rotation = random.choice([0, 90, 180, 270])
        return transforms.functional.rotate(img, rotation), rotation // 90


class TutorialSiameseCIFAR10(TutorialRotatedCIFAR10):
    """The tutorial's SiameseCIFAR10: a random partner (label = same class; ~90% negative, as the tutorial had it)."""

    def __getitem__(self, index):
        img1, label1 = self.item(index)
        img2, label2 = self.item(random.randint(0, len(self) - 1))
        return img1, img2, torch.tensor(int(label1 == label2), dtype=torch.float32)


def as_the_tutorial_ran_it(model: encoders.EncoderWithHead) -> encoders.EncoderWithHead:
    """The same network and parameters, computed as the tutorial computed it: NCHW, and simple_cnn in its
    SimpleCNN's order (conv, relu, max-pool; flatten, fc). The project's own ways of computing the same function
    (channels_last, max-pool before relu, the first fc as a convolution over the map) are not the tutorial's."""
    model.encoder.set_memory_format(torch.contiguous_format)
    if model.encoder.name == "simple_cnn":
        for i, (conv, pool, _) in enumerate(model.encoder.blocks):
            model.encoder.blocks[i] = torch.nn.Sequential(conv, torch.nn.ReLU(), pool)
        model.head_takes_map = False  # head(features): the flattened map through a plain Linear
    return model


# ----------------------------------------------------------------------------------------- one measurement
def tutorial_setup(args, opts):
    """The tutorial's pipeline feeding the same network computed the tutorial's way: (accelerator, step)."""
    from torchvision import transforms

    accelerator = distributed.make_accelerator(opts)
    dataset = sources.read_dataset(opts)
    encoder = encoders.build_encoder(opts.model, opts.image_size, *dataset.channel_stats())
    rotation = opts.task == "rotation"
    model = as_the_tutorial_ran_it(encoders.EncoderWithHead(encoder, TASKS[opts.task].head(opts, encoder)))
    optimizer = make_optimizer(opts, model)
    model, optimizer = accelerator.prepare(model, optimizer)
    dev, n = accelerator.device, samples_per_step(args, args.script)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    images, labels = dataset.train_images.permute(0, 2, 3, 1).numpy(), dataset.train_labels.tolist()
    if rotation:
        loader = torch.utils.data.DataLoader(TutorialRotatedCIFAR10(images, labels, transform), batch_size=n,
                                             shuffle=True, drop_last=True)
    else:
        loader = torch.utils.data.DataLoader(TutorialSiameseCIFAR10(images, labels, transform),
                                             batch_size=n // 2, shuffle=True, drop_last=True)

    def batches():
        while True:
            yield from loader
    batches = batches()

    def step():
        batch = next(batches)
        with accelerator.autocast():
            if rotation:
                loss = F.cross_entropy(model(batch[0].to(dev)), batch[1].to(dev))
            else:  # the tutorial's SiameseNetwork: forward_once(img1), forward_once(img2)
                loss = contrastive_loss(model(batch[0].to(dev)).projection, model(batch[1].to(dev)).projection,
                                        batch[2].to(dev), 1.0)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return accelerator, step


def measure(args) -> dict:
    """The tutorial for one (row, model): samples/s over >= args.seconds after a warm-up as long as the script's
    untimed first log window (args.seconds / 4), and peak memory."""
    with tempfile.TemporaryDirectory() as out:
        opts = script_args(args, args.script, args.model, out)
        accelerator, step = tutorial_setup(args, opts)

        def run(min_steps, min_seconds):
            steps, start = 0, time.perf_counter()
            while steps < min_steps or time.perf_counter() - start < min_seconds:
                step()
                steps += 1
            if accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            return steps, time.perf_counter() - start

        run(2, args.seconds / 4)  # warm-up: allocator, cudnn autotuning, compilation
        steps, seconds = run(3, args.seconds)
        return {"samples_per_s": steps * samples_per_step(args, args.script) / seconds,
                "peak_memory_mb": peak_memory_mb()}


def measurement_env(args) -> dict:
    """Every measurement's process: the allocator settings and precision the script runs with."""
    return {**MALLOC_ENV, **os.environ, "ACCELERATE_MIXED_PRECISION": args.mixed_precision}


def run_measurement(args, kind: str, row: str, model: str) -> dict:
    command = [sys.executable, "-m", "bench.throughput", "--measure", kind, "--script", row, "--model", model,
               "--samples-per-step", str(args.samples_per_step), "--seconds", str(args.seconds),
               "--mixed-precision", args.mixed_precision, "--synthetic-size", str(args.synthetic_size),
               *(["--data-dir", args.data_dir] if args.data_dir else []),
               *(["--compile"] if args.compile else [])]
    result = subprocess.run(command, capture_output=True, text=True, env=measurement_env(args), cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"{kind} measurement failed for {row}/{model}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_project(args, row: str, model: str, samples_per_s: float, seconds: float = None) -> dict:
    """The real script, single process, no evaluation, its model's part timed (SSL_SCRIPTS_TIME_MODEL), for about
    `seconds` at the expected samples_per_s: {"project": ..., "limit": ...}, samples/s over its log windows after
    the first (the warm-up)."""
    seconds = seconds or args.seconds
    log_every = max(1, math.ceil(seconds * samples_per_s / samples_per_step(args, row) / 4))
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, os.path.join(REPO, f"train_{task_of(row)}.py"),
                   *script_argv(args, row, model, out), "--max-steps", str(5 * log_every),
                   "--log-every", str(log_every), "--checkpoint-every", "1000000", "--skip-eval"]
        result = subprocess.run(command, capture_output=True, text=True,
                                env={**measurement_env(args), "SSL_SCRIPTS_TIME_MODEL": "1"})
        if result.returncode != 0:
            sys.exit(f"train_{task_of(row)}.py failed for {model}:\n{result.stderr[-3000:]}")
        with open(os.path.join(out, "metrics.jsonl")) as f:
            windows = [json.loads(line) for line in f if "train/samples_per_s" in line][1:]  # [0]: the warm-up
        with open(os.path.join(out, "results.json")) as f:
            results = json.load(f)

    def rate(key):  # equal windows: the harmonic mean of their rates is the rate over all of them
        return len(windows) / sum(1 / w[key] for w in windows)
    return {"project": {"samples_per_s": rate("train/samples_per_s"), "peak_memory_mb": results["peak_memory_mb"]},
            "limit": {"samples_per_s": rate("train/model_samples_per_s")}}


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "CPU")
    return f"{cpu}, {torch.get_num_threads()} threads"


def main():
    args = parse_args()
    if args.measure:
        print(json.dumps(measure(args)))
        return
    print(f"machine: {machine()}; torch {torch.__version__}; data: "
          f"{args.data_dir or f'synthetic ({args.synthetic_size} train images)'}; {args.samples_per_step} samples/step; "
          f"precision {args.mixed_precision}{'; compiled' if args.compile else ''}; best of {args.repeats}; "
          f"{' '.join(f'{k}={v}' for k, v in MALLOC_ENV.items())}", flush=True)
    header = (f"{'row':23} {'model':11} {'samples':>7} {'limit/s':>9} {'project/s':>9} {'tutorial/s':>10} "
              f"{'efficiency':>10} {'tut. eff':>8} {'speedup':>7}  peak MB project/tutorial")
    print(header, flush=True)
    rows, planned = [], len(args.models) * len(args.scripts)
    for model in args.models:
        for script in args.scripts:
            # A short run first: the speed the log windows are sized by (a quarter of --seconds each).
            expected = run_project(args, script, model, samples_per_s=1, seconds=4)["project"]["samples_per_s"]
            runs, tutorials = [], []
            for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits both alike
                runs.append(run_project(args, script, model, expected))
                tutorials.append(run_measurement(args, "tutorial", script, model))
            best = max(runs, key=lambda r: r["project"]["samples_per_s"])  # its limit: the same run's
            project, limit = best["project"], best["limit"]
            tutorial = max(tutorials, key=lambda r: r["samples_per_s"])
            row = {"script": script, "model": model, "samples_per_step": samples_per_step(args, script),
                   "limit": limit, "project": project, "tutorial": tutorial,
                   "efficiency": project["samples_per_s"] / limit["samples_per_s"],
                   "tutorial_efficiency": tutorial["samples_per_s"] / limit["samples_per_s"],
                   "speedup": project["samples_per_s"] / tutorial["samples_per_s"],
                   "efficiency_of_each_run": [r["project"]["samples_per_s"] / r["limit"]["samples_per_s"]
                                              for r in runs]}
            rows.append(row)
            print(f"{script:23} {model:11} {row['samples_per_step']:7} {limit['samples_per_s']:9.0f} "
                  f"{project['samples_per_s']:9.0f} {tutorial['samples_per_s']:10.0f} {row['efficiency']:10.2f} "
                  f"{row['tutorial_efficiency']:8.2f} {row['speedup']:6.1f}x  {project['peak_memory_mb']:.0f}/"
                  f"{tutorial['peak_memory_mb']:.0f}", flush=True)
            if args.json:  # after every row: a table stopped by a time limit keeps the rows it measured
                write_rows(args, rows, planned)
    print("samples = images through the network per step (rotation: 4 per image; siamese: 2 per pair; "
          f"rotation-tutorial-batch: {TUTORIAL_BATCH} images, 1 rotation each)")


def write_rows(args, rows: list, planned: int) -> None:
    """--json with the rows so far; complete once all `planned` are in. Replaced whole (a reader never sees half)."""
    files.write_json(args.json, {"machine": machine(), "args": vars(args), "rows": rows, "planned_rows": planned,
                                 "complete": len(rows) == planned})


if __name__ == "__main__":
    main()
