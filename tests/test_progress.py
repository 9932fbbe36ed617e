"""ssl_scripts/runtime/progress.py: the evaluation's progress on a terminal, and nowhere else (a redirected log, metrics.jsonl)."""
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from helpers import REPO, SMALL

pytestmark = pytest.mark.e2e

BARS = ("eval: features", "eval: k-NN", "eval: linear probe epochs")


def output_in_a_terminal(command, env=None) -> str:
    """What a user sees running command in a terminal: stdout and stderr both a pty."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a terminal's size: 160 columns
    process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                               env={**os.environ, **(env or {})})
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: every writer has closed it
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(300) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


def test_evaluation_progress_is_shown_on_a_terminal_only(tmp_path):
    train = [sys.executable, "train_rotation.py", *SMALL, "--max-steps", "2"]
    seen = output_in_a_terminal([*train, "--output-dir", str(tmp_path / "tty")])
    for bar in BARS:
        assert bar in seen, seen[-3000:]
    assert "done: 2 steps" in seen
    with open(tmp_path / "log", "w") as log:  # redirected, as a Slurm job's output is
        redirected = subprocess.run([*train, "--output-dir", str(tmp_path / "file")], cwd=REPO, stdout=log,
                                    stderr=subprocess.STDOUT, timeout=300)
    logged = (tmp_path / "log").read_text()
    assert redirected.returncode == 0 and "done: 2 steps" in logged, logged[-3000:]
    metrics = (tmp_path / "file" / "metrics.jsonl").read_text()
    for bar in BARS:
        assert bar not in logged and bar not in metrics


def test_evaluate_shows_its_classifiers_epochs_on_a_terminal(tmp_path):
    out = tmp_path / "run"
    trained = subprocess.run([sys.executable, "train_rotation.py", *SMALL, "--max-steps", "1", "--skip-eval",
                              "--output-dir", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    seen = output_in_a_terminal([sys.executable, "evaluate.py", "--encoder", str(out / "final"), "--dataset",
                                 "synthetic", "--classifier-epochs", "2", "--skip-untrained", "--blocks", "block1"])
    assert "block features" in seen and "classifier epochs" in seen, seen[-3000:]


def test_a_stderr_piped_to_a_terminal_counts_as_one(tmp_path):
    # accelerate launch (1.16 on) copies its one process's stderr through a pipe to its own terminal
    ask = [sys.executable, "-c", "from ssl_scripts.runtime.progress import stderr_reaches_a_terminal as t; "
                                 "print(t(), file=open('answer', 'w'))"]

    def answer(stdout, stderr) -> str:
        subprocess.run(ask, cwd=tmp_path, env={**os.environ, "PYTHONPATH": REPO}, stdout=stdout, stderr=stderr,
                       check=True, timeout=60)
        return (tmp_path / "answer").read_text().strip()

    leader, follower = pty.openpty()
    with open(tmp_path / "log", "w") as log:
        assert answer(follower, subprocess.PIPE) == "True"  # stdout the terminal, stderr accelerate's pipe
        assert answer(follower, follower) == "True"
        assert answer(follower, log) == "False"  # `2> file`: nobody watches that bar
        assert answer(log, subprocess.PIPE) == "False"  # both captured (a test, a CI job)
    os.close(leader), os.close(follower)
