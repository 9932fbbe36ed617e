"""ssl_scripts/outputs/final.py in-process: final/ and results.json whole or absent on a full disk (a small tmpfs,
see conftest's small_disk), the one line that says what to do, and a finished run recognised by both."""
import json
import os
import shutil

import pytest
import torch
from accelerate import Accelerator

from ssl_scripts import UserError
from ssl_scripts.models.encoders import build_encoder, load_encoder
from ssl_scripts.outputs import final
from helpers import parse, tree_contents

RESULTS = {"steps": 8, "images_per_s": 100.0, "eval/knn_acc": 0.5}


def finish(output_dir, results=RESULTS, seed=0):
    """write_final as the loop calls it at the end of a run; returns the encoder it wrote."""
    torch.manual_seed(seed)
    encoder = build_encoder("simple_cnn")
    final.write_final(Accelerator(cpu=True), parse(["--output-dir", output_dir, "--report-to", "none"]), encoder,
                      dict(results))
    return encoder


def test_final_onto_a_full_disk_leaves_no_final_and_says_what_to_do_in_one_line(small_disk, capsys):
    out = small_disk.path / "out"
    out.mkdir()
    small_disk.fill(leave=48 * 1024)  # the encoder of final/ is 82 KB
    with pytest.raises(UserError) as failed:
        finish(out)
    message = str(failed.value)
    assert "\n" not in message and message.startswith(f"could not write {str(out / 'final')!r}: no space left"), \
        message
    assert message.endswith("free on its file system. Training is done and its last checkpoint saved: once there is "
                            "room, the same command writes final/ and results.json (evaluating the final encoder "
                            "again)"), message
    assert tree_contents(out) == {}  # no final/, no temporary of it, no results.json
    assert "done:" not in capsys.readouterr().out

    small_disk.free()  # the same command, once there is room: both written, the run finished
    encoder = finish(out)
    assert sorted(os.listdir(out)) == ["final", "results.json"] and "done: 8 steps" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text()) == RESULTS
    loaded = load_encoder(str(out / "final"))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in encoder.state_dict().items())


def test_final_written_again_onto_a_full_disk_leaves_the_previous_one_whole(small_disk):
    out = small_disk.path / "out"
    finish(out)
    before = tree_contents(out)
    small_disk.fill(leave=48 * 1024)
    with pytest.raises(UserError, match="no space left on device"):
        finish(out, {**RESULTS, "steps": 12}, seed=1)  # a longer run's final/, e.g. after a larger --max-steps
    assert tree_contents(out) == before


def test_a_finished_run_is_one_whose_final_and_results_are_both_written_at_its_step(tmp_path, capsys):
    out = tmp_path / "out"
    args = parse(["--output-dir", out, "--report-to", "none"])
    accelerator = Accelerator(cpu=True)
    assert final.finished_results(accelerator, args, 8) is None  # nothing written yet
    finish(out)
    capsys.readouterr()
    assert final.finished_results(accelerator, args, 8) == RESULTS
    assert capsys.readouterr().out == (f"{out} holds a finished run (8 steps): its results are in "
                                       f"{out / 'results.json'}, nothing is redone (a larger --max-steps or "
                                       f"--epochs trains on; another --output-dir starts anew)\n")
    assert final.finished_results(accelerator, args, 12) is None  # trained on since: not this run's results
    shutil.rmtree(out / "final")  # results.json alone (final/ failed, e.g. removed by hand): written again
    assert final.finished_results(accelerator, args, 8) is None
    (out / "results.json").write_text("{not json")
    assert final.finished_results(accelerator, args, 8) is None and capsys.readouterr().out == ""
