"""ssl_scripts/runtime/processes.py: the process tree around a training, and nothing left running when a parent dies."""
import os
import signal
import subprocess
import sys
import time

from ssl_scripts.runtime import processes
from helpers import REPO


def python(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, **kw)


def test_a_parent_that_is_pid_1_is_not_taken_for_a_dead_one():
    # A container's command (no init) is PID 1: its children see getppid() == 1 from the start
    ran = python("import os, signal\n"
                 "from ssl_scripts.runtime import processes\n"
                 "os.getppid = lambda: 1\n"
                 "processes.die_with_parent(signal.SIGTERM, parent=1)\n"
                 "print('alive')")
    assert ran.returncode == 0 and ran.stdout == "alive\n", ran.stderr
    gone = python("import signal\nfrom ssl_scripts.runtime import processes\n"
                  "processes.die_with_parent(signal.SIGTERM, parent=-1)\nprint('alive')")
    assert gone.returncode == -signal.SIGTERM and gone.stdout == ""  # its parent is not the one it started with


def test_decode_workers_die_with_a_training_stopped_at_once():
    # A second Ctrl-C ends the training with os._exit (no pool shutdown); its forked decode workers must not stay
    ran = python("import os\n"
                 "from ssl_scripts.data.decode import fork_pool\n"
                 "pool = fork_pool(2)\n"
                 "print(sorted({pool.submit(os.getpid).result() for _ in range(8)} | {p for p in pool._processes}),"
                 " flush=True)\n"
                 "os._exit(130)")
    assert ran.returncode == 130, ran.stderr
    workers = eval(ran.stdout)
    assert len(workers) == 2
    deadline = time.time() + 30  # a bound on a hang, not a timing the test relies on
    while any(os.path.exists(f"/proc/{pid}") for pid in workers):
        assert time.time() < deadline, f"decode workers {workers} outlived their process"
        time.sleep(0.05)


def test_children_and_whether_they_catch_a_signal():
    child = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                              "signal.signal(signal.SIGUSR1, lambda *_: None)\nprint('ready', flush=True)\n"
                              "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        assert child.pid in processes.children(os.getpid())
        assert processes.catches(child.pid, signal.SIGUSR1) and not processes.catches(child.pid, signal.SIGUSR2)
    finally:
        child.kill()
        child.wait()
    assert processes.signal_name(signal.SIGTERM) == "SIGTERM" and processes.signal_name(40) == "signal 40"
