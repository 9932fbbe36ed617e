"""Writes that are whole or absent, and the one line a failed write gives: on a real full file system (a small
tmpfs, see conftest.small_disk) and with errors a full disk or a quota raise."""
import errno
import json
import os

import pytest
import torch

from ssl_scripts.runtime import files


def entries(path):
    return sorted(p.name for p in path.iterdir() if p.name != ".ballast")


def test_a_file_written_onto_a_full_disk_leaves_the_previous_version_and_no_temporary(small_disk):
    target = small_disk.path / "results.json"
    files.write_json(str(target), {"version": 1})
    small_disk.fill()
    bigger = {"version": 2, "padding": "x" * 100_000}
    with pytest.raises(files.WriteFailed) as failed:
        files.write_json(str(target), bigger)
    message = str(failed.value)
    assert str(target) in message and "no space left on device" in message
    needed = len(json.dumps(bigger, indent=2)) + 1
    assert f"it needs about 97.7 KiB ({needed} bytes)" in message and "0 bytes free" in message, message
    assert json.loads(target.read_text()) == {"version": 1}
    assert entries(small_disk.path) == ["results.json"]

    small_disk.free()
    files.write_json(str(target), {"version": 3})
    assert json.loads(target.read_text()) == {"version": 3} and entries(small_disk.path) == ["results.json"]


def test_a_folder_written_onto_a_full_disk_leaves_the_previous_one(small_disk):
    final = small_disk.path / "final"

    def write(content):
        return lambda folder: [open(os.path.join(folder, f"part{i}"), "wb").write(content) for i in range(3)]

    files.write_atomically(str(final), write(b"old"), 9, folder=True)
    small_disk.fill(leave=64 * 1024)
    with pytest.raises(files.WriteFailed, match="no space left on device"):
        files.write_atomically(str(final), write(b"n" * 50_000), 150_000, folder=True)
    assert entries(small_disk.path) == ["final"] and (final / "part2").read_bytes() == b"old"

    small_disk.free()
    files.write_atomically(str(final), write(b"new"), 9, folder=True)
    assert entries(small_disk.path) == ["final"] and sorted(os.listdir(final)) == ["part0", "part1", "part2"]
    assert (final / "part0").read_bytes() == b"new"


def test_torch_save_onto_a_full_disk_says_the_disk_is_full(small_disk):
    """torch.save replaces the OS error by "unexpected pos ..."; save_tensors keeps it."""
    small_disk.fill(leave=256 * 1024)
    tensors = {"images": torch.zeros(1 << 20, dtype=torch.uint8)}
    with pytest.raises(files.WriteFailed) as failed:
        files.save_tensors(tensors, str(small_disk.path / "cache.pt"))
    assert failed.value.reason == "no space left on device"
    assert failed.value.needed == 1 << 20
    assert entries(small_disk.path) == []


def test_a_line_appended_onto_a_full_disk_is_not_left_in_part(small_disk):
    log = small_disk.path / "metrics.jsonl"
    log.write_text('{"step": 1}\n')
    small_disk.fill(leave=4096)  # room for part of the line: the append must take all of it back
    with pytest.raises(files.WriteFailed):
        files.append_whole(str(log), json.dumps({"step": 2, "pad": "x" * 20_000}) + "\n")
    assert log.read_text() == '{"step": 1}\n'


@pytest.mark.parametrize("error, said", [
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded"),
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
    (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
     "no space left on device"),
    (OSError(errno.EIO, "Input/output error"), "Input/output error"),
])
def test_write_errors_are_said_in_words_and_the_temporary_removed(tmp_path, error, said):
    def write(temporary):
        open(temporary, "w").write("half")
        raise error

    with pytest.raises(files.WriteFailed) as failed:
        files.write_atomically(str(tmp_path / "out.json"), write, 1234)
    assert failed.value.reason == said
    assert "it needs about 1.2 KiB (1234 bytes)" in str(failed.value)
    assert os.listdir(tmp_path) == []


def test_a_lost_os_error_on_a_disk_with_less_room_than_needed_is_called_a_full_disk(tmp_path):
    free = files.free_bytes(str(tmp_path))
    assert files.reason(RuntimeError("unexpected pos 576 vs 534"), free + 1, free).startswith("no space left")
    assert files.reason(RuntimeError("unexpected pos 576 vs 534"), 10, free) == "unexpected pos 576 vs 534"


def test_sizes_read_well():
    assert files.size(512) == "512 bytes"
    assert files.size(3 * 2 ** 20) == "3.0 MiB (3145728 bytes)"
    assert files.tensor_bytes({"a": torch.zeros(4), "b": [torch.zeros(2, dtype=torch.int64), 7]}) == 32
