"""train_rotation.py run for real through `accelerate launch` (CPU, gloo for two processes)."""
import json
import os
import subprocess
import time

import pytest
import torch

from ssl_scripts.models.encoders import load_encoder
from helpers import (REPO, SMALL, TRACKED, accelerate_command, accelerate_launch, run_script, wandb_read,
                      wandb_runs)

pytestmark = pytest.mark.e2e


def test_two_processes_train_evaluate_and_export(tmp_path):
    out = tmp_path / "r2"
    result = accelerate_launch("train_rotation.py", *TRACKED, "--max-steps", "12", "--eval-at-start",
                               "--output-dir", out, num_processes=2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] == 12
    for key in ("eval/rotation_acc", "eval/knn_acc", "eval/linear_probe_acc"):
        assert 0 <= results[key] <= 1 and 0 <= results[f"{key}_init"] <= 1
    assert results["eval/rotation_acc"] > results["eval/rotation_acc_init"] + 0.2  # the pretext was learned
    # 12 steps x 32 images x 2 processes, each image seen in its 4 rotations
    assert results["samples_per_s"] == pytest_approx(4 * results["images_per_s"])
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "train/loss" in line] == [10, 12]
    encoder = load_encoder(str(out / "final"))
    assert encoder(torch.rand(2, 3, 32, 32)).shape == (2, 4096)

    # W&B (offline): one run for the two processes, read back with wandb's own tool
    runs = wandb_runs(out)
    assert len(runs) == 1 and not (tmp_path / "wandb").exists()
    summary, history = wandb_read(runs[0])
    assert summary["run_id"] == (out / "wandb_run_id").read_text().strip() and summary["state"] == "finished"
    config = summary["config"]
    assert config["world_size"] == 2 and config["batch_size"] == 32 and config["model"] == "simple_cnn"
    assert len(config["git_commit"]) == 40 and config["torch"] == torch.__version__ and config["hostname"]
    train = [item for item in history if "train/loss" in item]
    assert [item["_step"] for item in train] == [10, 12]
    for key in ("train/lr", "train/samples_per_s", "train/epoch", "train/grad_norm"):
        assert all(key in item for item in train)
    assert any("train/epoch_time_s" in item for item in history)
    for key in ("eval/rotation_acc", "eval/knn_acc_init", "samples_per_s", "steps"):
        assert summary["summary"][key] == pytest_approx(results[key])
    for key in ("eval/rotation_examples", "eval/rotation_confusion", "eval/rotation_confusion_init"):
        assert summary["summary"][key]["_type"] == "image-file"
        assert (runs[0] / "files" / summary["summary"][key]["path"]).stat().st_size > 1000


def pytest_approx(x):
    import pytest
    return pytest.approx(x, rel=1e-6)


def test_sigkill_mid_epoch_then_the_same_command_resumes_from_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    command = accelerate_command("train_rotation.py", *SMALL, "--max-steps", "40", "--checkpoint-every", "3",
                                 "--output-dir", out)
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "WANDB_MODE": "offline"})
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step_00000006").exists() and time.time() < deadline:
        time.sleep(0.05)
    # Every process of the launch: torchrun starts its workers in sessions of their own, so killing the
    # launcher's process group would leave the worker training on.
    subprocess.run(["pkill", "-KILL", "-f", str(out)])
    process.wait()
    time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", str(out)], capture_output=True).stdout == b""
    saved = [int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*")]
    assert saved and max(saved) < 40 and not (out / "results.json").exists()

    again = run_script(command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at step {max(saved)} " in again.stdout  # resumed from the newest checkpoint, not from zero
    assert json.loads((out / "results.json").read_text())["steps"] == 40


def test_user_errors_are_one_line_and_leave_output_alone(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("keep me")
    result = accelerate_launch("train_rotation.py", "--dataset", "imagefolder", "--data-dir", tmp_path / "none",
                               "--output-dir", out, "--report-to", "none")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not exist" in errors[0] and "--data-dir" in errors[0]
    assert "Traceback" not in result.stderr.split("error:")[0]  # our own message comes with no traceback
    assert os.listdir(out) == ["results.json"]
    assert (out / "results.json").read_text() == "keep me"


def test_default_tracker_is_wandb_offline_without_credentials(tmp_path):
    out = tmp_path / "w"
    env = {"WANDB_API_KEY": "", "HOME": str(tmp_path)}  # no credentials anywhere
    result = accelerate_launch("train_rotation.py", *[a for a in SMALL if a not in ("--report-to", "none")],
                               "--max-steps", "4", "--output-dir", out, env={**env, "WANDB_MODE": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "W&B is offline" in result.stdout and "wandb sync" in result.stdout
    run_id = (out / "wandb_run_id").read_text().strip()
    runs = list((out / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1 and (runs[0] / f"run-{run_id}.wandb").exists()
    # The same command again: the run is finished, so nothing is evaluated again and no W&B run folder is added
    again = accelerate_launch("train_rotation.py", *[a for a in SMALL if a not in ("--report-to", "none")],
                              "--max-steps", "4", "--output-dir", out, env={**env, "WANDB_MODE": ""})
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{out} holds a finished run (4 steps): its results are in {out / 'results.json'}" in again.stdout
    assert "done:" not in again.stdout and len(list((out / "wandb").glob("offline-run-*"))) == 1
    # A larger --max-steps trains on from the last checkpoint
    longer = accelerate_launch("train_rotation.py", *SMALL, "--max-steps", "6", "--skip-eval", "--output-dir", out)
    assert longer.returncode == 0 and "done: 6 steps" in longer.stdout, longer.stderr[-3000:]


def test_skipped_unreadable_images_are_counted_in_the_log_and_results(image_folder, tmp_path):
    from helpers import python_script
    (image_folder / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    out = tmp_path / "out"
    result = python_script("train_rotation.py", "--dataset", "imagefolder", "--data-dir", image_folder, "--image-size",
                           "16", "--cache-dir", tmp_path / "cache", "--model", "simple_cnn", "--batch-size", "4",
                           "--knn-k", "3", "--report-to", "none", "--max-steps", "2", "--skip-eval",
                           "--skip-bad-images", "--output-dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: 1 unreadable image file(s) of" in result.stdout
    assert json.loads((out / "results.json").read_text())["skipped_images"] == 1
