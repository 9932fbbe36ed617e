"""One training per OUTPUT_DIR (ssl_scripts/outputs/runlock.py), with the real script started as a user would start it."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, python_script

RUN = ["--dataset", "synthetic", "--model", "simple_cnn", "--report-to", "none", "--batch-size", "32",
       "--checkpoint-every", "10", "--log-every", "5", "--skip-eval"]


def start(out, *extra, env=None):
    return subprocess.Popen([sys.executable, os.path.join(REPO, "train_rotation.py"), *RUN, "--output-dir", str(out),
                             *map(str, extra)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})})


def wait_for(condition, what, timeout=120):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def snapshot(folder):
    return {os.path.relpath(os.path.join(root, name), folder): os.stat(os.path.join(root, name)).st_mtime_ns
            for root, _, names in os.walk(folder) for name in names}


@pytest.mark.e2e
def test_a_second_start_on_the_same_output_dir_stops_at_once_and_writes_nothing(tmp_path):
    out, hold = tmp_path / "run", tmp_path / "hold"
    # The first run waits after its step 5 (logged) until the second start has been refused: alive for sure.
    first = start(out, "--max-steps", "20", env={"SSL_SCRIPTS_HOLD": f"step@5:{hold}"})
    wait_for(lambda: os.path.exists(f"{hold}.held") or first.poll() is not None, "the first run's step 5")
    assert first.poll() is None, first.stdout.read()[-3000:]
    before = snapshot(out)
    second = python_script("train_rotation.py", *RUN, "--max-steps", "20", "--output-dir", out)
    assert second.returncode == 2, (second.returncode, second.stderr[-2000:])
    error = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"pid {first.pid} on " in error[0] and "in use by another training" in error[0]
    assert "nothing was written" in error[0] and "started 20" in error[0]
    assert snapshot(out) == before  # the first run is held: any change is the second's
    open(f"{hold}.go", "w").close()
    assert first.wait(timeout=600) == 0, first.stdout.read()[-3000:]
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl") if "train/loss" in line]
    assert steps == [5, 10, 15, 20]  # each logged step once, in order: the second run logged nothing


@pytest.mark.e2e
def test_a_lock_left_by_a_killed_run_does_not_block_the_next_start(tmp_path):
    out = tmp_path / "run"
    first = start(out, "--max-steps", "400")
    wait_for(lambda: (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("step_*")),
             "the first run's first checkpoint")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert (out / ".run.lock").exists()  # the file stays; the lock was the process's and died with it
    again = python_script("train_rotation.py", *RUN, "--max-steps", "30", "--output-dir", out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout
    assert not (out / ".run.lock").exists()  # removed by the run that ended normally


def test_the_lock_file_names_its_holder_and_goes_with_it(tmp_path):
    from ssl_scripts.outputs import runlock
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ssl_scripts.outputs import runlock; "
                               "runlock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(60)", str(out)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    record = json.loads((out / ".run.lock").read_text())
    assert record["pid"] == holder.pid and record["host"] and record["started"].startswith("20")
    try:
        import pytest
        from ssl_scripts import UserError
        with pytest.raises(UserError, match=f"in use by another training \\(pid {holder.pid} on "):
            runlock.acquire(str(out))
    finally:
        holder.terminate()  # SIGTERM: no atexit, the file stays, the lock goes with the process
        holder.wait(timeout=30)
    fd = runlock.acquire(str(out))
    assert json.loads((out / ".run.lock").read_text())["pid"] == os.getpid()
    runlock.release(fd)
    assert not (out / ".run.lock").exists()
