"""What a run records to be reproduced: its options (config.json) and its environment (code and library
versions, where it ran)."""
import os
import platform
import subprocess

from ssl_scripts.runtime import files


def environment() -> dict:
    """What a run needs to be reproduced beyond its options: code version, library versions, where it ran."""
    import accelerate
    import torch
    import torchvision

    def git(*command):
        try:
            return subprocess.run(["git", *command], cwd=os.path.dirname(os.path.abspath(__file__)),
                                  capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "git_commit": git("rev-parse", "HEAD") or "unknown",
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "accelerate": accelerate.__version__,
        "python": platform.python_version(), "hostname": platform.node(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
    }


def save_config(args, path: str, **extra) -> None:
    """The options (and `extra` values) as a sorted JSON: config.json."""
    files.write_json(path, {**vars(args), **extra}, sort_keys=True)
