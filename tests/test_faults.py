"""Faults and bad input, on the real scripts: kills, damaged checkpoints, non-finite gradients, incompatible
resumes, exact resume, one-vs-two-process equivalence, and bad input on both entry points."""
import json
import os
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from ssl_scripts import UserError
from ssl_scripts.training.checkpoints import verify_checkpoint
from ssl_scripts.models.encoders import load_encoder

from helpers import (REPO, SMALL, accelerate_command, accelerate_launch, killed_when_held, python_script, run_script,
                      steps_of)


def checkpoints(out):
    return sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))


def weights(checkpoint):
    return load_file(str(checkpoint / "model.safetensors"))


def errors(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.e2e
def test_sigkill_inside_a_checkpoint_write_leaves_a_resumable_run(tmp_path):
    out = tmp_path / "run"
    command = accelerate_command("train_rotation.py", *SMALL, "--max-steps", "12", "--checkpoint-every", "1",
                                 "--keep-checkpoints", "2", "--output-dir", out, num_processes=2)
    killed_when_held(command, out, "checkpoint@8")  # step 8's files written, its manifest not yet
    partial = out / "checkpoints" / ".tmp-step_00000008"
    assert (partial / "model.safetensors").exists() and not (partial / "manifest.json").exists()
    assert checkpoints(out) == [6, 7] and not (out / "results.json").exists()
    again = run_script(command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'step_00000007'} at step 7 " in again.stdout
    assert json.loads((out / "results.json").read_text())["steps"] == 12


@pytest.mark.e2e
def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_one_used(tmp_path):
    out = tmp_path / "run"
    first = python_script("train_rotation.py", *SMALL, "--max-steps", "6", "--checkpoint-every", "2",
                          "--skip-eval", "--output-dir", out)
    assert first.returncode == 0, first.stderr[-3000:]
    assert checkpoints(out) == [2, 4, 6]
    model = out / "checkpoints" / "step_00000006" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])  # truncated, as a full disk or a kill mid-copy would leave it

    damaged = python_script("train_rotation.py", *SMALL, "--max-steps", "6", "--checkpoint-every", "2",
                            "--skip-eval", "--output-dir", out, "--resume", str(model.parent))
    assert damaged.returncode == 2 and len(errors(damaged)) == 1 and "is damaged" in errors(damaged)[0]

    again = python_script("train_rotation.py", *SMALL, "--max-steps", "8", "--checkpoint-every", "2",
                          "--skip-eval", "--output-dir", out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "not resuming from" in again.stdout and "model.safetensors has 1000 bytes" in again.stdout
    assert "resumed from" in again.stdout and "step_00000004 at step 4" in again.stdout


@pytest.mark.e2e
def test_a_checkpoint_of_other_options_is_refused_naming_the_fields(tmp_path):
    out = tmp_path / "run"
    first = python_script("train_siamese.py", *SMALL, "--max-steps", "2", "--skip-eval", "--output-dir", out)
    assert first.returncode == 0, first.stderr[-3000:]
    before = sorted(os.listdir(out))
    other = python_script("train_siamese.py", *SMALL, "--max-steps", "4", "--skip-eval", "--output-dir", out,
                          "--batch-size", "16", "--embedding-dim", "64")
    assert other.returncode == 2 and len(errors(other)) == 1
    message = errors(other)[0]
    assert "batch_size 32 in the checkpoint, 16 now" in message and "embedding_dim 128" in message
    assert "Traceback" not in other.stderr and sorted(os.listdir(out)) == before
    longer = python_script("train_siamese.py", *SMALL, "--max-steps", "4", "--skip-eval", "--output-dir", out,
                           "--lr", "0.0005")  # a new budget or lr is fine
    assert longer.returncode == 0, longer.stderr[-3000:]


@pytest.mark.e2e
@pytest.mark.parametrize("policy", ["abort", "skip"])
def test_non_finite_gradients_on_one_rank_are_decided_by_all(tmp_path, policy):
    out = tmp_path / policy
    result = accelerate_launch("train_rotation.py", *SMALL, "--max-steps", "8", "--checkpoint-every", "1",
                               "--keep-checkpoints", "10", "--log-every", "1", "--skip-eval", "--nan-policy", policy, "--output-dir", out,
                               num_processes=2, env={"SSL_SCRIPTS_FAULT": "nan@5:1"}, timeout=300)  # rank 1 only
    if policy == "abort":
        assert result.returncode != 0 and not (out / "results.json").exists()
        assert errors(result) and "non-finite loss or gradients at step 5" in errors(result)[0]
        assert "step_00000004" in errors(result)[0] and checkpoints(out) == [1, 2, 3, 4]
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [line.get("train/skipped_steps", 0) for line in lines if "train/loss" in line] == [0] * 4 + [1] * 4
        assert json.loads((out / "results.json").read_text())["steps"] == 8
        w4, w5, w6 = (weights(out / "checkpoints" / f"step_0000000{k}") for k in (4, 5, 6))
        assert all(torch.equal(w4[n], w5[n]) for n in w4)  # step 5 was skipped on both ranks alike...
        assert not all(torch.equal(w5[n], w6[n]) for n in w5)  # ...and training went on


@pytest.mark.e2e
@pytest.mark.parametrize("script, processes, placement", [
    ("train_rotation.py", 1, "device"), ("train_rotation.py", 2, "device"), ("train_siamese.py", 1, "device"),
    ("train_siamese.py", 2, "device"), ("train_siamese.py", 2, "host")])
def test_deterministic_resume_ends_bitwise_identical(tmp_path, script, processes, placement):
    options = [*SMALL, "--max-steps", "12", "--checkpoint-every", "4", "--skip-eval", "--deterministic",
               "--data-placement", placement]
    whole = accelerate_launch(script, *options, "--output-dir", tmp_path / "whole", num_processes=processes)
    assert whole.returncode == 0, whole.stderr[-3000:]

    out = tmp_path / "cut"
    killed_when_held(accelerate_command(script, *options, "--output-dir", out, num_processes=processes), out,
                     "step@6")  # after the checkpoint of step 4, before that of step 8
    assert checkpoints(out) == [4] and not (out / "results.json").exists()
    resumed = accelerate_launch(script, *options, "--output-dir", out, num_processes=processes)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 4 " in resumed.stdout and "resumed from" in resumed.stdout

    final_whole = weights(tmp_path / "whole" / "checkpoints" / "step_00000012")
    final_cut = weights(out / "checkpoints" / "step_00000012")
    assert all(torch.equal(final_whole[name], final_cut[name]) for name in final_whole)


@pytest.mark.e2e
@pytest.mark.parametrize("script, extra", [
    ("train_rotation.py", []), ("train_siamese.py", []),
    # NT-Xent's negatives are the other views of the global batch: gathered from both processes, with gradients
    ("train_siamese.py", ["--method", "simclr", "--deterministic"])],
    ids=["rotation", "siamese-contrastive", "siamese-ntxent"])
def test_one_process_and_two_with_the_same_batch_size_take_the_same_first_step(tmp_path, script, extra):
    # No augmentation (its draws are per process by design); simple_cnn has no batch norm (per-process statistics).
    # --batch-size 32 is the global batch: 32 images in one process, 16 in each of two. The initial weights are
    # the same (rank 0's, seeded alike), and one SGD step (Nesterov, momentum 0.9, no weight decay) moves them by
    # lr * 1.9 * gradient: the step-1 weights differ by lr * 1.9 * the gradients' difference.
    options = [*SMALL, "--augment", "none", "--optimizer", "sgd", "--lr", "0.5", "--weight-decay", "0",
               "--max-steps", "1", "--log-every", "1", "--skip-eval", *extra]
    runs = {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        result = accelerate_launch(script, *options, "--output-dir", out, num_processes=processes)
        assert result.returncode == 0, result.stderr[-3000:]
        logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        runs[processes] = logged, weights(out / "checkpoints" / "step_00000001")
    (logged1, w1), (logged2, w2) = runs[1], runs[2]
    assert abs(logged1["train/loss"] - logged2["train/loss"]) < 1e-5
    assert logged1["train/grad_norm"] > 0.01  # the step moved the weights
    for name in w1:
        assert (w1[name] - w2[name]).abs().max().item() / (0.5 * 1.9) < 1e-5, name


@pytest.mark.parametrize("script, make, options, message", [
    ("train_rotation.py", "missing", [], "does not exist"),
    ("train_siamese.py", "empty", [], "no train/ folder"),
    ("train_rotation.py", "corrupt", [], "cannot read image"),
    ("train_siamese.py", "test_only_class", [], "have no train/ folder"),
    ("train_rotation.py", "good", ["--output-dir", "/proc/forbidden"], "cannot write to output dir"),
    ("train_siamese.py", "good", ["--lr", "0"], "--lr must be > 0"),
    ("train_rotation.py", "good", ["--batch-size", "0"], "--batch-size must be >= 1"),
    ("train_siamese.py", "good", ["--knn-k", "500"], "--knn-k 500 is larger than the evaluation's train split"),
    ("train_siamese.py", "good", ["--positive-fraction", "-0.1"], "--positive-fraction must be within [0, 1]"),
    ("train_rotation.py", "good", ["--model", "vgg"], "unknown model"),
])
@pytest.mark.e2e
def test_bad_input_is_one_clear_line_and_overwrites_nothing(tmp_path, image_folder, script, make, options,
                                                            message):
    from PIL import Image
    root = image_folder
    if make == "missing":
        root = tmp_path / "nowhere"
    elif make == "empty":
        root = tmp_path / "empty"
        root.mkdir()
    elif make == "corrupt":
        (image_folder / "train" / "cat" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    elif make == "test_only_class":
        (image_folder / "test" / "bird").mkdir()
        Image.new("RGB", (8, 8)).save(image_folder / "test" / "bird" / "0.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("keep me")
    result = python_script(script, "--dataset", "imagefolder", "--data-dir", root, "--cache-dir", tmp_path / "c",
                           "--model", "simple_cnn", "--report-to", "none", "--output-dir", out, *options)
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors(result)) == 1 and message in errors(result)[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert os.listdir(out) == ["results.json"] and (out / "results.json").read_text() == "keep me"


@pytest.mark.e2e
@pytest.mark.parametrize("first, then", [((2, 1), (1, 2)), ((1, 2), (2, 1))])
def test_a_run_resumed_on_another_number_of_processes_trains_on_the_same_samples(tmp_path, first, then):
    """(processes, --grad-accum) before and after the resume; --batch-size 32 stays the global batch."""
    options = [*SMALL, "--augment", "none", "--checkpoint-every", "4", "--log-every", "4", "--skip-eval"]

    def launch(name, processes, accum, steps):
        result = accelerate_launch("train_rotation.py", *options, "--max-steps", steps, "--grad-accum", accum,
                                   "--output-dir", tmp_path / name, num_processes=processes,
                                   env={"SSL_SCRIPTS_RECORD_INDICES": str(tmp_path / f"{name}-{processes}")})
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    launch("whole", 2, 1, 8)
    launch("cut", *first, 4)  # stopped after the checkpoint of step 4
    resumed = launch("cut", *then, 8)
    assert f"resuming a run of {first[0]} process(es) x {first[1]} accumulation step(s) on {then[0]} x {then[1]}" \
        in resumed.stdout and "resumed from" in resumed.stdout

    whole = steps_of(tmp_path / "whole-2", 2)
    before, after = steps_of(tmp_path / f"cut-{first[0]}", first[0]), steps_of(tmp_path / f"cut-{then[0]}", then[0])
    assert sorted(before) == [1, 2, 3, 4] and sorted(after) == [5, 6, 7, 8]
    assert {**before, **after} == whole and all(len(indices) == 32 for indices in whole.values())

    final_whole = weights(tmp_path / "whole" / "checkpoints" / "step_00000008")
    final_cut = weights(tmp_path / "cut" / "checkpoints" / "step_00000008")
    for name in final_whole:
        torch.testing.assert_close(final_cut[name], final_whole[name], rtol=1e-4, atol=1e-5)
    losses = [[json.loads(line)["train/loss"] for line in open(tmp_path / run / "metrics.jsonl")
               if '"train/loss"' in line][-1] for run in ("whole", "cut")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


# ---------------------------------------------------------------------------------- a full disk (a small tmpfs)
def leftovers(folder):
    """Temporaries a failed write could leave (files.write_atomically, checkpoints.save)."""
    return [str(p) for p in folder.rglob("*") if p.name.startswith((".tmp-", ".old-"))]


@pytest.mark.e2e
def test_a_full_disk_at_the_start_is_one_line_and_leaves_nothing(small_disk):
    out = small_disk.path / "out"
    small_disk.fill()
    result = python_script("train_rotation.py", *SMALL, "--max-steps", "4", "--output-dir", out)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors(result)) == 1 and "no space left on device" in errors(result)[0], result.stderr[-2000:]
    assert str(out / ".run.lock") in errors(result)[0] and "nothing else was written" in errors(result)[0]
    assert os.listdir(out) == []


@pytest.mark.e2e
def test_a_cache_dir_on_a_full_disk_is_one_warning_and_the_next_start_caches(small_disk, image_folder, tmp_path):
    # Two processes: one decodes into a node-local fallback and the other maps it (before, each decoded on its own
    # after the first one's cache failed: one private copy per process).
    cache = small_disk.path / "cache"
    options = ["--dataset", "imagefolder", "--data-dir", image_folder, "--cache-dir", cache, "--model", "simple_cnn",
               "--batch-size", "4", "--knn-k", "5", "--max-steps", "2", "--skip-eval", "--report-to", "none"]
    small_disk.fill()
    full = accelerate_launch("train_rotation.py", *options, "--output-dir", tmp_path / "a", num_processes=2)
    assert full.returncode == 0, full.stderr[-3000:]  # the cache only saves time: the training goes on
    assert full.stdout.count("decoding 18 images") == 1, full.stdout[-3000:]
    warnings = [line for line in full.stdout.splitlines() if "not cached" in line]
    assert len(warnings) == 1 and "no space left on device; it needs about" in warnings[0], full.stdout[-2000:]
    assert str(cache / "imagefolder-") in warnings[0] and os.listdir(cache) == []
    fallback = warnings[0].split("cached for this run in '")[1].split("'")[0]
    assert fallback.startswith("/dev/shm/ssl-scripts/imagefolder-") and not os.path.exists(fallback)  # removed

    small_disk.free()
    again = python_script("train_rotation.py", *options, "--output-dir", tmp_path / "b")
    assert again.returncode == 0 and "not cached" not in again.stdout, again.stderr[-3000:]
    assert [p.suffix for p in cache.iterdir()] == [".pt"]


def test_an_image_cache_that_fits_nowhere_stops_before_decoding(tmp_path, image_folder, monkeypatch):
    from ssl_scripts.data import cache
    from ssl_scripts.runtime import files
    monkeypatch.setattr(files, "free_bytes", lambda path: 1000)
    decoded = []
    with pytest.raises(UserError, match=r"^the decoded images take 17.1 KiB and fit in no cache place of this node "
                                        r"\(free: '.*/cache' 1000 bytes, '/dev/shm/ssl-scripts' 1000 bytes"):
        cache.decoded_once(str(tmp_path / "cache" / "x.pt"), lambda: decoded.append(1), needed=18 * 3 * 18 * 18)
    assert decoded == [] and os.listdir(tmp_path / "cache") == []


@pytest.mark.e2e
def test_a_checkpoint_onto_a_full_disk_stops_every_process_and_resumes_once_there_is_room(small_disk):
    """A checkpoint here is 6.5 MB; 1 MiB is left for it: every process stops after the failed save (none waits
    for the others in a collective), with one line; the earlier checkpoints stay intact and are resumed from."""
    out = small_disk.path / "out"

    def launch(steps):
        return accelerate_launch("train_rotation.py", *SMALL, "--max-steps", steps, "--checkpoint-every", "2",
                                 "--log-every", "1", "--skip-eval", "--output-dir", out, num_processes=2, timeout=300)

    first = launch(4)
    assert first.returncode == 0 and checkpoints(out) == [2, 4], first.stderr[-3000:]
    small_disk.fill(leave=2 ** 20)
    full = launch(8)
    assert full.returncode != 0 and "resumed from" in full.stdout
    assert len(errors(full)) == 1, full.stderr[-3000:]
    assert f"could not write '{out / 'checkpoints' / 'step_00000006'}': no space left on device; it needs about " \
           f"6.3 MiB" in errors(full)[0] and f"resumes from {out / 'checkpoints' / 'step_00000004'}" in errors(full)[0], \
        errors(full)[0]
    assert checkpoints(out) == [2, 4] and leftovers(out) == []
    assert all(verify_checkpoint(str(out / "checkpoints" / f"step_0000000{k}")) is None for k in (2, 4))
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]  # whole lines
    assert sorted(set(logged)) == [1, 2, 3, 4, 5, 6] and logged == sorted(logged)

    small_disk.free()
    again = launch(8)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'step_00000004'}" in again.stdout
    assert checkpoints(out)[-1] == 8 and json.loads((out / "results.json").read_text())["steps"] == 8
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(logged)) == list(range(1, 9)) and logged == sorted(logged)  # cut back to step 4, then on


@pytest.mark.e2e
def test_final_and_results_onto_a_full_disk_are_written_by_the_same_command_once_there_is_room(small_disk):
    """The encoder of final/ is 82 KB; 48 KiB are left for it. The run is done and checkpointed, so the same
    command writes final/ and results.json (evaluating again) once there is room."""
    out = small_disk.path / "out"
    command = ["train_rotation.py", *SMALL, "--max-steps", "4", "--checkpoint-every", "2", "--skip-eval",
               "--output-dir", out]
    first = python_script(*command)
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.rmtree(out / "final")  # as if the disk had filled up before the end of the run
    (out / "results.json").unlink()
    small_disk.fill(leave=48 * 1024)
    full = python_script(*command)
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-3000:]
    assert len(errors(full)) == 1 and f"could not write '{out / 'final'}': no space left on device" in \
        errors(full)[0] and "the same command writes final/ and results.json" in errors(full)[0]
    assert not (out / "final").exists() and not (out / "results.json").exists() and leftovers(out) == []

    small_disk.free()
    again = python_script(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["steps"] == 4
    encoder = load_encoder(str(out / "final"))
    assert sum(p.numel() for p in encoder.parameters()) > 0


@pytest.mark.e2e
def test_a_stop_signal_while_the_images_decode_stops_the_first_step_with_a_checkpoint(tmp_path, image_folder):
    # As under slurm/node.sh: the launcher ignores USR1 and its workers inherit that until they install their
    # handler. A notice that arrives while the data decodes (slowed here) must not be lost: the first step stops.
    import signal
    out = tmp_path / "out"
    command = accelerate_command("train_rotation.py", "--dataset", "imagefolder", "--data-dir", image_folder,
                                 "--cache-dir", tmp_path / "cache", "--model", "simple_cnn", "--batch-size", "4",
                                 "--knn-k", "3", "--max-steps", "6", "--log-every", "3", "--skip-eval",
                                 "--report-to", "none", "--output-dir", out, num_processes=2)
    launch = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", "SSL_SCRIPTS_DECODE_DELAY": "0.3"},
                              preexec_fn=lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN))
    log = []
    for line in launch.stdout:
        log.append(line)
        if line.startswith("decoding 18 images"):
            break
    subprocess.run(["pkill", "-USR1", "-f", f"train_rotation.py .*{out}"], check=True)  # the workers
    log += launch.stdout.readlines()
    launch.wait(timeout=120)
    text = "".join(log)
    assert "stopping on SIGUSR1 at step 1: checkpoint saved" in text, text[-3000:]
    assert checkpoints(out) == [1] and not (out / "results.json").exists()
