"""What a run writes appears whole or not at all, and a write that fails (a full disk, a quota) is one line naming
the path and the bytes it needed.

Files and folders are written under a temporary name beside their final one and renamed once complete: a failed
write leaves the previous version (or nothing) and removes its temporary.
"""
import errno
import json
import os
import shutil
import uuid

import torch
from safetensors import SafetensorError

from ssl_scripts import UserError

# How a failed write surfaces: OSError from Python's files, SafetensorError from safetensors, RuntimeError from
# torch.save, which loses the OS error on the way ("unexpected pos 576 vs 534": save_tensors keeps it).
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


class WriteFailed(UserError):
    """A write that failed. error: the exception, or the reason() another process gave."""

    def __init__(self, path: str, needed: int, error):
        self.path, self.needed = path, needed
        self.reason = reason(error, needed, free_bytes(path))
        self.problem = failure(path, needed, error)
        super().__init__(f"{self.problem}: free some space and run the same command again")


def failure(path: str, needed: int, error) -> str:
    """The line for a failed write: the path, what went wrong, the bytes it needed and those free there now."""
    free = free_bytes(path)
    return (f"could not write {path!r}: {reason(error, needed, free)}; it needs about {size(needed)}, "
            f"{size(free)} free on its file system")


def reason(error, needed: int = 0, free: int = None) -> str:
    """What went wrong, in words: ENOSPC and EDQUOT, also where they come as text (safetensors) or were lost
    (torch.save's RuntimeError, when less is free than the write needs)."""
    if isinstance(error, WriteFailed):
        return error.reason
    code, text = getattr(error, "errno", None), getattr(error, "strerror", None) or str(error)
    if code == errno.ENOSPC or "os error 28" in text or "no space left" in text.lower():
        return "no space left on device"
    if code == errno.EDQUOT or "os error 122" in text or "quota exceeded" in text.lower():
        return "disk quota exceeded"
    if free is not None and needed > free:
        return f"no space left on device ({text})"
    return text


def free_bytes(path: str) -> int:
    """Bytes free to this user on the file system `path` is (or would be) on."""
    directory = os.path.abspath(path)
    while not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    return shutil.disk_usage(directory).free


def size(n: int, exact: bool = True) -> str:
    """n bytes for people: 1.5 GiB, 3.0 MiB (3145728 bytes) where exact, 512 bytes."""
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" + (f" ({n} bytes)" if exact else "")
    return f"{n} bytes"


def tensor_bytes(obj) -> int:
    """Bytes of the tensors in obj (nested dicts, lists, tuples): about what torch.save or safetensors write."""
    if torch.is_tensor(obj):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def tree_bytes(path: str) -> int:
    """Bytes of the files in a folder and its subfolders."""
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def remove(path: str) -> None:
    """A file or folder removed if it is there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def write_atomically(path: str, write, needed: int, folder: bool = False) -> None:
    """write(temporary) writes the file (folder=True: fills the folder) that then replaces `path`. Any failure
    removes the temporary, leaves `path` as it was and raises WriteFailed; needed: about how many bytes it takes.
    The temporary's name is unique, so several writers (nodes on a shared cache) never write into one file."""
    parent = os.path.dirname(os.path.abspath(path))
    temporary = None
    try:
        os.makedirs(parent, exist_ok=True)
        temporary = os.path.join(parent, f".tmp-{os.path.basename(path)}-{uuid.uuid4().hex[:12]}")
        if folder:
            os.mkdir(temporary)  # with the umask's permissions, as the folder written directly would have
        else:
            os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        write(temporary)
        if folder:
            _replace_folder(temporary, path)
        else:
            os.replace(temporary, path)
    except WRITE_ERRORS as e:
        if temporary:
            remove(temporary)
        raise WriteFailed(path, needed, e) from e


def _replace_folder(new: str, path: str) -> None:
    """Folders cannot be swapped in one rename: the old one steps aside first, and goes once the new one is in."""
    old = None
    if os.path.exists(path):
        old = f"{new}.old"
        os.rename(path, old)
    os.rename(new, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def write_text(path: str, text: str) -> None:
    data = text.encode()
    write_atomically(path, lambda temporary: _write_bytes(temporary, data), len(data))


def write_json(path: str, obj, **options) -> None:
    write_text(path, json.dumps(obj, indent=2, **options) + "\n")


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def append_whole(path: str, text: str) -> None:
    """text appended to the file at `path` entirely or, failing that, not at all (the file is cut back)."""
    data = text.encode()
    with open(path, "ab") as f:
        end = f.tell()
        try:
            f.write(data)
            f.flush()
        except OSError as e:
            f.truncate(end)
            raise WriteFailed(path, len(data), e) from e


def save_tensors(obj, path: str) -> None:
    """torch.save(obj) to `path`, written atomically, with the OS error torch.save would lose in its message."""
    write_atomically(path, lambda temporary: _torch_save(obj, temporary), tensor_bytes(obj))


class _KeepsWriteError:
    """A file object for torch.save that remembers the OSError of a failed write (torch.save's C++ writer replaces
    it by an assertion about its position)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self):
        self.f.flush()


def _torch_save(obj, path: str) -> None:
    with open(path, "wb") as f:
        recording = _KeepsWriteError(f)
        try:
            torch.save(obj, recording)
            f.flush()
        except RuntimeError:
            if recording.error:
                raise recording.error from None
            raise
