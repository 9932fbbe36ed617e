"""The installed package, as a new user meets it: the README's loading example runs from another directory (the
package imported as installed, not from this checkout's path), and the console scripts answer --help."""
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


def test_the_readmes_loading_example_runs_from_another_directory(tmp_path):
    torch.manual_seed(0)
    encoder = encoders.build_encoder("simple_cnn").eval()
    encoders.save_encoder(encoder, str(tmp_path / "final"))
    example = re.search(r"## Use an exported encoder\n.*?```python\n(.*?)```", README_TEXT, re.S).group(1)
    assert "from ssl_scripts." in example
    script = tmp_path / "example.py"
    script.write_text(example.replace("runs/quickstart/final", "final")
                      + "torch.save({'images': images, 'features': features}, 'features.pt')\n")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=outside_the_checkout(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{result.stderr[-3000:]}\n(is the package installed? pip install -e .)"
    saved = torch.load(tmp_path / "features.pt")
    with torch.no_grad():
        expected = encoder(saved["images"])
    assert saved["features"].shape == (8, encoder.feature_dim)
    torch.testing.assert_close(saved["features"], expected)  # the same weights, rebuilt from final/ alone



@pytest.mark.parametrize("script", SCRIPTS)
def test_the_console_scripts_answer_help(script):
    path = shutil.which(script)
    if path is None:
        pytest.fail(f"{script} is not on PATH: pip install -e . first")
    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage: "), result.stdout[:500]
    option = "--config_file" if script == "ssl-launch" else "--dataset"  # accelerate launch's own, or ours
    assert option in result.stdout, result.stdout[:500]


def test_the_package_declares_the_four_commands():
    assert SCRIPTS == ["ssl-train-rotation", "ssl-train-siamese", "ssl-evaluate", "ssl-launch"]
