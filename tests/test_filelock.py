"""The one file lock of the decode cache and the run lock (ssl_scripts/runtime/filelock.py)."""
import os
import subprocess
import sys
import time

import pytest

from ssl_scripts.runtime import filelock

HOLD = """import sys, time
from ssl_scripts.runtime import filelock
path = sys.argv[1]
fd = filelock.acquire(path)
print("held", flush=True)
sys.stdin.readline()
filelock.release(path, fd)
"""


def holder(path):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_busy_lock_is_told_once_then_waited_for_and_its_removed_file_replaced(tmp_path):
    path = tmp_path / "x.lock"
    process = holder(path)
    told = []

    def on_busy(fd):
        told.append(fd)
        process.stdin.write("\n")  # the holder lets go now: it removes the file, then unlocks
        process.stdin.flush()
    fd = filelock.acquire(str(path), on_busy=on_busy)
    process.wait(timeout=30)
    assert len(told) == 1
    assert filelock.names(str(path), fd)  # the lock is on the file the path names, not on the removed one
    filelock.release(str(path), fd)
    assert not path.exists()


def test_a_busy_lock_can_be_given_up(tmp_path):
    path = tmp_path / "x.lock"
    process = holder(path)

    def give_up(fd):
        raise RuntimeError("in use")
    try:
        opened = len(os.listdir("/proc/self/fd"))
        with pytest.raises(RuntimeError, match="in use"):
            filelock.acquire(str(path), on_busy=give_up)
        assert len(os.listdir("/proc/self/fd")) == opened  # the descriptor opened for the attempt is closed
    finally:
        process.stdin.write("\n")
        process.stdin.flush()
        process.wait(timeout=30)


def test_a_free_lock_is_taken_at_once_and_released_with_its_file(tmp_path):
    path = tmp_path / "x.lock"
    start = time.monotonic()
    fd = filelock.acquire(str(path), on_busy=lambda fd: pytest.fail("nobody holds it"))
    assert time.monotonic() - start < 5 and path.exists()
    filelock.release(str(path), fd)
    assert not path.exists()
