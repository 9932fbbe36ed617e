"""Checkpoints in OUTPUT_DIR/checkpoints/step_NNNNNNNN: writing (complete or invisible), the manifest that proves
them intact, and choosing the one to resume from (compatible with the options of the run that resumes).

Every process takes the same path through here whatever it sees on the file system; only the main process
looks there (ranks that branch on what their node sees enter different barriers and hang).
"""
import hashlib
import json
import math
import os
import shutil

from accelerate.utils import gather_object, set_seed
from accelerate.utils.constants import (MODEL_NAME, OPTIMIZER_NAME, RNG_STATE_NAME, SAFE_MODEL_NAME, SCALER_NAME,
                                        SCHEDULER_NAME)

from ssl_scripts import UserError
from ssl_scripts.models import encoders
from ssl_scripts.runtime import files
from ssl_scripts.runtime import distributed
from ssl_scripts.training import instruments
from ssl_scripts.outputs.environment import save_config

PREFIX = "step_"
# Options a checkpoint cannot be resumed under when they changed: the weights' or optimizer state's shapes, the
# data order, or the meaning of the saved position. Others (lr, --max-steps, logging, evaluation) may change, and
# so may the number of processes and --grad-accum: --batch-size is the global batch, which keeps the samples of
# every step (see resume). Each task adds its own (Task.must_match): rotations per image, pairs, ...
MUST_MATCH = ("task", "model", "image_size", "optimizer", "batch_size", "dataset", "synthetic_size", "seed")


def path_of(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, "checkpoints", f"{PREFIX}{step:08d}")


def list_checkpoints(output_dir: str) -> list:
    """Complete checkpoints, oldest first. Incomplete ones keep a '.tmp-' name until renamed."""
    root = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    names = [n for n in os.listdir(root) if n.startswith(PREFIX)]
    return [os.path.join(root, n) for n in sorted(names, key=lambda n: int(n[len(PREFIX):]))]


def save(accelerator, args, step: int, environment: dict, needed: int) -> str:
    """Accelerate's save_state into a temporary folder, renamed once every rank has written. A folder of the same
    step (saved before a resume from an older, maybe damaged, checkpoint) is replaced. Keeps the newest
    --keep-checkpoints. Call on every process.

    A write that fails on any process (a full disk, a quota) removes the temporary folder and raises one UserError
    on every process, the previous checkpoints untouched. needed: about the bytes of the model's and optimizer's
    state, in case there is no checkpoint yet to measure."""
    final = path_of(args.output_dir, step)
    root, name = os.path.split(final)
    tmp, old = os.path.join(root, ".tmp-" + name), os.path.join(root, ".old-" + name)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()

    def state():
        accelerator.save_state(tmp)  # every rank writes its own files (its random states)
        instruments.hold("checkpoint", step)

    def config_and_manifest():
        save_config(args, os.path.join(tmp, "config.json"), world_size=accelerator.num_processes,
                    mixed_precision=accelerator.mixed_precision, environment=environment,
                    stem=encoders.stem_for(args.model, args.image_size))
        write_manifest(tmp)
    # Each gather_object is where every process stops, or none; the first is also where every rank has written
    # its files, so the manifest then checksums them whole.
    failures = [f for f in gather_object([_write_failure(state)]) if f]
    if not failures:
        last = _write_failure(config_and_manifest) if accelerator.is_main_process else None
        failures = [f for f in gather_object([last]) if f]
    if failures:
        _give_up(accelerator, args, final, tmp, failures[0], needed)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.isdir(final):
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        for stale in list_checkpoints(args.output_dir)[:-args.keep_checkpoints]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _write_failure(write):
    """None when write() wrote, else why it could not (a full disk, a quota)."""
    try:
        write()
    except (files.WriteFailed, *files.WRITE_ERRORS) as e:
        return files.reason(e)
    return None


def _give_up(accelerator, args, final: str, tmp: str, failure: str, needed: int) -> None:
    def stop():
        shutil.rmtree(tmp, ignore_errors=True)
        existing = list_checkpoints(args.output_dir)
        if existing:
            then = f"the previous checkpoints are intact: the same command resumes from {existing[-1]}"
        else:
            then = "no checkpoint was saved before: the same command starts the training again"
        needed_now = max([needed] + [files.tree_bytes(p) for p in existing[-1:]])  # the last one: a measure
        problem = files.failure(final, needed_now, failure)
        raise UserError(f"{problem}. Stopped; {then} once there is room (free space, or lower --keep-checkpoints)")
    distributed.on_main_process_for_all(accelerator, stop)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(path: str) -> None:
    """Size and SHA-256 of every file of a checkpoint, written last: what verify_checkpoint checks."""
    listed = {name: {"bytes": os.path.getsize(os.path.join(path, name)), "sha256": _sha256(os.path.join(path, name))}
              for name in sorted(os.listdir(path))}
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump(listed, f, indent=1)


def verify_checkpoint(path: str):
    """None when the checkpoint is complete and intact, else what is wrong with it."""
    try:
        with open(os.path.join(path, "manifest.json")) as f:
            listed = json.load(f)
    except FileNotFoundError:
        return "it has no manifest.json (written last), so it is incomplete"
    except ValueError:
        return "its manifest.json is unreadable"
    for name, expected in listed.items():
        file = os.path.join(path, name)
        if not os.path.exists(file):
            return f"{name} is missing"
        if os.path.getsize(file) != expected["bytes"]:
            return f"{name} has {os.path.getsize(file)} bytes instead of {expected['bytes']} (truncated?)"
        if _sha256(file) != expected["sha256"]:
            return f"{name} does not match its checksum (corrupted)"
    return None


def saved_config(checkpoint: str) -> dict:
    """The options (and world_size) of the run that wrote the checkpoint."""
    with open(os.path.join(checkpoint, "config.json")) as f:
        return json.load(f)


def check_compatible(args, checkpoint: str, saved: dict, must_match=MUST_MATCH) -> None:
    """Refuse a checkpoint written with options (`saved`, its config.json) that change what it holds, naming every
    field that differs."""
    now = vars(args)
    differ = [f"{name} {saved[name]!r} in the checkpoint, {now[name]!r} now" for name in must_match
              if name in saved and name in now and saved[name] != now[name]]
    if differ:
        raise UserError(f"checkpoint {checkpoint} was written with other options ({'; '.join(differ)}): run with "
                        f"the checkpoint's options, or start a new training with another --output-dir")
    # The same model and image size, and the network of another version's stem rule (a checkpoint without "stem"
    # predates it): its weights would not fit the one this run builds.
    now = encoders.stem_for(args.model, args.image_size)
    if encoders.recorded_stem(saved) != now:
        commit = saved.get("environment", {}).get("git_commit", "unknown")
        raise encoders.stem_refusal(f"checkpoint {checkpoint}", saved, now, f"start a new training with another "
                                  f"--output-dir, or resume it with the version that wrote it (git commit {commit})")


def choose(args, must_match=MUST_MATCH):
    """The checkpoint to start from and the options it was written with (its config.json, world_size included):
    with --resume auto the newest intact one (damaged ones are reported and passed over), an explicit path only if
    intact, or (None, None); refused if written with incompatible options."""
    checkpoint = _intact_checkpoint(args)
    if not checkpoint:
        return None, None
    saved = saved_config(checkpoint)
    check_compatible(args, checkpoint, saved, must_match)
    return checkpoint, saved


def _intact_checkpoint(args):
    existing = list_checkpoints(args.output_dir)
    if args.resume == "never":
        if existing:
            raise UserError(f"{args.output_dir!r} already holds checkpoints of a run: pass --resume auto to "
                            f"continue it, or choose a new --output-dir (nothing was overwritten)")
        return None
    if args.resume == "auto":
        for checkpoint in reversed(existing):
            problem = verify_checkpoint(checkpoint)
            if problem is None:
                return checkpoint
            print(f"warning: not resuming from {checkpoint}: {problem}; trying the one before", flush=True)
        return None
    if not os.path.isdir(args.resume):
        raise UserError(f"checkpoint {args.resume!r} does not exist: pass a folder under OUTPUT_DIR/checkpoints/")
    if not _looks_like_a_checkpoint(args.resume):
        raise UserError(f"{args.resume} is not a checkpoint (no manifest.json, no model files): give "
                        f"OUTPUT_DIR/checkpoints/step_N or leave --resume out")
    problem = verify_checkpoint(args.resume)
    if problem:
        raise UserError(f"checkpoint {args.resume} is damaged: {problem}; pass another one or --resume auto")
    return args.resume


def _looks_like_a_checkpoint(path: str) -> bool:
    """A manifest or any file Accelerate's save_state writes: without one the folder is not a checkpoint at all
    (a typo, an output dir), with one and no manifest it is a damaged one."""
    prefixes = (SAFE_MODEL_NAME, MODEL_NAME, OPTIMIZER_NAME, RNG_STATE_NAME, SCHEDULER_NAME, SCALER_NAME)
    return any(name == "manifest.json" or name.startswith(prefixes) for name in os.listdir(path))


def resume(accelerator, args, state, must_match: tuple, batches_per_epoch: int):
    """Loads OUTPUT_DIR's newest intact checkpoint (or --resume's) into the prepared objects and `state` (the
    run's TrainState, registered for checkpointing); returns its path, or None when there is none. A checkpoint
    written by another number of processes or accumulation steps continues on this one (see
    _continue_on_another_split). Verifying a checkpoint reads all of its files: once, on the main process, and
    the options it was written with come with its answer, so no rank reads the file on its own."""
    def decide():
        checkpoint, saved = choose(args, MUST_MATCH + tuple(must_match))
        return checkpoint, saved, bool(checkpoint) and os.path.exists(os.path.join(checkpoint, SCALER_NAME))
    checkpoint, saved, scaler_saved = distributed.on_main_process_for_all(accelerator, decide)
    if not checkpoint:
        return None
    if accelerator.scaler is not None and not scaler_saved:
        _load_without_a_scaler(accelerator, checkpoint, saved)
    else:  # a GradScaler's state saved under fp16 and not needed now is left unread
        accelerator.load_state(checkpoint)
    if (saved["world_size"], saved["grad_accum"]) != (accelerator.num_processes, args.grad_accum):
        _continue_on_another_split(accelerator, args, state, saved["world_size"], saved["grad_accum"],
                                   batches_per_epoch)
    accelerator.print(f"resumed from {checkpoint} at step {state.step} "
                      f"(epoch {state.epoch}, batch {state.batches_in_epoch})")
    return checkpoint


def _load_without_a_scaler(accelerator, checkpoint: str, saved: dict) -> None:
    """fp16 now, and the checkpoint was written under bf16 or no mixed precision: Accelerate would read its
    missing GradScaler state; the scaler starts fresh instead, as at the start of an fp16 run."""
    scaler, accelerator.scaler = accelerator.scaler, None
    try:
        accelerator.load_state(checkpoint)
    finally:
        accelerator.scaler = scaler
    written = repr(saved["mixed_precision"]) if "mixed_precision" in saved else "bf16 or 'no'"
    accelerator.print(f"checkpoint written under mixed precision {written} resumed under fp16: the GradScaler "
                      f"starts fresh (scale {scaler.get_scale():.0f})", flush=True)


def _continue_on_another_split(accelerator, args, state, saved_world_size: int, saved_accum: int,
                               batches_per_epoch: int) -> None:
    """The checkpoint's run split the same global batch over other processes or accumulation steps. Every
    optimizer step still takes the same samples (the seedable sampler permutes all indices; an optimizer step
    takes the next --batch-size of them, however they are split), so the saved position, in this process's
    micro-batches, is converted through optimizer steps. Ranks the checkpoint has no random state for draw
    their augmentations from a seed of (seed, step, rank)."""
    steps_in_epoch = math.ceil(state.batches_in_epoch / saved_accum)
    state.batches_in_epoch = min(steps_in_epoch * args.grad_accum, batches_per_epoch)
    if accelerator.process_index >= saved_world_size:
        set_seed((args.seed * 1_000_003 + state.step * 1009 + accelerator.process_index) % 2 ** 32)
    fresh_ranks = (f"; the augmentations of ranks {saved_world_size} and above are seeded by (seed, step, rank)"
                   if accelerator.num_processes > saved_world_size else "")
    accelerator.print(f"resuming a run of {saved_world_size} process(es) x {saved_accum} accumulation step(s) on "
                      f"{accelerator.num_processes} x {args.grad_accum}: the same global batch {args.batch_size}, "
                      f"the same samples in the same order{fresh_ranks}", flush=True)
