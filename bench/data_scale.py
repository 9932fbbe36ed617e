"""Data placement at scale: memory, decode time and throughput of each --data-placement on image folders that grow.

    python bench/data_scale.py --data-dir ../cifar10-jpeg            # 25k and 100k JPEGs at 64 px, 2 processes
    python bench/data_scale.py --data-dir ../cifar10-jpeg --sizes 5000 --steps 20 --repo ../old-checkout
    python bench/data_scale.py --data-dir ../cifar10-jpeg --sizes 5000 --placements device,stream --decode-delay 0.001

Generates each image folder once (under --work-dir, never in the repository) from a CIFAR-10 ImageFolder copy:
its train images upscaled to --image-size and re-encoded as JPEG (mirrored on a second pass through the set, so
every file differs), plus a test split of --test-images. Then per size and placement, `accelerate launch` of
train_rotation.py with simple_cnn on --processes CPU processes:
  first start the first start on an empty cache: launch, scan, decode, write the cache (seconds to the line
              before the first step), and the peak summed PSS of that run (the decode's peak included);
  pss_mb      peak over the run of the summed PSS of the training processes (smaps_rollup: pages shared by
              processes, the mapped cache, count once in all), on the second, cached start;
  data_mb     pss_mb less the same run's on a folder of --test-images train images: the memory the data takes;
  data/decoded  data_mb over the decoded dataset's size (train + test, uint8): 1.0 is one copy per node;
  images_s    training throughput (results.json images_per_s), and vs_device, its ratio to the device placement's.
--repo measures another checkout (e.g. before a change) with the same folders. --decode-delay adds that many
seconds to every image's decode (SSL_SCRIPTS_DECODE_DELAY): a decode as costly as a training step (a GPU's, a slow
file system's), without taking the CPUs the training runs on here.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="a CIFAR-10 ImageFolder copy (train/<class>/*.jpg)")
    p.add_argument("--work-dir", default="/tmp/ssl-data-scale", help="generated folders and runs (kept)")
    p.add_argument("--sizes", default="25000,100000", help="train images of each generated folder")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--placements", default="device,host,stream",
                   help="comma-separated; '-' runs without --data-placement (a checkout before it, with --repo)")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=256, help="the global batch")
    p.add_argument("--test-images", type=int, default=1000, help="of every generated folder, and the baseline's train")
    p.add_argument("--repo", default=REPO, help="the checkout whose train_rotation.py is measured")
    p.add_argument("--decode-delay", type=float, default=0.0, help="seconds added to every image's decode")
    p.add_argument("--json", help="also write the rows here")
    return p.parse_args()


def generate(source: str, target: str, train: int, test: int, size: int) -> None:
    """train + test JPEGs at size px from the source's train split, written once (a marker file says done)."""
    from PIL import Image, ImageOps
    if os.path.exists(os.path.join(target, ".complete")):
        return
    by_class = [sorted(os.path.join(root, name) for name in names if name.endswith((".jpg", ".png")))
                for root, _, names in sorted(os.walk(os.path.join(source, "train")))]
    # Classes taken in turn, so that any number of images holds every class, in the test split too.
    sources = [paths[i] for i in range(max(map(len, by_class))) for paths in by_class if i < len(paths)]
    print(f"generating {train} + {test} JPEGs at {size} px in {target}", flush=True)
    for split, count, offset in (("train", train, 0), ("test", test, train)):
        for i in range(count):
            k = (offset + i) % len(sources)
            label = os.path.basename(os.path.dirname(sources[k]))
            folder = os.path.join(target, split, label)
            os.makedirs(folder, exist_ok=True)
            with Image.open(sources[k]) as img:
                img = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
                if ((offset + i) // len(sources)) % 2:
                    img = ImageOps.mirror(img)
                img.save(os.path.join(folder, f"{i:07d}.jpg"), quality=90)
    open(os.path.join(target, ".complete"), "w").close()


def pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


def descendants(pid: int) -> list:
    children = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children += [int(c) for c in f.read().split()]
    except OSError:
        return []
    return children + [d for c in children for d in descendants(c)]


def training_pids(root: int) -> list:
    """The processes that run train_rotation.py, and the decoding workers they fork (same command line); not the
    launcher."""
    pids = []
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/cmdline") as f:
                command = f.read().split("\0")
        except OSError:
            continue
        launcher = any(os.path.basename(part) == "accelerate" for part in command)
        if any(part.endswith("train_rotation.py") for part in command) and not launcher:
            pids.append(pid)
    return pids


def run(args, folder: str, cache: str, placement: str, out: str) -> dict:
    """One training run: its wall time to the first logged step, peak summed PSS and results.json."""
    command = ["accelerate", "launch", "--config_file", os.path.join(args.repo, "accelerate_configs", "cpu.yaml"),
               "--num_processes", str(args.processes), "--num_cpu_threads_per_process", "1",
               os.path.join(args.repo, "train_rotation.py"), "--dataset", "imagefolder", "--data-dir", folder,
               "--cache-dir", cache, "--image-size", str(args.image_size), "--model", "simple_cnn",
               "--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--log-every", "10",
               "--skip-eval", "--knn-k", "1", "--report-to", "none", "--output-dir", out, "--resume", "never"]
    if placement != "-":
        command += ["--data-placement", placement]
    start = time.time()
    env = {**os.environ, "SSL_SCRIPTS_DECODE_DELAY": str(args.decode_delay)}
    process = subprocess.Popen(command, cwd=args.repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env)
    peak, first_step = [0], [None]

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], sum(pss_bytes(pid) for pid in training_pids(process.pid)))
            time.sleep(0.1)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log = []
    for line in process.stdout:
        log.append(line)
        if first_step[0] is None and "global batch" in line:
            first_step[0] = time.time() - start
    process.wait()
    sampler.join()
    if process.returncode:
        sys.exit(f"run failed ({' '.join(command)}):\n{''.join(log[-30:])}")
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    return {"start_s": first_step[0], "pss_bytes": peak[0], "images_s": results["images_per_s"]}


def main():
    args = parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    placements = args.placements.split(",")
    baseline_folder = os.path.join(args.work_dir, f"folder-{args.test_images}-{args.image_size}")
    generate(args.data_dir, baseline_folder, args.test_images, args.test_images, args.image_size)
    rows, baselines = [], {}
    for train in map(int, args.sizes.split(",")):
        folder = os.path.join(args.work_dir, f"folder-{train}-{args.image_size}")
        generate(args.data_dir, folder, train, args.test_images, args.image_size)
        decoded = (train + args.test_images) * 3 * args.image_size ** 2
        device_rate = None
        for placement in placements:
            tag = f"{os.path.basename(os.path.abspath(args.repo))}-{train}-{placement}"
            cache = os.path.join(args.work_dir, f"cache-{tag}")
            subprocess.run(["rm", "-rf", cache, os.path.join(args.work_dir, f"runs-{tag}")])
            runs = os.path.join(args.work_dir, f"runs-{tag}")
            cold = run(args, folder, cache, placement, os.path.join(runs, "cold"))
            warm = run(args, folder, cache, placement, os.path.join(runs, "warm"))
            if placement not in baselines:  # the same for every size; its second start, on a warm cache
                run(args, baseline_folder, cache, placement, os.path.join(runs, "base-cold"))
                baselines[placement] = run(args, baseline_folder, cache, placement, os.path.join(runs, "base"))
            base = baselines[placement]
            data_bytes = warm["pss_bytes"] - base["pss_bytes"]
            device_rate = device_rate or (warm["images_s"] if placement in ("device", "-") else None)
            row = {"train_images": train, "placement": placement, "decoded_mb": decoded / 2 ** 20,
                   "decode_s": cold["start_s"], "decode_pss_mb": cold["pss_bytes"] / 2 ** 20,
                   "start_cached_s": warm["start_s"],
                   "pss_mb": warm["pss_bytes"] / 2 ** 20, "data_mb": data_bytes / 2 ** 20,
                   "data_over_decoded": data_bytes / decoded, "images_s": warm["images_s"],
                   "vs_device": warm["images_s"] / device_rate if device_rate else None}
            rows.append(row)
            print(json.dumps(row), flush=True)
    delay = f", decode +{args.decode_delay * 1000:g} ms per image" if args.decode_delay else ""
    print(f"\n{args.processes} processes, simple_cnn, {args.image_size} px, {args.steps} steps{delay}; "
          f"repo {args.repo}")
    print("| train images | placement | decoded MiB | first start s | PSS then MiB | cached start s | PSS MiB | "
          "data MiB | data / decoded | images/s | vs device |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        vs = f"{r['vs_device']:.2f}" if r["vs_device"] else "-"
        print(f"| {r['train_images']} | {r['placement']} | {r['decoded_mb']:.0f} | {r['decode_s']:.1f} | "
              f"{r['decode_pss_mb']:.0f} | {r['start_cached_s']:.1f} | {r['pss_mb']:.0f} | {r['data_mb']:.0f} | "
              f"{r['data_over_decoded']:.2f} | {r['images_s']:.0f} | {vs} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
