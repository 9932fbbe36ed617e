"""Checkpoints (ssl_scripts/training/checkpoints.py) as the Run writes and chooses them."""
import os

import pytest

from ssl_scripts import UserError
from ssl_scripts.training.checkpoints import list_checkpoints, verify_checkpoint
from helpers import toy_run, toy_train


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


# ------------------------------------------------------------------ verification (manifest.json), on resume
@pytest.mark.parametrize("damage, reason", [
    ("one_byte_flipped", "model.safetensors does not match its checksum (corrupted)"),
    ("file_deleted", "optimizer.bin is missing"),
    ("manifest_deleted", "it has no manifest.json (written last), so it is incomplete"),
], ids=["one_byte_flipped", "file_deleted", "manifest_deleted"])
def test_a_damaged_newest_checkpoint_is_passed_over_for_the_intact_one_before_it(tmp_path, capsys, damage, reason):
    import re
    toy_train(tmp_path, stop_after=7)  # checkpoints at 3 and 6
    newest = tmp_path / "checkpoints" / "step_00000006"
    if damage == "one_byte_flipped":  # the size stays: only the SHA-256 can tell
        model = newest / "model.safetensors"
        data = bytearray(model.read_bytes())
        data[-1] ^= 0xFF
        model.write_bytes(bytes(data))
    else:
        (newest / ("optimizer.bin" if damage == "file_deleted" else "manifest.json")).unlink()
    assert verify_checkpoint(str(newest)) == reason
    capsys.readouterr()
    run, _ = toy_run(tmp_path)
    assert run.state.step == 3  # resumed from step 3, the one before
    assert f"warning: not resuming from {newest}: {reason}; trying the one before" in capsys.readouterr().out
    with pytest.raises(UserError, match=re.escape(f"checkpoint {newest} is damaged: {reason}")):
        toy_run(tmp_path / "other", "--resume", newest)  # named explicitly: refused


# ------------------------------------------------------------------ compatibility: each field, nothing overwritten
@pytest.mark.parametrize("task, options, differs", [
    ("rotation", ["--model", "simple_cnn", "--optimizer", "sgd"], "model 'resnet18' in the checkpoint, "
                                                                        "'simple_cnn' now"),
    ("rotation", ["--image-size", "16"], "image_size 32 in the checkpoint, 16 now"),
    ("rotation", ["--optimizer", "adamw"], "optimizer 'sgd' in the checkpoint, 'adamw' now"),
    ("rotation", ["--batch-size", "16"], "batch_size 8 in the checkpoint, 16 now"),
    ("rotation", ["--dataset", "synthetic"], "dataset 'cifar10' in the checkpoint, 'synthetic' now"),
    ("rotation", ["--synthetic-size", "512"], "synthetic_size 1024 in the checkpoint, 512 now"),
    ("rotation", ["--seed", "1"], "seed 0 in the checkpoint, 1 now"),
    ("rotation", ["--rotations-per-image", "1"], "rotations_per_image 4 in the checkpoint, 1 now"),
    ("siamese", ["--pairs", "augment"], "pairs 'label' in the checkpoint, 'augment' now"),
    ("siamese", ["--embedding-dim", "64"], "embedding_dim 128 in the checkpoint, 64 now"),
    ("siamese", ["--method", "simclr"], "pairs 'label' in the checkpoint, 'augment' now; method 'contrastive' in the "
                                        "checkpoint, 'simclr' now"),
    ("rotation", ["task=siamese"], "task 'rotation' in the checkpoint, 'siamese' now"),
], ids=["model", "image_size", "optimizer", "batch_size", "dataset", "synthetic_size", "seed", "rotations_per_image",
        "pairs", "embedding_dim", "method", "task"])
def test_a_resume_with_any_must_match_option_changed_is_refused_naming_it_and_overwrites_nothing(
        tmp_path, task, options, differs):
    # Each field of checkpoints.MUST_MATCH and of the task's must_match, one at a time, through a Run given the
    # task's must_match as the loop gives it ("task=NAME": the same output dir resumed by another task).
    from helpers import exited, task_toy_run, toy_steps, tree_contents
    run, model = task_toy_run(task, tmp_path)
    toy_steps(run, model, stop_after=4)  # a checkpoint at 3, and files written after it (metrics, config)
    exited(tmp_path)
    before = tree_contents(tmp_path)
    with pytest.raises(UserError) as refused:
        if options[0].startswith("task="):
            task_toy_run(options[0][len("task="):], tmp_path)
        else:
            task_toy_run(task, tmp_path, *options)
    exited(tmp_path)
    checkpoint = tmp_path / "checkpoints" / "step_00000003"
    assert str(refused.value) == (f"checkpoint {checkpoint} was written with other options ({differs}): run with the "
                                  f"checkpoint's options, or start a new training with another --output-dir")
    assert tree_contents(tmp_path) == before  # every file's bytes, the checkpoints' included


@pytest.mark.parametrize("image_size, refused", [(96, True), (32, False)])
def test_a_checkpoint_of_the_old_cifar_stem_is_refused_where_the_stem_changed(tmp_path, image_size, refused):
    """resnet18's stem follows the image size (the CIFAR stem up to 64 px), recorded in each checkpoint's
    config.json. One written before (no "stem") had the CIFAR stem at every size: refused at 96 px, resumed at 32."""
    import json
    from ssl_scripts.training.checkpoints import write_manifest
    from helpers import exited, tree_contents
    toy_train(tmp_path, "--image-size", image_size, stop_after=4)  # toy_run's model, resnet18 in the options
    exited(tmp_path)
    checkpoint = tmp_path / "checkpoints" / "step_00000003"
    config = json.loads((checkpoint / "config.json").read_text())
    recorded = config.pop("stem", None)  # as the checkpoints written before it was recorded
    (checkpoint / "config.json").write_text(json.dumps(config))
    (checkpoint / "manifest.json").unlink()
    write_manifest(str(checkpoint))
    before = tree_contents(tmp_path)
    if not refused:
        run, _ = toy_run(tmp_path)  # at 32 px the old stem is this version's: resumed
        assert run.state.step == 3 and recorded == "cifar"
        return
    with pytest.raises(UserError) as refusal:
        toy_run(tmp_path, "--image-size", image_size)
    exited(tmp_path)
    assert "\n" not in str(refusal.value)
    assert str(refusal.value).startswith(f"checkpoint {checkpoint} holds resnet18 with the CIFAR stem")
    assert tree_contents(tmp_path) == before
    assert recorded == "imagenet"


# ------------------------------------------------------------------ stops and splits
def test_sigterm_too_saves_a_checkpoint_and_raises_preempted(tmp_path):
    # scancel and Slurm's time limit send SIGTERM, not SIGUSR1. A handler of this test's stands before the Run's:
    # if the Run did not take SIGTERM over, the signal lands there (and does not kill pytest).
    import signal
    import torch
    from ssl_scripts import Preempted
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        run, model = toy_run(tmp_path, "--checkpoint-every", "100")
        with pytest.raises(Preempted, match="stopping on SIGTERM at step 5: checkpoint saved"):
            for _ in run.epochs():
                for indices in run.batches():
                    if run.state.step == 4:
                        os.kill(os.getpid(), signal.SIGTERM)
                    run.end_batch(images=len(indices), samples=len(indices), loss=torch.tensor(1.0))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert [os.path.basename(c) for c in list_checkpoints(tmp_path)] == ["step_00000005"]


def test_a_resume_onto_a_split_the_batch_does_not_divide_into_stops_with_one_line_and_overwrites_nothing(tmp_path):
    # --batch-size is the global batch: a checkpoint of 1 process x 1 accumulation step (batch 8) resumed as 1 x 3
    # would train 6 samples a step. The same check (micro_batch_size) guards another number of processes.
    from ssl_scripts.data.loader import micro_batch_size
    from helpers import exited, tree_contents
    _, run = toy_train(tmp_path, stop_after=4)
    exited(tmp_path)
    before = tree_contents(tmp_path)
    with pytest.raises(UserError) as refused:
        toy_run(tmp_path, "--grad-accum", "3")
    exited(tmp_path)
    assert str(refused.value) == ("--batch-size 8 (images per optimizer step, over all processes) does not divide "
                                  "into 1 processes x 3 accumulation steps: use a multiple of 3")
    assert tree_contents(tmp_path) == before
    with pytest.raises(UserError, match=r"^--batch-size 8 \(.*\) does not divide into 3 processes x 1 accumulation "
                                        r"steps: use a multiple of 3$"):
        micro_batch_size(run.args, 3)  # what the loader asks for on a resume to 3 processes
    assert micro_batch_size(run.args, 2) == 4


@pytest.mark.e2e
def test_ranks_a_resume_adds_draw_their_augmentations_from_seed_step_and_rank(tmp_path):
    """A checkpoint of 1 process resumed on 2 (gloo): rank 1 has no saved random state; its augmentations come from
    set_seed((seed * 1_000_003 + step * 1009 + rank) % 2**32): the same on two resumes from one checkpoint, other
    ones from another step. One launch, three resumes (each into an output dir of its own). The draws are compared
    on one reference batch (what the first micro-batch's augmentation draws, without its samples' pixels)."""
    import json
    import torch
    from accelerate.utils import set_seed
    from ssl_scripts.data.augment import crop_flip
    from helpers import accelerate_command, exited, run_script
    toy_train(tmp_path / "source", stop_after=7)  # checkpoints at 3 and 6, of 1 process
    exited(tmp_path / "source")
    step3, step6 = (tmp_path / "source" / "checkpoints" / f"step_0000000{s}" for s in (3, 6))
    probe = tmp_path / "probe.py"
    probe.write_text("""
import json, os, sys
import torch
from ssl_scripts.data.augment import AUGMENTATIONS
from helpers import toy_run
out, seen = sys.argv[1], {}
images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
for name, checkpoint in zip(sys.argv[2::2], sys.argv[3::2]):
    run, _ = toy_run(os.path.join(out, name), "--resume", checkpoint, "--augment", "crop_flip")
    for _ in run.epochs():
        for indices in run.batches():  # the first micro-batch after the resume: its augmentation's draws
            seen[name] = dict(step=run.state.step, augmented=AUGMENTATIONS[run.args.augment](
                images[:len(indices)]).tolist())
            break
        break
    run.accelerator.wait_for_everyone()
with open(os.path.join(out, f"rank{run.accelerator.process_index}.json"), "w") as f:
    json.dump(seen, f)
""")
    result = run_script(accelerate_command(str(probe), tmp_path, "a", step3, "again", step3, "later", step6,
                                           num_processes=2), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the augmentations of ranks 1 and above are seeded by (seed, step, rank)" in result.stdout
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert (rank1["a"]["step"], rank1["later"]["step"]) == (3, 6)
    assert rank1["a"] == rank1["again"]  # a resume from the same checkpoint: the same augmentations
    assert rank1["later"]["augmented"] != rank1["a"]["augmented"], "another step, the same draws"
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for name, step in (("a", 3), ("later", 6)):  # drawn from the seed of (seed 0, step, rank 1), nothing else
        set_seed((0 * 1_000_003 + step * 1009 + 1) % 2 ** 32)
        assert crop_flip(images[:4]).tolist() == rank1[name]["augmented"], f"{name}: not seeded by (0, {step}, 1)"
    # rank 0, which the checkpoint holds, goes on with its own saved random state
    torch.set_rng_state(torch.load(step3 / "random_states_0.pkl", weights_only=False)["torch_manual_seed"])
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    assert crop_flip(images[:4]).tolist() == rank0["a"]["augmented"], "rank 0 did not keep its saved random state"


@pytest.mark.parametrize("contents, says", [
    ((), "is not a checkpoint (no manifest.json, no model files)"),
    (("notes.txt",), "is not a checkpoint (no manifest.json, no model files)"),
    (("model.safetensors", "optimizer.bin"), "is damaged: it has no manifest.json"),
], ids=["empty", "other_files", "checkpoint_files"])
def test_resume_path_without_a_manifest_is_not_a_checkpoint_unless_it_holds_checkpoint_files(
        tmp_path, contents, says):
    from types import SimpleNamespace
    from ssl_scripts.training.checkpoints import choose
    folder = tmp_path / "somewhere"
    folder.mkdir()
    for name in contents:
        (folder / name).write_bytes(b"x")
    with pytest.raises(UserError) as refused:
        choose(SimpleNamespace(output_dir=str(tmp_path / "out"), resume=str(folder)))
    assert says in str(refused.value)
    if "not a checkpoint" in says:
        assert "OUTPUT_DIR/checkpoints/step_N" in str(refused.value) and "leave --resume out" in str(refused.value)
