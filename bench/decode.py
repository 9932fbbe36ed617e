"""Decoding JPEGs far larger than --image-size: the full decode (before) vs ssl_scripts.models.image_input.decode_image (after).

    python -m bench.decode --data-dir data/cifar10-jpeg
    python -m bench.decode --data-dir data/cifar10-jpeg --images 500 --image-sizes 32,64,96,128,224

Generates --images ImageNet-sized JPEGs (500x375, quality 90) in a temporary folder from a CIFAR-10 ImageFolder
copy's train images (upscaled, classes in turn), then for each image size times, in this one process (images per
CPU second of the process, i.e. per core, so other work on the machine skews it less; best of --repeats passes,
interleaved):
  before  the full decode + ImageOps.fit, decode_image as it was before draft mode (full_decode below);
  after   ssl_scripts.models.image_input.decode_image, which decodes a JPEG this large scaled down first (draft mode);
and the mean absolute difference of their pixels in grey levels (0-255): over all images, and the worst image's.
"decoded at" is the size libjpeg decoded the 500x375 images at.
"""
import argparse
import datetime
import os
import platform
import shlex
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from ssl_scripts.models import image_input as decode

WIDTH, HEIGHT = 500, 375
TARGETS = {32: 2.0, 96: 1.4}  # the speedups the change was made for


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="a CIFAR-10 ImageFolder copy (train/<class>/*.jpg)")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--image-sizes", "--image-size", default="32,96,224", help="comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args()


def full_decode(path: str, size: int) -> np.ndarray:
    """The reference: decode_image before draft mode, the whole image decoded then fitted."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.load()
        if img.mode != "RGB":
            img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA", "LA") else img.convert("RGB")
        if img.size != (size, size):
            img = ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC)
        return np.asarray(img, dtype=np.uint8)


def generate(source: str, target: str, count: int) -> list:
    from PIL import Image

    by_class = [sorted(os.path.join(root, name) for name in names if name.endswith((".jpg", ".png")))
                for root, _, names in sorted(os.walk(os.path.join(source, "train")))]
    sources = [paths[i] for i in range(max(map(len, by_class))) for paths in by_class if i < len(paths)]
    if not sources:
        sys.exit(f"no train/<class>/*.jpg under {source!r}")
    paths = []
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as img:
            img = img.convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)
        paths.append(os.path.join(target, f"{i:05d}.jpg"))
        img.save(paths[-1], quality=90)
    return paths


def images_per_s(fn, paths: list, size: int) -> float:
    start = time.process_time()
    for path in paths:
        fn(path, size)
    return len(paths) / (time.process_time() - start)


def decoded_at(path: str, size: int) -> str:
    from PIL import Image

    with Image.open(path) as img:
        return "x".join(map(str, img.size)) if decode._draft(img, size) else "full"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or "CPU")
    return f"{cpu}, {os.cpu_count()} cores"


def main():
    args = parse_args()
    import PIL
    from PIL import features

    sizes = [int(s) for s in args.image_sizes.split(",")]
    print(f"    python -m bench.decode {shlex.join(sys.argv[1:])}\n")
    print(f"{datetime.date.today()}; {machine()}; Pillow {PIL.__version__}, libjpeg-turbo "
          f"{features.version('libjpeg_turbo')}; {args.images} JPEGs {WIDTH}x{HEIGHT} q90 from {args.data_dir}; "
          f"images per CPU second, best of {args.repeats}; draft gap {decode.DRAFT_GAP}\n", flush=True)
    print("| image size | decoded at | before img/s | after img/s | speedup | target | mean abs diff (worst image) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        paths = generate(args.data_dir, tmp, args.images)
        for size in sizes:
            before = after = 0.0
            for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits both alike
                before = max(before, images_per_s(full_decode, paths, size))
                after = max(after, images_per_s(decode.decode_image, paths, size))
            diffs = [np.abs(full_decode(p, size).astype(np.int16) - decode.decode_image(p, size)).mean()
                     for p in paths]
            target = f">= {TARGETS[size]}x" if size in TARGETS else ""
            print(f"| {size} | {decoded_at(paths[0], size)} | {before:.0f} | {after:.0f} | {after / before:.2f}x | "
                  f"{target} | {np.mean(diffs):.2f} ({max(diffs):.2f}) |", flush=True)


if __name__ == "__main__":
    main()
