"""File systems and folders as tests see them: a small file system to fill, and a folder's contents by hash."""
import os


class SmallDisk:
    """A file system of its own (a 64 MiB tmpfs) to fill: fill() leaves `leave` bytes free, free() frees them."""

    def __init__(self, path):
        self.path, self.ballast = path, path / ".ballast"

    def fill(self, leave: int = 0) -> None:
        import shutil
        self.free()
        take = shutil.disk_usage(self.path).free - leave
        fd = os.open(self.ballast, os.O_CREAT | os.O_WRONLY)
        try:
            os.posix_fallocate(fd, 0, take)
        finally:
            os.close(fd)

    def free(self) -> None:
        if self.ballast.exists():
            self.ballast.unlink()


def tree_contents(folder) -> dict:
    """Every file and folder under `folder`, hidden ones included: {relative path: SHA-256 of its bytes, or "dir"}.
    Equal before and after: nothing was added, removed or overwritten."""
    import hashlib
    seen = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs:
            seen[os.path.relpath(os.path.join(root, name), folder)] = "dir"
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                seen[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(f.read()).hexdigest()
    return seen
