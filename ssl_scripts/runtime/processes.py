"""The process tree around a training: a launcher's children, which of them catch a signal, and a child told by the
kernel when its parent dies (Linux), so that no training or decode worker is ever left running on its own."""
import os
import signal
import subprocess
import sys
import time

# Read when the entry point starts (ssl_scripts/runtime/cli.py imports this first): a launcher that dies later is noticed even
# where it was PID 1 (a container's command) or where an orphan goes to a subreaper rather than to PID 1.
PARENT_AT_START = os.getppid()
# SIGINTs closer than this are one Ctrl-C reaching a process twice (`pkill -INT` of every process, and a launcher
# passing it on); a second Ctrl-C of a person's comes later.
SAME_CTRL_C_S = 1.0


class CtrlC:
    """A person's Ctrl-Cs, counted from the SIGINTs a process gets: those closer than SAME_CTRL_C_S are one."""

    def __init__(self):
        self.count = 0
        self._at = -float("inf")

    def pressed(self) -> bool:
        """Call on each SIGINT: whether it is a new Ctrl-C (False: the same one delivered again)."""
        now = time.monotonic()
        if now - self._at < SAME_CTRL_C_S:
            return False
        self._at, self.count = now, self.count + 1
        return True


def launched() -> bool:
    """Started by accelerate launch / torchrun (or launch.py), not by a shell."""
    return "LOCAL_RANK" in os.environ or "ACCELERATE_DYNAMO_BACKEND" in os.environ  # torchrun's; accelerate's


def die_with_parent(signum, parent: int = PARENT_AT_START) -> None:
    """Linux's PR_SET_PDEATHSIG: the kernel sends signum to this process when its parent exits. parent: the pid it
    had when this process started; if it is gone already, signum is sent now. Elsewhere nothing is done."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signum))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call: nobody will send it
        os.kill(os.getpid(), signum)


def children(pid: int) -> list:
    """The processes whose parent is pid (Linux's /proc; elsewhere pgrep)."""
    if os.path.isdir("/proc"):
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                            found.append(int(entry))
                except (OSError, IndexError, ValueError):
                    continue  # it exited meanwhile
        return found
    listed = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in listed.split()]


def catches(pid: int, signum) -> bool:
    """Whether process pid has a handler for signum (Linux: SigCgt in /proc); elsewhere assumed."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (int(signum) - 1) & 1)
    except OSError:
        return not os.path.isdir("/proc")
    return False


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # a real-time signal has no name
        return f"signal {signum}"
