"""The Slurm templates, submitted to a real one-node Slurm cluster (slurm/local_cluster.sh brings it up)."""
import json
import os
import socket
import subprocess
import time

import pytest

from conftest import REPO, SMALL, run_script


@pytest.fixture(scope="module")
def cluster():
    """A running cluster: this machine's if one answers, else one started here (root and apt-get needed)."""
    ok = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True) if _has("sinfo") else None
    if not ok or ok.returncode != 0 or not ok.stdout.strip().startswith(("idle", "mixed", "alloc")):
        up = subprocess.run(["bash", os.path.join(REPO, "slurm", "local_cluster.sh"), "up"],
                            capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, f"could not start a local Slurm cluster:\n{up.stdout}\n{up.stderr}"


def _has(command):
    return subprocess.run(["bash", "-c", f"command -v {command}"], capture_output=True).returncode == 0


def sbatch(*args, wait=True):
    result = subprocess.run(["sbatch", "--parsable", *(["--wait"] if wait else []), *map(str, args)], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    return result


def job_state(job_id):
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    return fields.get("JobState"), int(fields.get("Restarts", 0))


@pytest.mark.parametrize("template", ["rotation", "siamese"])
def test_template_runs_on_a_cpu_only_cluster(cluster, tmp_path, template):
    out, log = tmp_path / "out", tmp_path / "slurm-%j.out"
    result = sbatch("--gpus-per-node=0", f"--output={log}", f"slurm/{template}.sh", *SMALL, "--max-steps", "30",
                    "--output-dir", out)
    logs = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert result.returncode == 0, result.stderr + logs
    assert json.loads((out / "results.json").read_text())["steps"] == 30
    assert "SLURM_RESTART_COUNT=0" in logs


def test_preemption_checkpoints_requeues_and_resumes(cluster, tmp_path):
    out, log = tmp_path / "out", tmp_path / "slurm.out"
    total = 300
    submitted = sbatch("--gpus-per-node=0", f"--output={log}", "slurm/rotation.sh", *SMALL, "--max-steps", total,
                       "--log-every", "5", "--checkpoint-every", "100000", "--output-dir", out, wait=False)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.5)
    assert metrics.exists(), log.read_text(errors="replace") if log.exists() else "no log"
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)

    deadline = time.time() + 600
    while time.time() < deadline and job_state(job_id)[0] != "COMPLETED":
        assert job_state(job_id)[0] not in ("FAILED", "CANCELLED", "TIMEOUT"), log.read_text(errors="replace")
        time.sleep(2)
    text = log.read_text(errors="replace")
    assert job_state(job_id) == ("COMPLETED", 1), text
    assert "SLURM_RESTART_COUNT=1" in text and "stopping on SIGUSR1 at step" in text
    stopped = int(text.split("stopping on SIGUSR1 at step ")[1].split(":")[0])
    assert 0 < stopped < total
    assert f"at step {stopped} " in text.split("SLURM_RESTART_COUNT=1")[1]  # the second run resumed right there
    assert json.loads((out / "results.json").read_text())["steps"] == total  # as many steps as uninterrupted


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_launch_command_trains_with_world_size_two(tmp_path):
    """slurm/node.sh, as srun starts it on each node, run here as node 0 and node 1 of a 2-node job."""
    out = tmp_path / "out"
    env = {**os.environ, "SLURM_NNODES": "2", "MAIN_PROCESS_IP": "127.0.0.1", "WANDB_MODE": "offline",
           "MAIN_PROCESS_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_GPUS_ON_NODE", None)
    nodes = [subprocess.Popen(["bash", "slurm/node.sh", "train_rotation.py", *SMALL, "--max-steps", "8",
                               "--output-dir", str(out)], cwd=REPO, env={**env, "SLURM_NODEID": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(logs)[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] == 8
