"""bench/throughput.py runs all three measurements end to end and prints its table (tiny sizes: no figures are
checked here; speed targets are read from the benchmark's own output, see docs/results.md, "Throughput")."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO

pytestmark = pytest.mark.e2e


def test_throughput_benchmark_prints_a_row_per_script(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.Popen([sys.executable, "-m", "bench.throughput", "--models", "simple_cnn",
                             "--synthetic-size", "2048", "--samples-per-step", "32", "--seconds", "0.5",
                             "--repeats", "1", "--json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    # --json is rewritten as each row ends: a table killed half-way still holds the rows it measured
    while not out.exists() and proc.poll() is None:
        time.sleep(0.05)
    first = json.loads(out.read_text())
    stdout, stderr = proc.communicate(timeout=600)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(r["script"], r["model"]) for r in first["rows"]] == [("rotation", "simple_cnn")] and not first["complete"]
    report = json.loads(out.read_text())
    assert report["complete"] and report["planned_rows"] == 3
    rows = report["rows"]
    assert rows[0] == first["rows"][0]
    assert [(r["script"], r["model"], r["samples_per_step"]) for r in rows] == [
        ("rotation", "simple_cnn", 32), ("siamese", "simple_cnn", 32), ("rotation-tutorial-batch", "simple_cnn", 64)]
    for row in rows:
        for kind in ("project", "tutorial"):
            assert row[kind]["samples_per_s"] > 0 and row[kind]["peak_memory_mb"] > 0
        assert row["efficiency"] == row["project"]["samples_per_s"] / row["limit"]["samples_per_s"]
        assert 0 < row["efficiency"] <= 1  # the limit is the same run's model time: by construction
    for row in ("rotation ", "siamese ", "rotation-tutorial-batch "):
        assert f"{row:24}simple_cnn" in result.stdout


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


GPU_CHECK_STEPS = ["1a_rotation_bf16", "1b_siamese_fp16", "1c_rotation_fp16", "1d_siamese_bf16", "1e_siamese_ntxent",
                   "1f_rotation_sync_bn", "1g_siamese_family", "1h_backbones", "2_sigusr1_resume", "3_deterministic_resume",
                   "4_compile_resume", "5_evaluate", "6a_host_syncs_rotation", "6b_host_syncs_siamese",
                   "6c_placement_host", "6d_placement_stream", "7_gpu_sh"]
HOST_SYNCS = {"6a_host_syncs_rotation", "6b_host_syncs_siamese", "6c_placement_host", "6d_placement_stream"}
# GPU only, and nothing run on the CPU: what the step says there
NOT_RUN_ON_CPU = {"1f_rotation_sync_bn": "GPU only: SyncBatchNorm needs CUDA",
                  "7_gpu_sh": "no GPU: bench/gpu.sh measures GPU throughput"}
FP16 = {"1b_siamese_fp16": "1d", "1c_rotation_fp16": "1a"}  # GPU only too: on the CPU they would be these again
SKIPPED_ON_CPU = HOST_SYNCS | set(NOT_RUN_ON_CPU) | set(FP16)


def gpu_check(tmp_path, **env):
    out = tmp_path / "report"
    # Step limits and the budget x4: on a shared 2-core machine they bound a hang, they are not what is tested.
    result = subprocess.run(["bash", f"{REPO}/bench/gpu_check.sh", str(out)], capture_output=True, text=True,
                            timeout=3000, env=gpu_check_env(tmp_path, **env))
    report = json.loads((out / "gpu_check.json").read_text())
    assert [step["id"] for step in report["steps"]] == GPU_CHECK_STEPS
    assert (out / "gpu_check.txt").read_text() in result.stdout  # the report is printed, and written
    return result, report, {step["id"]: step for step in report["steps"]}


def gpu_check_env(tmp_path, **env):
    return {**os.environ, "DEVICE": "cpu", "WORK_DIR": str(tmp_path / "work"), "STEP_LIMIT_SCALE": "4",
            "BUDGET_S": "2400", **env}


def test_gpu_check_in_cpu_mode_passes_every_step_but_the_gpu_only_ones(tmp_path):
    # The GPU check's every step at its CPU size (2-5 minutes here): what can be checked before a GPU run.
    result, report, steps = gpu_check(tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    for name, step in steps.items():
        assert step["status"] == ("SKIPPED" if name in SKIPPED_ON_CPU else "PASS"), (name, step["detail"])
    assert report["device"] == "cpu" and report["fail"] == 0 and report["ok"] and report["finished"]
    logs = tmp_path / "report" / "logs"
    # fp16 steps say why they did not run (they used to PASS here with fp16 off), and ran nothing
    for name, same in FP16.items():
        assert steps[name]["detail"] == f"fp16 needs a GPU (on the CPU it would be step {same}'s run again, without " \
            "mixed precision)" and "accelerate launch" not in (logs / f"{name}.log").read_text()
        assert steps[name]["title"].split(", ")[1] == "fp16"
    assert [steps[name]["title"].split(", ")[1] for name in ("1a_rotation_bf16", "1d_siamese_bf16")] == ["no", "no"]
    # GPU-only steps say why; the host-sync runs still ran the same command line on the CPU, to its end
    for name, why in NOT_RUN_ON_CPU.items():
        assert steps[name]["detail"] == why and "accelerate launch" not in (logs / f"{name}.log").read_text()
    for name in HOST_SYNCS:
        detail = steps[name]["detail"]
        assert "GPU only" in detail and "host syncs: not counted" in detail and "results.json: 12 steps" in detail
    # the placement steps trained on the generated image folder with the placement they asked for
    for placement in ("host", "stream"):
        assert f"its data line says placement {placement} (--data-placement {placement})" in \
            steps[f"6{'c' if placement == 'host' else 'd'}_placement_{placement}"]["detail"]
    assert sum(1 for _ in (tmp_path / "work" / "images" / "train").rglob("*.jpg")) == 640
    # evaluation at start, after epoch 1 and at the end, with finite metrics
    for name in ("1a_rotation_bf16", "1d_siamese_bf16", "1e_siamese_ntxent"):
        results = steps[name]["results"]
        assert len(results["eval_steps"]) == 3 and results["eval_steps"][0] == 0, (name, results)
    # NT-Xent with negatives gathered from both processes, and the augment pairs' own metric
    ntxent = steps["1e_siamese_ntxent"]
    assert "NT-Xent" in ntxent["title"] and ntxent["results"]["method"] == "simclr"
    assert ntxent["results"]["pairs"] == "augment" and ntxent["results"]["world_size"] == 2
    for key in ("eval/view_pair_auc", "eval/view_pair_auc_init"):
        assert 0 <= ntxent["results"][key] <= 1, (key, ntxent["results"])
    # the Siamese family's momentum copy moved off its start, and MoCo queued both processes' keys
    family = steps["1g_siamese_family"]["results"]
    assert family["mocov2"]["queue_next"] == 8 * 16 and all(family[m]["copy_vs_online_max_diff"] > 0 for m in family)
    # both backbones trained, and their torchvision exports give load_encoder's features
    backbones = steps["1h_backbones"]["results"]
    assert sorted(backbones) == ["resnet50", "torchvision:efficientnet_b0"]
    assert all(b["torchvision_form_relative_gap"] < 1e-4 and len(b["losses"]) == 2 for b in backbones.values())
    # the deterministic comparison really happened: a resumed run, every tensor of the step-12 weights equal
    deterministic = steps["3_deterministic_resume"]["results"]
    assert deterministic["equal"] is True and deterministic["compared_tensors"] > 0
    assert deterministic["resumed_at"] in (4, 8) and not deterministic["differing"]
    assert "stopped at step" in steps["2_sigusr1_resume"]["detail"]
    assert "resumed with --compile" in steps["4_compile_resume"]["detail"]
    assert steps["5_evaluate"]["results"]["world_size"] == 2


def fake_command(bin_dir, name, script):
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text("#!/bin/sh\n" + script)
    (bin_dir / name).chmod(0o755)
    return bin_dir / name


FAKE_NVIDIA_SMI = "echo 'GPU 0: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000000)'\n"


def test_gpu_check_reports_failing_steps_and_goes_on(tmp_path):
    # An `accelerate` that always fails: every step still runs, fails with its log's errors in the report, and
    # the exit status says so. nvidia-smi lists a GPU torch does not see: DEVICE=cpu, asked for, runs anyway.
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "accelerate", "echo 'RuntimeError: injected launcher failure' >&2\nexit 1\n")
    fake_command(bin_dir, "nvidia-smi", FAKE_NVIDIA_SMI)
    result, report, steps = gpu_check(tmp_path, PATH=f"{bin_dir}:{os.environ['PATH']}", CUDA_VISIBLE_DEVICES="")
    # It ran, past the pre-flight that stops DEVICE=auto here, and in the CPU mode: the CPU launcher and sizes.
    assert result.returncode != 0 and "preflight_error" not in report
    launch = [line for line in (tmp_path / "report" / "logs" / "1a_rotation_bf16.log").read_text().splitlines()
              if line.startswith("$ accelerate launch")]
    assert len(launch) == 1 and "--config_file accelerate_configs/cpu.yaml" in launch[0] and \
        "--mixed_precision no" in launch[0] and "--synthetic-size 96 " in launch[0], launch
    assert [s["status"] for s in report["steps"]] == \
        ["FAIL", "SKIPPED", "SKIPPED", "FAIL", "FAIL", "SKIPPED"] + ["FAIL"] * 10 + ["SKIPPED"]
    assert report["fail"] == 13 and not report["ok"]
    assert result.stdout.count("error> RuntimeError: injected launcher failure") == 13
    assert "FAILED: the run failed (exit 1)" in steps["1a_rotation_bf16"]["detail"]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(path, proc, seconds=300):
    deadline = time.time() + seconds
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"no {path}: the check ended ({proc.poll()}) or took over {seconds} s"
    time.sleep(0.2)  # the pid files' writers finish their line


def test_gpu_check_killed_mid_run_leaves_a_report_of_the_finished_steps(tmp_path):
    # SIGTERM to the check while step 1d hangs (steps one after the other): the report, rewritten as each step
    # ended, keeps what 1a-1c found; 1d is reported as stopped, the rest as not run, and 1d's launcher is ended.
    bin_dir, hung = tmp_path / "bin", tmp_path / "hung.pid"
    fake_command(bin_dir, "accelerate", "case \"$*\" in *1a_rotation_bf16*) echo 'RuntimeError: injected' >&2; "
                 f"exit 1;; esac\necho $$ >{hung}\nexec sleep 600\n")
    out = tmp_path / "report"
    proc = subprocess.Popen(["bash", f"{REPO}/bench/gpu_check.sh", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=gpu_check_env(tmp_path, PATH=f"{bin_dir}:{os.environ['PATH']}", PARALLEL="0"))
    try:
        wait_for(hung, proc)
        during = {s["id"]: s for s in json.loads((out / "gpu_check.json").read_text())["steps"]}
        assert [during[i]["status"] for i in GPU_CHECK_STEPS[:5]] == ["FAIL", "SKIPPED", "SKIPPED", "RUNNING",
                                                                      "PENDING"]
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    report = json.loads((out / "gpu_check.json").read_text())
    steps = {s["id"]: s for s in report["steps"]}
    assert [s["id"] for s in report["steps"]] == GPU_CHECK_STEPS and not report["ok"] and report["finished"]
    assert steps["1a_rotation_bf16"]["detail"] == "FAILED: the run failed (exit 1)"
    assert [steps[i]["status"] for i in GPU_CHECK_STEPS[1:3]] == ["SKIPPED", "SKIPPED"]
    assert steps["1d_siamese_bf16"]["status"] == "FAIL" and "SIGTERM" in steps["1d_siamese_bf16"]["detail"]
    assert all(steps[i]["status"] == "FAIL" and steps[i]["detail"].startswith("not run") for i in GPU_CHECK_STEPS[4:])
    text = (out / "gpu_check.txt").read_text()
    assert text in stdout and "error> RuntimeError: injected" in text
    assert not alive(int(hung.read_text()))


def test_gpu_check_stops_a_timed_out_step_and_only_its_own_processes(tmp_path):
    # A launcher that hangs, with a worker in a session of its own (as torchrun starts them), past its step's limit
    # (90 s x 0.1). Both are ended; a process started outside the check that names the step's run dir in its
    # command line (what a `pkill -f` on that dir would end) lives on.
    bin_dir, pids = tmp_path / "bin", tmp_path / "pids"
    fake_command(bin_dir, "accelerate", f"setsid sleep 600 &\necho $! $$ >{pids}\nwait\n")
    outsider = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)",
                                 str(tmp_path / "work" / "1a_rotation_bf16" / "run")])
    try:
        start = time.time()
        result, report, steps = gpu_check(tmp_path, PATH=f"{bin_dir}:{os.environ['PATH']}", ONLY="1a",
                                          STEP_LIMIT_SCALE="0.1")
        assert time.time() - start < 120
        assert steps["1a_rotation_bf16"]["detail"] == "FAILED: the run timed out (the step's time limit)"
        assert all(steps[i] == {**steps[i], "status": "SKIPPED", "detail": "not chosen (ONLY=1a)"}
                   for i in GPU_CHECK_STEPS[1:])
        worker, launcher = map(int, pids.read_text().split())
        assert not alive(worker) and not alive(launcher)
        assert outsider.poll() is None
    finally:
        outsider.kill()


def preflight(tmp_path, **env):
    """gpu_check.sh where its pre-flight should stop it: (result, seconds it took, its report or None)."""
    out = tmp_path / "report"
    environ = {k: v for k, v in os.environ.items() if k != "DEVICE"}  # DEVICE unset: auto
    start = time.time()
    result = subprocess.run(["bash", f"{REPO}/bench/gpu_check.sh", str(out)], capture_output=True, text=True,
                            timeout=300, env={**environ, "WORK_DIR": str(tmp_path / "work"), **env})
    seconds = time.time() - start
    report = json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").exists() else None
    return result, seconds, report


def assert_stopped_before_any_step(tmp_path, result, report, line):
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stderr.splitlines() == [line] and result.stdout == ""  # one line, nothing started
    assert report["ok"] is False and report["steps"] == [] and report["preflight_error"] == line
    assert (tmp_path / "report" / "gpu_check.txt").read_text() == line + "\n"
    assert not (tmp_path / "work").exists() and not (tmp_path / "report" / "steps").exists()


def test_gpu_check_stops_at_once_when_torch_does_not_see_the_gpu_nvidia_smi_lists(tmp_path):
    # A GPU machine where torch sees no GPU (here: CUDA_VISIBLE_DEVICES=""; a CPU build of torch alike) used to run
    # the whole check in CPU mode and report success.
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "nvidia-smi", FAKE_NVIDIA_SMI)
    result, seconds, report = preflight(tmp_path, PATH=f"{bin_dir}:{os.environ['PATH']}", CUDA_VISIBLE_DEVICES="")
    assert_stopped_before_any_step(tmp_path, result, report,
                                   "gpu_check: nvidia-smi lists 1 GPU(s) but torch sees none: CUDA_VISIBLE_DEVICES='' "
                                   "hides them: unset it (or DEVICE=cpu for the CPU check)")
    assert seconds < 30  # one import of torch


@pytest.mark.parametrize("how", ["pythonpath", "python_wrapper"])
def test_gpu_check_stops_at_once_when_a_package_does_not_import(tmp_path, how):
    # safetensors shadowed by a module that fails to import (PYTHONPATH), or PIL failing only in the interpreter
    # that PYTHON names (a wrapper around python3): the check says which, with which Python, and runs nothing.
    broken = tmp_path / "broken"
    broken.mkdir()
    package = "safetensors" if how == "pythonpath" else "PIL"
    (broken / f"{package}.py").write_text(f"raise ImportError('injected: {package} is broken')\n")
    if how == "pythonpath":
        env, python = {"PYTHONPATH": str(broken)}, "python3"
    else:
        python = str(fake_command(tmp_path / "bin", "python-env", f'PYTHONPATH={broken} exec python3 "$@"\n'))
        env = {"PYTHON": python}
    result, seconds, report = preflight(tmp_path, **env)
    assert_stopped_before_any_step(tmp_path, result, report,
                                   f"gpu_check: cannot import {package} with {python} (ImportError: injected: "
                                   f"{package} is broken): pip install -r requirements.txt (or set PYTHON to the "
                                   "environment's python)")
    assert seconds < 15  # before torch is imported


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


def test_decode_benchmark_prints_before_and_after_for_each_size(tmp_path, image_folder):
    result = subprocess.run([sys.executable, "-m", "bench.decode", "--data-dir", str(image_folder),
                             "--images", "4", "--repeats", "1", "--image-sizes", "32,96"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| 32 ") or
            line.startswith("| 96 ")]
    assert [row[0].strip() for row in rows] == ["32", "96"]
    assert all(row[1].strip() == "125x94" if row[0].strip() == "32" else row[1].strip() == "250x188" for row in rows)
    assert all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows)
