"""An exclusive lock on a file that its holder removes when done: the decode cache's and the run lock's.

The lock is the kernel's (fcntl.lockf, a POSIX record lock, which NFS passes to its server): it dies with its
holder, also on SIGKILL. The holder removes the file before it lets go, so a waiter that then gets the lock of a
removed file checks the inode and takes the one the path names now.
"""
import errno
import fcntl
import os


class LocksUnsupported(OSError):
    """The lock file's file system has no POSIX locks."""


def acquire(path: str, on_busy=None) -> int:
    """Opens path (created if missing) and locks it; returns the open file descriptor, which holds the lock.

    on_busy(fd): called the first time another process is found holding it: it raises to give up, or returns to
    wait until the holder is done or has died. Raises OSError where path cannot be opened and LocksUnsupported
    where its file system cannot lock it."""
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    raise LocksUnsupported(e.errno, e.strerror, path) from e
                if on_busy is not None and not told:
                    told = True
                    on_busy(fd)
                fcntl.lockf(fd, fcntl.LOCK_EX)  # until its holder is done, or has died
        except BaseException:
            os.close(fd)  # ours was never the lock: closing it releases nothing of the holder's
            raise
        if names(path, fd):
            return fd
        os.close(fd)  # its last holder removed the file after we opened it: lock the one the path names now


def names(path: str, fd: int) -> bool:
    """Whether path still names the file fd has open (its holder removes it on release)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def release(path: str, fd: int) -> None:
    """The file goes first, then the lock (a waiter that opened the file meanwhile sees it gone and retries)."""
    try:
        os.unlink(path)
    except OSError:
        pass
    os.close(fd)
