"""pytest's fixtures and hooks for every test (what tests import lives in tests/helpers/)."""
import os
import subprocess

import pytest

from helpers import REQUIRE_SMALL_DISK, SmallDisk, required_by, subprocess_pythonpath, write_image_folder

# The tests' subprocesses (launched probes, generated scripts, accelerate's workers) import the project and the
# helpers as pytest does (pyproject.toml's pythonpath).
os.environ["PYTHONPATH"] = subprocess_pythonpath()


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
    return write_image_folder(tmp_path)


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
