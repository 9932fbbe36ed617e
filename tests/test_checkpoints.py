"""Checkpoints (common/checkpoints.py) as the Run writes and chooses them."""
import os

import pytest

from common import UserError
from common.checkpoints import list_checkpoints, verify_checkpoint
from conftest import toy_run, toy_train


def test_incomplete_checkpoints_are_ignored(tmp_path):
    toy_train(tmp_path, stop_after=4)
    os.rename(tmp_path / "checkpoints" / "step_00000003", tmp_path / "checkpoints" / ".tmp-step_00000006")
    assert list_checkpoints(tmp_path) == []
    _, run = toy_train(tmp_path, stop_after=1)
    assert run.state.step == 1


def test_resume_never_refuses_a_dir_with_checkpoints(tmp_path):
    toy_train(tmp_path, stop_after=3)
    with pytest.raises(UserError, match="--resume auto"):
        toy_run(tmp_path, "--resume", "never")


def test_a_checkpoint_of_other_options_is_refused_naming_them(tmp_path):
    toy_train(tmp_path, stop_after=3)
    with pytest.raises(UserError, match=r"batch_size 8 in the checkpoint, 16 now"):
        toy_run(tmp_path, "--batch-size", "16")


def test_a_damaged_checkpoint_is_replaced_when_its_step_is_trained_again(tmp_path):
    toy_train(tmp_path, stop_after=7)  # checkpoints at 3 and 6
    damaged = tmp_path / "checkpoints" / "step_00000006" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    toy_train(tmp_path, stop_after=7)  # resumes from 3 (6 is damaged) and trains step 6 again
    assert verify_checkpoint(str(damaged.parent)) is None
    assert not list((tmp_path / "checkpoints").glob(".old-*"))
