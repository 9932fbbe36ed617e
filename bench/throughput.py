"""Throughput: the model's own limit, this project's training end to end, and the original tutorial's pipeline.

    python bench/throughput.py --data-dir ../shared/data/cifar10-jpeg   # real CIFAR-10 (ImageFolder copy)
    python bench/throughput.py --models simple_cnn                      # CIFAR-sized synthetic data

For each row (rotation, siamese, and rotation at the tutorial's own batch: 64 images, one rotation each) and model,
at the same samples per step (images through the network):
  limit    the project's own step without its data and bookkeeping: forward, loss, backward and optimizer step,
           over and over on one batch the script's augmentation made (kept hot in the caches), in a process set up
           as the script's (the same launch, allocator settings, threads, Accelerator, model, memory format and
           optimizer) and warmed up for as many steps as the script's first, untimed log window. Its steps are a
           subset of the script's, so efficiency is at most 1 but for noise, and says what the project adds;
  project  `python train_<script>.py ... --skip-eval`: the scripts' real code path (uint8 data on the device,
           batched augmentation, rotations or pairs, step, logging), timed over its steady-state log windows;
  tutorial the tutorial's RotatedCIFAR10 / SiameseCIFAR10 (per-image PIL, ToTensor, Normalize, rotate) in a
           DataLoader with no workers over in-memory CIFAR arrays (as torchvision's CIFAR10 holds them),
           feeding the same model the way the tutorial did (NCHW; siamese: one forward call per side of the pairs).
efficiency = project / limit, speedup = project / tutorial. Every measurement runs in a process of its own, so
its peak memory (GPU: allocated; CPU: resident) is its own.
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
sys.path.insert(0, REPO)
import train_rotation  # noqa: E402
import train_siamese  # noqa: E402
from common import augment, data, distributed, models, training  # noqa: E402
from common.losses import PAIR_LOSSES, contrastive_loss  # noqa: E402
from common.pairs import PairSampler  # noqa: E402

SCRIPTS = {"rotation": train_rotation, "siamese": train_siamese}


TUTORIAL_BATCH = 64  # the original tutorial's DataLoader batch: 64 images, one random rotation each


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="ImageFolder copy of CIFAR-10 (train/, test/); default: synthetic, 50k")
    p.add_argument("--synthetic-size", type=int, default=50000, help="train images of the synthetic data")
    p.add_argument("--scripts", nargs="+", default=["rotation", "siamese", "rotation-tutorial-batch"],
                   choices=("rotation", "siamese", "rotation-tutorial-batch"),
                   help=f"rotation-tutorial-batch: the tutorial's own batch, {TUTORIAL_BATCH} images with one "
                        f"rotation each (--rotations-per-image 1), whatever --samples-per-step says")
    p.add_argument("--models", nargs="+", default=["simple_cnn", "resnet18"], choices=tuple(models.MODELS))
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
    p.add_argument("--measure", choices=("limit", "tutorial"), help=argparse.SUPPRESS)  # one measurement, internal
    p.add_argument("--script", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--warmup-steps", type=int, default=None, help=argparse.SUPPRESS)
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
    script = SCRIPTS[task_of(row)]
    return script.parse_args(script_argv(args, row, model, output_dir))


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


def as_the_tutorial_ran_it(model: models.EncoderWithHead) -> models.EncoderWithHead:
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
def limit_setup(args, opts):
    """The script's own setup (Accelerator, data, model, optimizer) and one batch its augmentation made:
    (accelerator, model, optimizer, step), step() being the script's forward, loss, backward and update."""
    accelerator = training.make_accelerator(opts)  # as the script's: lock, checks, the seeding point
    dataset, train_images = data.load_data(opts, accelerator)
    encoder = models.build_encoder(opts.model, opts.image_size, *dataset.channel_stats())
    rotation = task_of(args.script) == "rotation"
    head = models.rotation_head(encoder) if rotation else models.projection_head(encoder, opts.embedding_dim)
    model = models.EncoderWithHead(encoder, head)
    model, optimizer = accelerator.prepare(model, training.make_optimizer(opts, model))
    indices = torch.arange(opts.batch_size, device=train_images.index_device)
    if rotation:
        inputs, labels = augment.rotate(augment.augment(train_images[indices], opts.augment),
                                        opts.rotations_per_image)

        def loss():
            return F.cross_entropy(model(inputs), labels)
    else:
        pairs = PairSampler(dataset.train_labels, opts.pairs, opts.positive_fraction, opts.seed,
                            dataset.classes).to(train_images.index_device)
        partners, similar = pairs(indices, 0)
        similar = similar.to(accelerator.device)
        views = augment.augment(torch.cat([train_images[indices], train_images[partners]]), opts.augment)

        def loss():
            return PAIR_LOSSES[opts.loss](*model(views).chunk(2), similar, opts.margin)

    def step():
        accelerator.backward(loss())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return accelerator, step


def tutorial_setup(args, opts):
    """The tutorial's pipeline feeding the same network computed the tutorial's way: (accelerator, step)."""
    from torchvision import transforms

    accelerator = distributed.make_accelerator(opts)
    dataset = data.load_dataset(opts)
    encoder = models.build_encoder(opts.model, opts.image_size, *dataset.channel_stats())
    rotation = task_of(args.script) == "rotation"
    head = models.rotation_head(encoder) if rotation else models.projection_head(encoder, opts.embedding_dim)
    model = as_the_tutorial_ran_it(models.EncoderWithHead(encoder, head))
    optimizer = training.make_optimizer(opts, model)
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
                loss = contrastive_loss(model(batch[0].to(dev)), model(batch[1].to(dev)), batch[2].to(dev), 1.0)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return accelerator, step


def measure(args) -> dict:
    """limit or tutorial for one (row, model): samples/s over >= args.seconds after a warm-up as long as the
    script's untimed first log window (args.seconds / 4), and peak memory."""
    with tempfile.TemporaryDirectory() as out:
        opts = script_args(args, args.script, args.model, out)
        accelerator, step = (limit_setup if args.measure == "limit" else tutorial_setup)(args, opts)

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
                "peak_memory_mb": training.peak_memory_mb()}


def measurement_env(args) -> dict:
    """Every measurement's process: the allocator settings and precision the script runs with."""
    return {**MALLOC_ENV, **os.environ, "ACCELERATE_MIXED_PRECISION": args.mixed_precision}


def run_measurement(args, kind: str, row: str, model: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--measure", kind, "--script", row, "--model", model,
               "--samples-per-step", str(args.samples_per_step), "--seconds", str(args.seconds),
               "--mixed-precision", args.mixed_precision, "--synthetic-size", str(args.synthetic_size),
               *(["--data-dir", args.data_dir] if args.data_dir else []),
               *(["--compile"] if args.compile else [])]
    result = subprocess.run(command, capture_output=True, text=True, env=measurement_env(args))
    if result.returncode != 0:
        sys.exit(f"{kind} measurement failed for {row}/{model}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_project(args, row: str, model: str, limit: dict) -> dict:
    """The real script, single process, no evaluation; samples/s over its log windows after the first."""
    expected_steps = args.seconds * limit["samples_per_s"] / samples_per_step(args, row)
    log_every = max(1, math.ceil(expected_steps / 4))
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, os.path.join(REPO, f"train_{task_of(row)}.py"),
                   *script_argv(args, row, model, out), "--max-steps", str(5 * log_every),
                   "--log-every", str(log_every), "--checkpoint-every", "1000000", "--skip-eval"]
        result = subprocess.run(command, capture_output=True, text=True, env=measurement_env(args))
        if result.returncode != 0:
            sys.exit(f"train_{task_of(row)}.py failed for {model}:\n{result.stderr[-3000:]}")
        with open(os.path.join(out, "metrics.jsonl")) as f:
            windows = [json.loads(line)["train/samples_per_s"] for line in f if "train/samples_per_s" in line]
        with open(os.path.join(out, "results.json")) as f:
            results = json.load(f)
    timed = windows[1:]  # the first window holds the warm-up
    return {"samples_per_s": len(timed) / sum(1 / w for w in timed),  # equal windows: harmonic mean
            "peak_memory_mb": results["peak_memory_mb"]}


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
    header = (f"{'row':23} {'model':11} {'samples':>7} {'limit/s':>9} {'project/s':>9} {'tutorial/s':>10} {'efficiency':>10} "
              f"{'tut. eff':>8} {'speedup':>7}  peak MB limit/project/tutorial")
    print(header, flush=True)
    rows = []
    for model in args.models:
        for script in args.scripts:
            best = {}
            for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits all three alike
                limit = run_measurement(args, "limit", script, model)
                for kind, result in (("limit", limit), ("project", run_project(args, script, model, limit)),
                                     ("tutorial", run_measurement(args, "tutorial", script, model))):
                    if result["samples_per_s"] > best.get(kind, {"samples_per_s": 0})["samples_per_s"]:
                        best[kind] = result
            limit, project, tutorial = best["limit"], best["project"], best["tutorial"]
            row = {"script": script, "model": model, "samples_per_step": samples_per_step(args, script),
                   "limit": limit, "project": project, "tutorial": tutorial,
                   "efficiency": project["samples_per_s"] / limit["samples_per_s"],
                   "tutorial_efficiency": tutorial["samples_per_s"] / limit["samples_per_s"],
                   "speedup": project["samples_per_s"] / tutorial["samples_per_s"]}
            rows.append(row)
            print(f"{script:23} {model:11} {row['samples_per_step']:7} {limit['samples_per_s']:9.0f} "
                  f"{project['samples_per_s']:9.0f} "
                  f"{tutorial['samples_per_s']:10.0f} {row['efficiency']:10.2f} {row['tutorial_efficiency']:8.2f} "
                  f"{row['speedup']:6.1f}x  {limit['peak_memory_mb']:.0f}/{project['peak_memory_mb']:.0f}/"
                  f"{tutorial['peak_memory_mb']:.0f}", flush=True)
    print("samples = images through the network per step (rotation: 4 per image; siamese: 2 per pair; "
          f"rotation-tutorial-batch: {TUTORIAL_BATCH} images, 1 rotation each)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
