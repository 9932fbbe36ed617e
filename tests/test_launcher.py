"""launch.py (ssl_scripts/runtime/launcher.py) and the training's stop signals seen from a terminal: Ctrl-C (SIGINT to the
foreground process group, as a terminal sends it) stops with a checkpoint and the same command resumes; a second
Ctrl-C stops at once; a signal to the launcher alone stops with a checkpoint and no lock; the last line is the
project's."""
import os
import signal
import subprocess
import sys
import time

import pytest

from ssl_scripts.outputs import runlock
from ssl_scripts.runtime import launcher
from helpers import REPO, SMALL

TRAIN = [*SMALL, "--skip-eval", "--max-steps", "8", "--log-every", "2"]
STOP_LINE = "stopping on Ctrl-C (SIGINT) at step "


def launch_command(*args, num_processes=2):
    return [sys.executable, os.path.join(REPO, "launch.py"), "--config_file",
            os.path.join(REPO, "accelerate_configs", "cpu.yaml"), "--num_processes", str(num_processes),
            "--num_cpu_threads_per_process", "1", *args]


def as_a_terminal_starts_it() -> None:
    """Signals as a shell's foreground job has them, whatever this test process inherited (a CI runner started in
    the background ignores SIGINT, and a shell passes "ignore" on)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)


class Held:
    """A training started in a session of its own (as a terminal's foreground job) that waits at `point`
    (SSL_SCRIPTS_HOLD) until go(); its output in OUT.log."""

    def __init__(self, command, out, point="step@2", env=None):
        self.out, self.marker = str(out), f"{out}.hold"
        self.log = open(f"{out}.log", "w")
        self.process = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=self.log,
                                        stderr=subprocess.STDOUT, preexec_fn=as_a_terminal_starts_it,
                                        env={**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1",
                                             "SSL_SCRIPTS_HOLD": f"{point}:{self.marker}", **(env or {})})
        self.wait_for(lambda: os.path.exists(self.marker + ".held"))

    def text(self) -> str:
        return open(f"{self.out}.log").read()

    def wait_for(self, condition, timeout=300, running=True):
        deadline = time.time() + timeout  # a bound on a hang, not a timing the test relies on
        while not condition():
            assert time.time() < deadline and not (running and self.process.poll() is not None), self.text()[-3000:]
            time.sleep(0.05)

    def ctrl_c(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)  # what a terminal does: the whole foreground process group

    def go(self) -> None:
        open(self.marker + ".go", "w").close()

    def end(self, timeout=300) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self.log.close()
            subprocess.run(["pkill", "-KILL", "-f", self.out])  # nothing is left running if the test failed


def last_line(text: str) -> str:
    return [line for line in text.replace("\r", "\n").splitlines() if line.strip()][-1]


def assert_stopped_cleanly(text: str) -> int:
    """The run stopped on Ctrl-C with a checkpoint, said so last, in the project's words only; its step."""
    assert STOP_LINE in last_line(text) and "checkpoint saved; the same command resumes" in last_line(text), text
    assert text.count("Ctrl-C: stopping at the next step the processes agree on, with a checkpoint") == 1, text
    for foreign in ("Traceback", "FAILED", "CalledProcessError", "SignalException", "KeyboardInterrupt"):
        assert foreign not in text, text
    return int(last_line(text).split(STOP_LINE)[1].split(":")[0])


def resumed(command, out) -> str:
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "WANDB_MODE": "offline"})
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    return again.stdout + again.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("processes", [1, 2])
def test_ctrl_c_checkpoints_exits_3_and_the_same_command_resumes(tmp_path, processes):
    # One process without a launcher (python train_rotation.py: the quick start), two under launch.py
    out = tmp_path / "run"
    script = [os.path.join(REPO, "train_rotation.py"), *TRAIN, "--output-dir", str(out)]
    command = [sys.executable, *script] if processes == 1 else launch_command(*script)
    held = Held(command, out)
    held.ctrl_c()
    held.wait_for(lambda: "Ctrl-C: stopping" in held.text())
    held.go()
    assert held.end() == 3, held.text()[-3000:]
    step = assert_stopped_cleanly(held.text())
    assert 2 < step < 8 and (out / "checkpoints" / f"step_{step:08d}" / "manifest.json").exists()
    text = resumed(command, out)
    assert f"resumed from {out / 'checkpoints' / f'step_{step:08d}'}" in text, text[-3000:]


@pytest.mark.e2e
@pytest.mark.parametrize("processes", [1, 2])
def test_a_second_ctrl_c_stops_at_once_saying_so(tmp_path, processes):
    # One process stops itself. Under launch.py only rank 0 is held, so rank 1 waits for it in the next step's
    # all-reduce, where no signal handler runs: rank 0 stopping alone would leave it failing there, with a
    # traceback. The launcher kills both instead.
    out = tmp_path / "run"
    script = [os.path.join(REPO, "train_rotation.py"), *TRAIN, "--output-dir", str(out)]
    held = Held([sys.executable, *script] if processes == 1 else launch_command(*script), out,
                env={"SSL_SCRIPTS_HOLD_RANK": "0"})
    held.ctrl_c()
    held.wait_for(lambda: "Ctrl-C: stopping" in held.text())
    time.sleep(1.5)  # a person's second Ctrl-C: not at the same moment (two signals at once arrive as one)
    held.ctrl_c()  # still held: only the second Ctrl-C can end it
    assert held.end() == 130, held.text()[-3000:]
    assert last_line(held.text()).startswith("second Ctrl-C: stopped at once, without a checkpoint"), held.text()
    assert "Traceback" not in held.text() and not (out / "checkpoints").exists()


@pytest.mark.e2e
def test_one_ctrl_c_delivered_twice_at_once_is_one(tmp_path):
    # `pkill -INT -f train_rotation` reaches the launcher and every training process, which the launcher then
    # passes it on to: one Ctrl-C, arriving twice, must not stop the run at once
    out = tmp_path / "run"
    held = Held(launch_command(os.path.join(REPO, "train_rotation.py"), *TRAIN, "--output-dir", str(out)), out)
    subprocess.run(["pkill", "-INT", "-f", str(out)], check=True)
    held.wait_for(lambda: "Ctrl-C: stopping" in held.text())
    held.go()
    assert held.end() == 3, held.text()[-3000:]
    assert_stopped_cleanly(held.text())


@pytest.mark.e2e
@pytest.mark.parametrize("launch, signum", [("launch.py", signal.SIGTERM), ("accelerate launch --cpu", signal.SIGTERM),
                                            ("accelerate launch --cpu", signal.SIGKILL)],
                         ids=["launch.py-SIGTERM", "accelerate-SIGTERM", "accelerate-SIGKILL"])
def test_a_signal_to_the_launcher_alone_stops_the_training_with_a_checkpoint_and_no_lock(tmp_path, launch, signum):
    # launch.py passes SIGTERM on; accelerate's one-process launcher passes it on too (1.16 on, with a SIGKILL 5 s
    # later) or dies of it (1.15). A launcher that dies leaves the training to learn of it from the kernel, its
    # stderr a pipe nobody reads where accelerate copies it (1.16 on): the stop still ends with its line on stdout.
    out = tmp_path / "run"
    script = [os.path.join(REPO, "train_rotation.py"), *TRAIN, "--output-dir", str(out)]
    command = launch_command(*script, num_processes=1) if launch == "launch.py" else \
        ["accelerate", "launch", "--cpu", "--num_cpu_threads_per_process", "1", *script]
    held = Held(command, out)
    os.kill(held.process.pid, signum)  # the launcher alone, as `kill PID`, a process manager or the OOM killer does
    held.go()
    held.wait_for(lambda: subprocess.run(["pgrep", "-f", str(out)], capture_output=True).returncode != 0, 60,
                  running=False)
    held.end()
    # Not the last line: accelerate (1.16 on) copies stderr, and the bar's end on it, through a pipe of its own
    assert "stopping on SIGTERM at step 3: checkpoint saved" in held.text(), held.text()[-3000:]
    assert os.listdir(out / "checkpoints") == ["step_00000003"]
    runlock.release(runlock.acquire(str(out)))  # free: no process holds OUTPUT_DIR any longer


@pytest.mark.e2e
def test_ctrl_c_before_the_training_started_stops_the_launcher_in_one_line(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(launch_command(os.path.join(REPO, "train_rotation.py"), *TRAIN, "--output-dir",
                                              str(out)), cwd=REPO, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, preexec_fn=as_a_terminal_starts_it)
    time.sleep(0.5)  # the launcher imports torch meanwhile: no training process exists yet
    os.killpg(process.pid, signal.SIGINT)
    text = process.communicate(timeout=60)[0]
    assert process.returncode == 130, text
    assert last_line(text) == "launch: stopped on SIGINT: no training process was running", text
    assert "Traceback" not in text and not out.exists()


def test_exit_status_and_the_one_line_for_unexplained_ends():
    assert launcher.exit_status([3, 3]) == 3 and launcher.exit_status([3]) == 3
    assert launcher.exit_status([2, 3]) == 2  # a user error said on one process outranks the stop
    assert launcher.exit_status([1, 3]) == 1 and launcher.exit_status([-signal.SIGKILL]) == 137
    assert launcher.describe({1: -signal.SIGKILL}) == \
        "launch: process 1 was killed by SIGKILL (out of memory? see dmesg)"
    assert launcher.describe({0: 1}) == "launch: process 0 exited with code 1 (its error is above)"
    assert launcher.describe({0: -40}) == "launch: process 0 was killed by signal 40 (its error is above)"
    # torchrun stops the others once one has ended: their SIGTERM / SIGKILL is not a failure of theirs
    assert launcher.unexplained({0: 3, 1: -signal.SIGTERM}) == {} and launcher.unexplained({0: 3, 1: 1}) == {1: 1}
    assert launcher.unexplained({0: -signal.SIGKILL}) == {0: -signal.SIGKILL}
