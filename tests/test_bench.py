"""bench/throughput.py runs all three measurements end to end and prints its table (tiny sizes: no figures are
checked here; speed targets are read from the benchmark's own output, see README "Throughput")."""
import json
import os
import subprocess
import sys

from conftest import REPO


def test_throughput_benchmark_prints_a_row_per_script(tmp_path):
    out = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, f"{REPO}/bench/throughput.py", "--models", "simple_cnn",
                             "--synthetic-size", "2048", "--samples-per-step", "32", "--seconds", "0.5",
                             "--repeats", "1", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["script"], r["model"]) for r in rows] == [("rotation", "simple_cnn"), ("siamese", "simple_cnn")]
    for row in rows:
        for kind in ("limit", "project", "tutorial"):
            assert row[kind]["samples_per_s"] > 0 and row[kind]["peak_memory_mb"] > 0
        assert row["efficiency"] == row["project"]["samples_per_s"] / row["limit"]["samples_per_s"]
    assert "rotation  simple_cnn" in result.stdout and "siamese   simple_cnn" in result.stdout


def test_rotnet_table_script_pretrains_then_prints_the_table(tmp_path, image_folder):
    # The whole script on a 12-image folder: pretraining (2 steps), evaluate.py on both networks, the timing line.
    out = tmp_path / "table"
    env = {**os.environ, "DATA_DIR": str(image_folder), "PROBE_EPOCHS": "2", "EPOCHS": "1",
           "PRETRAIN_ARGS": "--batch-size 4 --max-steps 2 --knn-k 3 --linear-probe-epochs 1"}
    result = subprocess.run(["bash", f"{REPO}/bench/rotnet_table.sh", str(out)], capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((out / "rotnet_table.json").read_text())
    assert report["model"] == "nin" and report["train_images"] == 12 and report["test_images"] == 6
    assert set(report["trained"]) == set(report["untrained"]) == {"block1", "block2", "block3", "block4"}
    assert json.loads((out / "pretrain" / "results.json").read_text())["steps"] == 2
    assert "| block1 | 24576 |" in result.stdout and "paper nonlinear" in result.stdout
    assert "pretrain: " in result.stdout and ", total: " in (out / "time.txt").read_text()


GPU_CHECK_STEPS = ["1a_rotation_bf16", "1b_siamese_fp16", "1c_rotation_fp16", "1d_siamese_bf16", "2_sigusr1_resume",
                   "3_deterministic_resume", "4_compile_resume", "5_evaluate", "6a_host_syncs_rotation",
                   "6b_host_syncs_siamese", "7_gpu_sh"]


def gpu_check(tmp_path, **env):
    out = tmp_path / "report"
    result = subprocess.run(["bash", f"{REPO}/bench/gpu_check.sh", str(out)], capture_output=True, text=True,
                            timeout=900, env={**os.environ, "DEVICE": "cpu", "WORK_DIR": str(tmp_path / "work"), **env})
    report = json.loads((out / "gpu_check.json").read_text())
    assert [step["id"] for step in report["steps"]] == GPU_CHECK_STEPS
    assert (out / "gpu_check.txt").read_text() in result.stdout  # the report is printed, and written
    return result, report, {step["id"]: step for step in report["steps"]}


def test_gpu_check_in_cpu_mode_passes_every_step_but_the_gpu_only_ones(tmp_path):
    # The GPU check's every step at its CPU size (about 2 minutes here): what can be checked before a GPU run.
    result, report, steps = gpu_check(tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    gpu_only = {"6a_host_syncs_rotation", "6b_host_syncs_siamese", "7_gpu_sh"}
    for name, step in steps.items():
        assert step["status"] == ("SKIPPED" if name in gpu_only else "PASS"), (name, step["detail"])
    assert report["device"] == "cpu" and report["fail"] == 0 and report["ok"]
    # GPU-only steps say why; the host-sync runs still ran the same command line on the CPU
    assert "no GPU" in steps["7_gpu_sh"]["detail"]
    for name in ("6a_host_syncs_rotation", "6b_host_syncs_siamese"):
        assert "GPU only" in steps[name]["detail"] and "host syncs: not counted" in steps[name]["detail"]
    # evaluation at start, after epoch 1 and at the end, with finite metrics
    for name in GPU_CHECK_STEPS[:4]:
        results = steps[name]["results"]
        assert len(results["eval_steps"]) == 3 and results["eval_steps"][0] == 0, (name, results)
    # the deterministic comparison really happened: a resumed run, every tensor of the step-12 weights equal
    deterministic = steps["3_deterministic_resume"]["results"]
    assert deterministic["equal"] is True and deterministic["compared_tensors"] > 0
    assert deterministic["resumed_at"] in (4, 8) and not deterministic["differing"]
    assert "stopped at step" in steps["2_sigusr1_resume"]["detail"]
    assert "resumed with --compile" in steps["4_compile_resume"]["detail"]
    assert steps["5_evaluate"]["results"]["world_size"] == 2


def test_gpu_check_reports_failing_steps_and_goes_on(tmp_path):
    # An `accelerate` that always fails: every step still runs, fails with its log's errors in the report, and
    # the exit status says so.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "accelerate").write_text("#!/bin/sh\necho 'RuntimeError: injected launcher failure' >&2\nexit 1\n")
    (bin_dir / "accelerate").chmod(0o755)
    result, report, steps = gpu_check(tmp_path, PATH=f"{bin_dir}:{os.environ['PATH']}")
    assert result.returncode != 0
    assert [s["status"] for s in report["steps"]] == ["FAIL"] * 10 + ["SKIPPED"]
    assert report["fail"] == 10 and not report["ok"]
    assert result.stdout.count("error> RuntimeError: injected launcher failure") == 10
    assert "FAILED: the run failed (exit 1)" in steps["1a_rotation_bf16"]["detail"]


def test_data_scale_benchmark_prints_a_row_per_placement(tmp_path, image_folder):
    out = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, f"{REPO}/bench/data_scale.py", "--data-dir", str(image_folder),
                             "--work-dir", str(tmp_path / "work"), "--sizes", "64", "--test-images", "16",
                             "--image-size", "32", "--batch-size", "16", "--steps", "2", "--placements",
                             "device,stream", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["train_images"], r["placement"]) for r in rows] == [(64, "device"), (64, "stream")]
    for row in rows:
        assert row["pss_mb"] > 0 and row["images_s"] > 0 and row["decode_s"] > 0
    assert rows[0]["vs_device"] == 1 and rows[1]["vs_device"] == rows[1]["images_s"] / rows[0]["images_s"]
    assert "| 64 | stream | 0 |" in result.stdout  # 80 images at 32 px: 0.2 MiB decoded
    generated = tmp_path / "work" / "folder-64-32"
    assert sum(1 for _ in (generated / "train").rglob("*.jpg")) == 64
