"""ssl_scripts/runtime/distributed.py under a real two-process launch (gloo): what every process must agree on."""
import json
import os
import subprocess

import pytest

from helpers import REPO, SMALL, accelerate_command, free_port, run_script, wandb_runs

pytestmark = pytest.mark.e2e


def probe(*args):
    return run_script(["accelerate", "launch", "--config_file", f"{REPO}/accelerate_configs/cpu.yaml",
                       "--num_processes", "2", "--num_cpu_threads_per_process", "1",
                       f"{REPO}/tests/helpers/probes/distributed_probe.py", *map(str, args)], timeout=300)


def test_evaluation_and_directory_checks_agree_over_processes(tmp_path):
    result = probe("checks", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for seen in ranks:
        # evaluation on rank 1 used rank 0's batch norm statistics, not its own
        assert seen["features_use_rank0_statistics"]
        assert seen["same"] == "ok" and seen["decided"] == "rank 0"
        # each rank's own folder: every rank refuses, naming the one that cannot see rank 0's file
        assert "is not the same directory on every node (rank 1 on " in seen["per_rank"]
        assert "put --output-dir on a file system all nodes share" in seen["per_rank"]
    assert not list(tmp_path.glob(".same-dir-*"))


def test_two_processes_on_one_gpu_hand_ddp_no_device_ids(tmp_path):
    # Accelerate's own choice would be device_ids=[1] on rank 1: cuda:1 on a one-GPU node, an IndexError in DDP.
    result = probe("shared_gpu", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen["wrapped"] == "DistributedDataParallel" and seen["local_process_index"] == rank
        assert seen["device_ids"] is None and seen["output_device"] is None, seen
        assert seen["accelerate_gpu"] == 0  # both processes on cuda:0, the one GPU there is
        # Accelerate's barriers name device local_process_index: cuda:1 on rank 1 of a one-GPU node, where torch
        # allocates the barrier's tensor ("invalid device ordinal"). Each barrier names a valid device, or none.
        waits = seen["waits"]
        assert all(waits[name] for name in waits if name != "broadcast_object_list"), waits
        for name, device_ids in waits.items():
            assert all(ids is None or all(0 <= i < 1 for i in ids) for ids in device_ids), (rank, name, device_ids)
        # NCCL (the default on GPUs) cannot put two ranks on one GPU: one line saying what to pass instead
        assert seen["backend_None"] == ("2 processes on this node's 1 GPU(s): NCCL cannot run two processes on one "
                                        "GPU; pass --dist-backend gloo, or launch at most 1 process(es) per node")


def test_a_rank_whose_view_of_the_output_dir_lags_still_stops_and_resumes_with_the_others(tmp_path):
    # Rank 1 sees no checkpoint and no wandb_run_id (NFS attribute caches); rank 0 gets SIGUSR1 on a checkpoint
    # step. Ranks that decided from their own view would enter different barriers (a hang) or fail to read.
    out = tmp_path / "run"
    options = ["lagging", "--batch-size", "8", "--max-steps", "8", "--log-every", "2", "--checkpoint-every", "2",
               "--report-to", "wandb", "--output-dir", out]
    stopped = probe(*options)
    assert stopped.returncode != 0 and "stopping on SIGUSR1 at step 4" in stopped.stdout, stopped.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    resumed = probe(*options)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "at step 4 " in resumed.stdout
    assert json.loads((out / "results.json").read_text())["steps"] == 8
    run_id = (out / "wandb_run_id").read_text().strip()
    assert [run.name.endswith(run_id) for run in wandb_runs(out)] == [True, True]


def test_nodes_sharing_a_cache_dir_decode_an_image_folder_once_in_all(tmp_path, image_folder):
    # Two "nodes" of two processes each on this machine, sharing the cache dir (the main process's --cache-dir):
    # one process decodes while the three others wait for its file (a lock, not a collective), then all map it.
    out, port = tmp_path / "out", free_port()
    options = [*SMALL, "--dataset", "imagefolder", "--data-dir", image_folder, "--image-size", "16",
               "--batch-size", "4", "--knn-k", "3", "--max-steps", "2", "--skip-eval", "--output-dir", out]
    nodes = []
    for node in (0, 1):
        command = accelerate_command("train_rotation.py", *options, num_processes=4)
        command[2:2] = ["--num_machines", "2", "--machine_rank", str(node), "--main_process_ip", "127.0.0.1",
                        "--main_process_port", str(port)]
        env = {**os.environ, "HOME": str(tmp_path / f"node{node}"), "PYTHONUNBUFFERED": "1"}
        nodes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(logs)[-4000:]
    assert sum(log.count("decoding 18 images") for log in logs) == 1, "\n".join(logs)[-4000:]
    assert json.loads((out / "results.json").read_text())["world_size"] == 4


def test_compile_keeps_the_trained_ddp_model_and_evaluates_the_plain_one(tmp_path):
    # Accelerate's unwrap_model(model) of a compiled DDP model sets the live model's _orig_mod to the bare module:
    # no_sync is gone (every micro-batch all-reduces) and evaluation runs the compiled DDP forward.
    result = probe("compiled", tmp_path, *SMALL, "--batch-size", "16", "--grad-accum", "2", "--max-steps", "2",
                   "--compile", "--linear-probe-epochs", "1", "--output-dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen["no_sync"] == 2, seen  # the first micro-batch of each of the 2 steps
        assert seen["evaluated"] == ["EncoderWithHead"], seen


def test_the_checkpoint_manifest_covers_every_ranks_files_however_late(tmp_path):
    # Rank 0 wrote the manifest right after its own save_state: a rank still writing had its file left out, or
    # checksummed half-written (then a good checkpoint reads as damaged at the resume).
    result = probe("slow_checkpoint", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert "random_states_1.pkl" in seen["listed"] and seen["problem"] is None, seen
    assert seen["listed"] == [name for name in seen["files"] if name != "manifest.json"], seen
