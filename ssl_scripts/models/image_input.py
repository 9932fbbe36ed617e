"""What every encoder takes, made from one image: training's decode of an image file or a PIL image into square
uint8 RGB pixels (decode_image). ssl_scripts/data/ decodes whole datasets with it; Encoder.transform one image."""
import math
import os
import time

import numpy as np

# Seconds added to every image's decode, for the checks and bench/data_scale.py (a slow file system, or a decode
# as costly as a GPU step); 0 in normal use.
DECODE_DELAY_S = float(os.environ.get("SSL_SCRIPTS_DECODE_DELAY", "0") or 0)
# A JPEG far larger than the target is decoded scaled down by libjpeg (DCT scaling by 1/2, 1/4 or 1/8, a fraction
# of the full decode's work), its shorter side kept at least DRAFT_GAP times the target, like Image.thumbnail's
# reducing_gap. The scaled decode blurs like a box filter; the bicubic resize that follows hides it while it still
# shrinks the image well, but closer to the target the difference to the full decode grows fast. 1.5 still lets a
# 500x375 image decode at half size for 96 px (2 would not). torchvision.io.decode_jpeg gives the full decode's
# pixels, but cannot scale.
DRAFT_GAP = 1.5
# Names the pixels decode_image gives, in the name of every cache it fills: a cache of another decoder's pixels is
# decoded again, so a cached split and a streamed one never differ.
DECODER = f"pil-draft-{DRAFT_GAP}"


def _draft(img, size: int):
    """Asks an opened, not yet loaded JPEG for the smallest scaled decode that keeps its shorter side at least
    DRAFT_GAP * size. Returns the original's extent in the scaled image's pixels, or None (not a JPEG, too small)."""
    request = math.ceil(DRAFT_GAP * size)
    if min(img.size) < 2 * request:
        return None
    # PIL picks the largest scale 1/2^k that keeps both sides >= the request: a square request bounds the shorter.
    drafted = img.draft("RGB", (request, request))  # None for formats without draft mode
    return drafted[1][2:] if drafted else None


def decode_image(image, size: int) -> np.ndarray:
    """Any PIL-readable image file (a path), or a PIL image -> (size, size, 3) uint8: converted to RGB, shorter side
    resized, center-cropped (ImageOps.fit); a JPEG file far larger than size is decoded scaled down first (_draft).
    A PIL image is taken as it is (the caller's object is not changed), so a large JPEG given opened rather than by
    its path skips that scaled decode: pixels within a few levels of training's."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return _fit(image, size, None)
    if DECODE_DELAY_S:
        time.sleep(DECODE_DELAY_S)
    with Image.open(image) as img:
        extent = _draft(img, size)
        img.load()
        return _fit(img, size, extent)


def _fit(img, size: int, extent) -> np.ndarray:
    """decode_image's RGB conversion, resize and crop of a loaded image (extent: _draft's, or None)."""
    from PIL import Image, ImageOps

    if img.mode != "RGB":
        # Palette and alpha images go through RGBA so transparency becomes its colour, not garbage.
        img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA", "LA") else img.convert("RGB")
    if extent:
        # ImageOps.fit's centre crop, taken on the original's extent: libjpeg rounds the scaled size up
        # (500 / 8 -> 63), so fitting the scaled image itself would shift and stretch the crop.
        w, h = extent
        m = min(w, h)
        box = ((w - m) / 2, (h - m) / 2, (w + m) / 2, (h + m) / 2)
        img = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
    elif img.size != (size, size):
        img = ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)
