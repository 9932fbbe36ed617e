"""What the tests share, by concern; every name is here too, so a test reads `from helpers import X`.

scripts: the real commands run as users run them. holds: a kill at a held moment, the indices each step took.
runs: in-process toy runs around the real Run. images, dataset_files: image files as users and torchvision have
them. disk: a small file system to fill, a folder by hash. host_waits: what would make the host wait for a GPU.
wandb_runs: offline W&B runs read back. required: what CI requires instead of a skip. probes/: scripts the tests
launch (not imported).
"""
from helpers.dataset_files import (CIFAR10_CLASSES, CIFAR100_COARSE, CIFAR100_FINE, STL10_CLASSES,
                                   checksum_skipping_env, checksums_skipped, downloads_refused, write_cifar10,
                                   write_cifar100, write_stl10)
from helpers.disk import SmallDisk, tree_contents
from helpers.holds import killed_when_held, steps_of
from helpers.host_waits import HostWaits
from helpers.images import write_image_folder, write_unlabeled_images
from helpers.required import REQUIRE_SMALL_DISK, required_by
from helpers.runs import exited, parse, prepared_run, task_toy_run, toy_run, toy_steps, toy_train, training_accelerator
from helpers.scripts import (REPO, SMALL, TESTS, TRACKED, accelerate_command, accelerate_launch, free_port,
                             python_script, run_script, subprocess_pythonpath)
from helpers.wandb_runs import wandb_read, wandb_runs

__all__ = [
    "CIFAR10_CLASSES", "CIFAR100_COARSE", "CIFAR100_FINE", "STL10_CLASSES", "checksum_skipping_env",
    "checksums_skipped", "downloads_refused", "write_cifar10", "write_cifar100", "write_stl10",
    "SmallDisk", "tree_contents", "killed_when_held", "steps_of", "HostWaits", "write_image_folder",
    "write_unlabeled_images", "REQUIRE_SMALL_DISK", "required_by", "exited", "parse", "prepared_run", "task_toy_run",
    "toy_run", "toy_steps", "toy_train", "training_accelerator", "REPO", "SMALL", "TESTS", "TRACKED",
    "accelerate_command", "accelerate_launch", "free_port", "python_script", "run_script", "subprocess_pythonpath",
    "wandb_read", "wandb_runs",
]
