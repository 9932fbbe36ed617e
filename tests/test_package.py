"""The installed package, as a new user meets it: the README's loading example runs from another directory (the
package imported as installed, not from this checkout's path), and the console scripts answer --help."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from ssl_scripts.models import encoders

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_TEXT = open(os.path.join(REPO, "README.md")).read()
SCRIPTS = re.findall(r"^(ssl-[a-z-]+) = ", open(os.path.join(REPO, "pyproject.toml")).read(), re.M)


def outside_the_checkout() -> dict:
    """The environment without the tests' PYTHONPATH (conftest puts this checkout on it): imports resolve to the
    installed package."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def readme_example(number: int) -> str:
    """The README's number-th Python block under "Use an exported encoder"."""
    section = re.search(r"## Use an exported encoder\n(.*?)\n## ", README_TEXT, re.S).group(1)
    return re.findall(r"```python\n(.*?)```", section, re.S)[number]


def test_the_readmes_loading_example_runs_from_another_directory(tmp_path):
    from PIL import Image
    torch.manual_seed(0)
    encoder = encoders.build_encoder("simple_cnn").eval()
    encoders.save_encoder(encoder, str(tmp_path / "final"))
    Image.fromarray(torch.randint(0, 256, (300, 400, 3), dtype=torch.uint8).numpy()).save(tmp_path / "cat.jpg")
    Image.fromarray(torch.randint(0, 256, (40, 32), dtype=torch.uint8).numpy(), "L").save(tmp_path / "dog.png")
    example = readme_example(0)
    assert "from ssl_scripts." in example and "encoder.transform(" in example
    script = tmp_path / "example.py"
    script.write_text(example.replace("runs/quickstart/final", "final")
                      + "torch.save({'images': images, 'features': features}, 'features.pt')\n")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=outside_the_checkout(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{result.stderr[-3000:]}\n(is the package installed? pip install -e .)"
    saved = torch.load(tmp_path / "features.pt")
    expected_images = torch.stack([encoder.transform(str(tmp_path / name)) for name in ("cat.jpg", "dog.png")])
    assert saved["images"].shape == (2, 3, 32, 32) and torch.equal(saved["images"], expected_images)
    with torch.no_grad():
        expected = encoder(expected_images)
    torch.testing.assert_close(saved["features"], expected)  # the same weights, rebuilt from final/ alone


# Runs with no import of this project: its folder off sys.path and any import of it refused.
WITHOUT_THE_PROJECT = """import sys
sys.path = [p for p in sys.path if not p.startswith({repo!r})]
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ssl_scripts":
            raise ImportError("this script must not import the project")
sys.meta_path.insert(0, Refuse())
"""


def torchvision_only(tmp_path, script: str):
    """Runs script in a fresh interpreter that cannot import this project (python -I: no PYTHONPATH either)."""
    path = tmp_path / "torchvision_only.py"
    path.write_text(WITHOUT_THE_PROJECT.format(repo=REPO) + script
                    + "\nassert not any(m.startswith('ssl_scripts') for m in sys.modules)\n")
    result = subprocess.run([sys.executable, "-I", str(path)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def trained_looking(model: str, image_size: int, directory):
    """An exported encoder whose weights and batch-norm statistics are not torchvision's initial ones."""
    torch.manual_seed(0)
    encoder = encoders.build_encoder(model, image_size, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    encoder(torch.rand(4, 3, image_size, image_size))  # batch-norm running statistics move
    encoder.eval()
    encoders.save_encoder(encoder, str(directory))
    return encoder


@pytest.mark.slow  # a fresh interpreter importing torch and torchvision: about 10 s
def test_the_readmes_torchvision_example_loads_a_resnet18_without_the_project(tmp_path):
    encoder = trained_looking("resnet18", 32, tmp_path / "final")
    example = readme_example(1).replace("runs/resnet18/final", "final")
    assert "import ssl_scripts" not in example and "from ssl_scripts" not in example
    torchvision_only(tmp_path, example + "torch.save({'images': images, 'features': features}, 'features.pt')\n")
    saved = torch.load(tmp_path / "features.pt")
    with torch.no_grad():
        torch.testing.assert_close(saved["features"], encoders.load_encoder(str(tmp_path / "final"))(saved["images"]),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # a fresh interpreter importing torch and torchvision each: about 10 s
@pytest.mark.parametrize("model, image_size, stem", [("resnet18", 32, "cifar"), ("resnet18", 96, "imagenet"),
                                                     ("resnet50", 32, "cifar"), ("resnet50", 96, "imagenet"),
                                                     ("torchvision:efficientnet_b0", 32, "cifar")])
def test_an_export_loads_into_torchvision_alone_with_the_lines_its_config_gives(tmp_path, model, image_size, stem):
    """config.json's "torchvision" lines rebuild the network; its weights load strictly (every key but the
    classifier's, which the lines replace) and give load_encoder's features."""
    encoder = trained_looking(model, image_size, tmp_path / "final")
    assert encoder.stem == stem
    script = "\n".join([
        "import json, torch, torchvision",
        "from safetensors.torch import load_file",
        "config = json.load(open('final/config.json'))",
        *json.loads((tmp_path / "final" / "config.json").read_text())["torchvision"]["build"],
        "model.load_state_dict(load_file('final/' + config['torchvision']['weights']), strict=True)",
        "images = torch.rand(3, 3, config['image_size'], config['image_size'])",
        "normalize = torchvision.transforms.Normalize(config['mean'], config['std'])",
        "with torch.no_grad():",
        "    features = model.eval()(normalize(images))",
        "torch.save({'images': images, 'features': features}, 'features.pt')"])
    torchvision_only(tmp_path, script)
    saved = torch.load(tmp_path / "features.pt")
    with torch.no_grad():
        ours = encoders.load_encoder(str(tmp_path / "final"))(saved["images"])
    assert saved["features"].shape == (3, encoder.feature_dim)
    torch.testing.assert_close(saved["features"], ours, rtol=1e-4, atol=1e-5)


def test_a_network_torchvision_lacks_gets_no_torchvision_file(tmp_path):
    encoders.save_encoder(encoders.build_encoder("nin"), str(tmp_path / "final"))
    assert sorted(os.listdir(tmp_path / "final")) == ["config.json", "encoder.safetensors"]
    assert "torchvision" not in json.loads((tmp_path / "final" / "config.json").read_text())


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_console_scripts_answer_help(script):
    path = shutil.which(script)
    if path is None:
        pytest.fail(f"{script} is not on PATH: pip install -e . first")
    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage: "), result.stdout[:500]
    # accelerate launch's own, or ours
    option = {"ssl-launch": "--config_file", "ssl-embed": "--data-dir"}.get(script, "--dataset")
    assert option in result.stdout, result.stdout[:500]


def test_the_package_declares_the_five_commands():
    assert SCRIPTS == ["ssl-train-rotation", "ssl-train-siamese", "ssl-evaluate", "ssl-embed", "ssl-launch"]
