import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

# A few seconds of training on the synthetic set: what the end-to-end tests run.
SMALL = ["--dataset", "synthetic", "--model", "simple_cnn", "--batch-size", "32", "--eval-batch-size", "256",
         "--probe-epochs", "5", "--report-to", "none"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


@pytest.fixture
def image_folder(tmp_path):
    """A tiny ImageFolder with every kind of file users have: RGB, grayscale, RGBA, palette, odd sizes."""
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


def run_script(args, cwd=REPO, timeout=600, env=None):
    """Runs a command line (e.g. accelerate launch ...) and returns the CompletedProcess."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def python_script(script, *args, env=None):
    """One process without the launcher: the quickest real run of a script."""
    return run_script([sys.executable, os.path.join(REPO, script), *map(str, args)], env=env)


def accelerate_command(script, *args, num_processes=1):
    return ["accelerate", "launch", "--config_file", os.path.join(REPO, "accelerate_configs", "cpu.yaml"),
            "--num_processes", str(num_processes), "--num_cpu_threads_per_process", "1",
            os.path.join(REPO, script), *map(str, args)]


def accelerate_launch(script, *args, num_processes=1, **kw):
    return run_script(accelerate_command(script, *args, num_processes=num_processes), **kw)


# Small runs with the default tracker (W&B, offline here): SMALL without its --report-to none.
TRACKED = [a for a in SMALL if a not in ("--report-to", "none")]


def wandb_runs(output_dir):
    """The offline W&B run folders a training wrote under OUTPUT_DIR/wandb, oldest first."""
    return sorted((output_dir / "wandb").glob("offline-run-*"))


def wandb_read(run_dir):
    """A run read back with wandb's own tool: (summary object of `leet inspect --summary`, history items)."""
    summary = subprocess.run(["wandb", "leet", "inspect", "--summary", "--json", str(run_dir)],
                             capture_output=True, text=True, check=True)
    records = subprocess.run(["wandb", "leet", "inspect", "--json", str(run_dir)],
                             capture_output=True, text=True, check=True)
    history = [json.loads(line)["history"]["item"] for line in records.stdout.splitlines()
               if '"type":"history"' in line]
    return json.loads(summary.stdout), history
