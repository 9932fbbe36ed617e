"""Image files as users have them, written for a test: a labelled ImageFolder and a folder of unlabeled images."""
import os

import numpy as np
from PIL import Image


def write_image_folder(tmp_path):
    """A tiny ImageFolder (train/ and test/, classes cat and dog) with every kind of file users have: RGB,
    grayscale, RGBA, palette, odd sizes; and a text file it must ignore. Returns tmp_path (conftest's image_folder)."""
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
