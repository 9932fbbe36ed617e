"""One training per OUTPUT_DIR: the main process holds an OS lock on OUTPUT_DIR/.run.lock for the whole run.

A second start on the same OUTPUT_DIR (launched twice by mistake; a requeued job starting while the old one still
runs) stops before it touches anything, naming the holder. The lock is the kernel's (fcntl.lockf, a POSIX record
lock, which NFS passes to its server): it dies with the process holding it, also on SIGKILL, and on a shared file
system with the holder's node (the server reclaims the locks of a client it lost, after its lease), so a requeue
after a crash never waits for a person. One holder per run, not per rank: only the main process takes it. The
holder removes the file when it exits.
"""
import atexit
import datetime
import json
import os
import socket

from ssl_scripts import UserError
from ssl_scripts.runtime import files
from ssl_scripts.runtime import filelock

LOCK_NAME = ".run.lock"


def acquire(output_dir: str) -> int:
    """Takes the lock (creating OUTPUT_DIR and the lock file if needed) and records the holder in it; returns the
    open file descriptor, which holds the lock until this process exits (the file is removed then: a start that
    fails leaves OUTPUT_DIR as it found it). Raises UserError if another process holds it. Main process only."""
    path = os.path.join(output_dir, LOCK_NAME)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise unwritable_output_dir(output_dir, e) from e
    try:
        fd = filelock.acquire(path, on_busy=lambda fd: _in_use(output_dir, fd))
    except filelock.LocksUnsupported as e:
        raise UserError(f"cannot lock {path!r} ({e.strerror}): the file system of --output-dir must support "
                        f"POSIX locks (local disks and NFS do)") from e
    except OSError as e:
        raise unwritable_output_dir(output_dir, e) from e
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "slurm_job_id": os.environ.get("SLURM_JOB_ID", "")}
    record = (json.dumps(me) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
    except OSError as e:  # a full disk: this start stops, leaving no lock file behind
        os.remove(path)
        os.close(fd)
        problem = files.failure(path, len(record), e)
        raise UserError(f"{problem}; nothing else was written: free some space or pass another --output-dir") from e
    _held[fd] = path
    return fd


def _in_use(output_dir: str, fd: int):
    raise UserError(f"{output_dir!r} is in use by another training ({_holder(fd)}): wait for it to end or stop it, "
                    f"or pass another --output-dir; nothing was written") from None


def release(fd: int) -> None:
    """The file goes first, then the lock (a start that opened the file meanwhile sees it gone and retries)."""
    path = _held.pop(fd, None)
    if path is not None:
        filelock.release(path, fd)


def release_in(output_dir: str) -> None:
    """Releases the lock this process holds on OUTPUT_DIR, if any, as its exit would."""
    lock = os.path.abspath(os.path.join(output_dir, LOCK_NAME))
    for fd, path in list(_held.items()):
        if os.path.abspath(path) == lock:
            release(fd)


_held = {}  # the locks this process holds, fd -> path: released at exit (a kill releases them without this)
atexit.register(lambda: [release(fd) for fd in list(_held)])


def unwritable_output_dir(output_dir: str, error: OSError) -> UserError:
    """The one line for an --output-dir this process cannot create or write to."""
    return UserError(f"cannot write to output dir {output_dir!r} ({error.strerror}): choose a writable --output-dir")


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        holder = {}
    if not holder:
        return "its holder is still starting"
    job = f", Slurm job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}, started {holder.get('started')}"
