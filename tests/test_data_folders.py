"""An image folder's layout, checked as it is scanned (ssl_scripts/data/folders.py)."""
import pytest

from ssl_scripts import UserError
from ssl_scripts.data.cache import load_imagefolder


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("no_train", "no train/ folder"),
    ("no_classes", "no class folders"),
    ("test_only_class", "have no train/ folder"),
])
def test_bad_layouts_say_what_to_do(tmp_path, image_folder, layout, message):
    from PIL import Image
    root = image_folder
    if layout == "missing":
        root = tmp_path / "nowhere"
    elif layout == "no_train":
        root = tmp_path / "flat"
        (root / "test" / "cat").mkdir(parents=True)
    elif layout == "no_classes":
        root = tmp_path / "loose"
        (root / "train").mkdir(parents=True)
        (root / "test").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / "train" / "loose.png")
    else:
        (image_folder / "test" / "bird").mkdir()
        Image.new("RGB", (8, 8)).save(image_folder / "test" / "bird" / "0.png")
    with pytest.raises(UserError, match=message):
        load_imagefolder(str(root), 16, str(tmp_path / "cache"))
