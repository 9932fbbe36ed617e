"""Not a test: launched by test_distributed.py with two processes. `checks OUT`: the helpers of ssl_scripts/runtime/distributed.py
and evaluation's use of them, each rank writing what it saw to OUT/rank<N>.json. `slow_checkpoint OUT`: a checkpoint
whose rank 1 is late with its files. `compiled OUT [options]`: the
loop with --compile, recording DDP's no_sync and evaluation's model. `lagging OUT [options]`: the real Run
and the scripts' loop around a small encoder, while rank 1's view of OUTPUT_DIR lags behind rank 0's writes (as on NFS:
rank 1 does not see checkpoint folders or wandb_run_id exist); rank 0 receives SIGUSR1 at step 4, a checkpoint step."""
import json
import os
import signal
import sys
import time

import torch

from ssl_scripts import UserError
from ssl_scripts.runtime import cli
from ssl_scripts.evaluation import frozen
from ssl_scripts.models import encoders
from ssl_scripts.outputs import final
from ssl_scripts.runtime import distributed
from helpers import parse, prepared_run, training_accelerator


def checks(out):
    args = parse(["--report-to", "none"])
    accelerator = distributed.make_accelerator(args)
    rank, seen = accelerator.process_index, {}

    # Batch norm statistics differ between ranks after training (each updated them with its own batches).
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten())
    encoder[1].running_mean += 5.0 * rank
    images = torch.randint(0, 256, (10, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    features = frozen.features(accelerator, encoder, images, batch_size=4)
    with torch.no_grad():
        rank0 = encoder.eval()(images.float() / 255)  # rank 0's statistics, which the exported encoder holds
    seen["features_use_rank0_statistics"] = torch.allclose(features, rank0, atol=1e-5)

    for name, path in (("same", out), ("per_rank", os.path.join(out, f"node{rank}"))):
        os.makedirs(path, exist_ok=True)
        try:
            distributed.probe_shared_directory(accelerator, path)
            seen[name] = "ok"
        except UserError as e:
            seen[name] = str(e)
    seen["decided"] = distributed.on_main_process_for_all(accelerator, lambda: f"rank {accelerator.process_index}")
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(seen, f)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def shared_gpu(out):
    """Two processes on a node whose torch sees one GPU (device count patched; the processes run on the CPU, where
    DDP ignores device_ids and a barrier's device index, so what Accelerate hands DDP and every barrier is recorded
    rather than run on a GPU)."""
    torch.cuda.device_count = lambda: 1
    received, barriers = {}, []
    barrier = torch.distributed.barrier

    def recording_barrier(*args, **kwargs):  # torch puts the barrier's tensor on cuda:device_ids[0]
        barriers.append(kwargs.get("device_ids"))
        return barrier(*args, **kwargs)
    torch.distributed.barrier = recording_barrier
    ddp_init = torch.nn.parallel.DistributedDataParallel.__init__

    def recording_init(self, module, *args, **kwargs):
        received.update(device_ids=kwargs.get("device_ids"), output_device=kwargs.get("output_device"))
        ddp_init(self, module, *args, **kwargs)
    torch.nn.parallel.DistributedDataParallel.__init__ = recording_init
    seen = {}
    for backend in (None, "gloo"):
        args = parse(
            ["--report-to", "none"] + (["--dist-backend", backend] if backend else []))
        try:
            accelerator = distributed.make_accelerator(args)
        except UserError as e:
            seen[f"backend_{backend}"] = str(e)
    # What Accelerate does for a model on several GPUs (MULTI_GPU), not its CPU branch, which never passes
    # device_ids; DDP itself then runs on the CPU.
    from accelerate.utils import DistributedType
    cpu_type, accelerator.state.distributed_type = accelerator.state.distributed_type, DistributedType.MULTI_GPU
    try:
        model = accelerator.prepare(torch.nn.Linear(2, 1))
    except ValueError as e:  # DDP refuses device_ids for a model on the CPU: what it was given is recorded
        model, seen["ddp_error"] = None, str(e)
    accelerator.state.distributed_type = cpu_type
    if model is not None:
        model(torch.ones(1, 2)).sum().backward()
    rank = accelerator.process_index
    seen["waits"] = wait_in_every_helper(accelerator, args, out, barriers)
    seen.update(received, wrapped=type(model).__name__ if model is not None else None,
                local_process_index=accelerator.local_process_index,
                accelerate_gpu=accelerator.local_process_index % torch.cuda.device_count())
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(seen, f)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def wait_in_every_helper(accelerator, args, out, barriers) -> dict:
    """Every helper of the project's (and of Accelerate's it uses) that waits for all processes: the device_ids of
    the barriers each called."""
    from accelerate.utils import broadcast_object_list
    from ssl_scripts.training import checkpoints, setup
    run_args = parse(["--report-to", "none", "--output-dir", os.path.join(out, "run")])

    def main_process_first():
        with accelerator.main_process_first(), accelerator.local_main_process_first():
            pass
    helpers = {
        "wait_for_everyone": accelerator.wait_for_everyone,
        "on_main_process_for_all": lambda: distributed.on_main_process_for_all(accelerator, lambda: 1),
        "claim_output_dir": lambda: setup.claim_output_dir(accelerator, run_args),
        "main_process_first": main_process_first,
        "checkpoints.save": lambda: checkpoints.save(accelerator, run_args, 1, {}, 0),
        "broadcast_object_list": lambda: broadcast_object_list([accelerator.process_index]),
    }
    waits = {}
    for name, helper in helpers.items():
        del barriers[:]
        helper()
        waits[name] = list(barriers)
    return waits


def compiled(out, argv):
    """The rotation task's real loop with --compile (torch.compile's "eager" backend: the same wrapping, no
    inductor build) and --grad-accum: how often DDP's no_sync was entered, and what evaluation ran."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    from ssl_scripts import loop
    from ssl_scripts.tasks import TASKS
    compile_model = torch.compile
    torch.compile = lambda model, **options: compile_model(model, **{**options, "backend": "eager"})
    seen = {"no_sync": 0, "evaluated": []}
    no_sync = DDP.no_sync

    def counted_no_sync(self):
        seen["no_sync"] += 1
        return no_sync(self)
    DDP.no_sync = counted_no_sync
    rotation = TASKS["rotation"]
    evaluate = rotation.evaluate

    def recorded_evaluate(self, accelerator, model, labelled, **stop_check):
        seen["evaluated"].append(type(model).__name__)
        return evaluate(self, accelerator, model, labelled, **stop_check)
    rotation.evaluate = recorded_evaluate
    loop.train(rotation, argv)
    with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(seen, f)


def slow_checkpoint(out):
    """checkpoints.save while rank 1 writes its random states a second late: the manifest rank 0 writes."""
    from ssl_scripts.training import checkpoints
    args = parse(["--report-to", "none", "--output-dir", out])
    accelerator = training_accelerator(args)
    model = accelerator.prepare(torch.nn.Linear(2, 1))
    save = torch.save

    def late_save(obj, path, *args, **kwargs):
        if os.path.basename(str(path)).startswith("random_states"):
            time.sleep(1)
        return save(obj, path, *args, **kwargs)
    if accelerator.process_index == 1:
        torch.save = late_save
    path = checkpoints.save(accelerator, args, 1, {}, 0)
    if accelerator.is_main_process:
        with open(os.path.join(path, "manifest.json")) as f:
            listed = sorted(json.load(f))
        with open(os.path.join(out, "seen.json"), "w") as f:
            json.dump({"listed": listed, "problem": checkpoints.verify_checkpoint(path),
                       "files": sorted(os.listdir(path))}, f)
    accelerator.wait_for_everyone()
    del model


def lag_behind(output_dir):
    """This process's os.path.isdir/exists do not see checkpoint folders, or output_dir/wandb_run_id, that others
    created after it started (NFS caches attributes and directory entries for a while)."""
    steps, run_id = os.path.join(output_dir, "checkpoints", "step_"), os.path.join(output_dir, "wandb_run_id")
    started, isdir, exists = time.time(), os.path.isdir, os.path.exists

    def fresh(path):
        path = str(path)
        return (path.startswith(steps) or path == run_id) and exists(path) and os.stat(path).st_mtime > started
    os.path.isdir = lambda p: False if fresh(p) else isdir(p)
    os.path.exists = lambda p: False if fresh(p) else exists(p)


def lagging(argv):
    args = parse(argv)
    accelerator = training_accelerator(args)
    if accelerator.process_index == 1:
        lag_behind(os.path.abspath(args.output_dir))
    run, model = prepared_run(args, accelerator, encoders.build_encoder("simple_cnn", image_size=8), project="probe")
    for _ in run.epochs():
        for indices in run.batches():
            with accelerator.accumulate(model):
                loss = model(torch.ones(len(indices), 3, 8, 8)).pow(2).mean()
                accelerator.backward(loss)
                run.optimizer_step()
            if run.state.step == 3 and accelerator.is_main_process:
                os.kill(os.getpid(), signal.SIGUSR1)  # a preemption notice, arriving during step 4
            run.end_batch(images=len(indices), samples=len(indices), loss=loss)
    results = run.results({})
    final.write_final(accelerator, args, distributed.plain_module(accelerator, model), results)
    run.end({}, results)


if __name__ == "__main__":
    if sys.argv[1] == "checks":
        checks(sys.argv[2])
    elif sys.argv[1] == "shared_gpu":
        shared_gpu(sys.argv[2])
    elif sys.argv[1] == "slow_checkpoint":
        slow_checkpoint(sys.argv[2])
    elif sys.argv[1] == "compiled":
        cli.run(lambda: compiled(sys.argv[2], sys.argv[3:]))
    else:
        cli.run(lambda: lagging(sys.argv[2:]))
