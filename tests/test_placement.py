"""Where the train split lives (--data-placement): the choice against free memory, said in one line when nothing
fits, and batches that are the same whichever placement gives them."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from common import UserError
from common.placement import TrainImages, choose
from conftest import REPO, SMALL, accelerate_launch, python_script, steps_of

GiB = 2 ** 30
CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")


def test_auto_puts_the_split_on_the_gpu_when_it_fits_and_in_host_memory_when_not():
    assert choose("auto", 10 * GiB, 12 * GiB, CUDA, device_free=70 * GiB, host_free=500 * GiB)[0] == "device"
    placement, why = choose("auto", 193 * GiB, 230 * GiB, CUDA, device_free=79 * GiB, host_free=1800 * GiB)
    assert placement == "host"
    assert "193.0 GiB on each GPU, 79.0 GiB free on cuda:0, too little" in why
    assert "230.0 GiB of host memory per node, 1800.0 GiB available" in why


def test_a_placement_that_cannot_hold_the_data_is_refused_naming_need_free_and_what_fits():
    with pytest.raises(UserError) as refused:
        choose("device", 193 * GiB, 230 * GiB, CUDA, device_free=79 * GiB, host_free=1800 * GiB)
    assert "193.0 GiB on each GPU, 79.0 GiB free on cuda:0" in str(refused.value)
    assert str(refused.value).endswith("use --data-placement host")
    with pytest.raises(UserError, match="the data fits in no placement: .* lower --image-size"):
        choose("auto", 193 * GiB, 230 * GiB, CUDA, device_free=79 * GiB, host_free=100 * GiB)
    with pytest.raises(UserError, match="^the data fits in no placement: the dataset takes 300.0 GiB of host memory "
                                        "per node, 20.0 GiB available: lower"):
        choose("auto", 250 * GiB, 300 * GiB, CPU, device_free=20 * GiB, host_free=20 * GiB)
    with pytest.raises(UserError, match="--data-placement host: .*: use --data-placement stream$"):
        choose("host", 250 * GiB, 300 * GiB, CPU, device_free=20 * GiB, host_free=20 * GiB, streamable=True)
    with pytest.raises(UserError, match="stream decodes image files .* it takes --dataset imagefolder"):
        choose("stream", GiB, GiB, CPU, device_free=20 * GiB, host_free=20 * GiB, streamable=False)


def test_auto_streams_an_image_folder_that_fits_in_no_memory():
    placement, why = choose("auto", 193 * GiB, 230 * GiB, CUDA, device_free=79 * GiB, host_free=100 * GiB,
                            streamable=True)
    assert placement == "stream" and "each batch decoded as it is needed" in why


def test_on_a_cpu_both_placements_hold_the_data_in_host_memory():
    assert choose("auto", GiB, GiB, CPU, device_free=20 * GiB, host_free=20 * GiB)[0] == "device"
    assert choose("host", GiB, GiB, CPU, device_free=20 * GiB, host_free=20 * GiB)[0] == "host"


def test_on_a_cpu_the_device_placement_shares_the_host_tensor():
    """Accelerate's device is cpu:0 with several CPU processes: a copy there would be one per process."""
    images = torch.zeros((10, 3, 4, 4), dtype=torch.uint8)
    assert TrainImages(images, "device", torch.device("cpu", 0)).images.data_ptr() == images.data_ptr()


def test_host_and_device_placements_give_the_same_batches():
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    indices = torch.tensor([7, 3, 49, 3, 0])
    on_device, on_host = TrainImages(images, "device", CPU), TrainImages(images, "host", CPU)
    assert on_host.index_device == CPU and len(on_host) == len(on_device) == 50
    assert torch.equal(on_host[indices], images[indices]) and torch.equal(on_device[indices], images[indices])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """96 train and 24 test PNGs at 32 px in 4 classes: enough for a few steps of batch 16 with any placement."""
    import numpy as np
    from PIL import Image
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 96), ("test", 24)):
        for i in range(count):
            (root / split / f"c{i % 4}").mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / f"c{i % 4}" / f"{i}.png")
    return root


def folder_options(folder, tmp_path):
    return ["--dataset", "imagefolder", "--data-dir", folder, "--cache-dir", tmp_path / "cache", "--model",
            "simple_cnn", "--batch-size", "16", "--knn-k", "5", "--report-to", "none", "--skip-eval"]


@pytest.mark.parametrize("script, processes", [("train_rotation.py", 1), ("train_siamese.py", 2)])
def test_every_placement_trains_on_the_same_samples_with_the_same_loss(tmp_path, folder, script, processes):
    runs = {}
    for placement in ("device", "host", "stream"):
        out = tmp_path / placement
        result = accelerate_launch(script, *folder_options(folder, tmp_path), "--augment", "none", "--max-steps", "3",
                                   "--log-every", "1", "--data-placement", placement, "--output-dir", out,
                                   num_processes=processes, env={"SSL_SCRIPTS_RECORD_INDICES": str(out)})
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"placement {placement} (--data-placement {placement})" in result.stdout
        losses = [json.loads(line)["train/loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
                  if '"train/loss"' in line]
        runs[placement] = steps_of(out, processes), losses
    assert sorted(runs["device"][0]) == [1, 2, 3]
    assert runs["device"] == runs["host"] == runs["stream"]  # the same pixels and arithmetic: equal to the last bit


@pytest.mark.parametrize("placement", ["host", "stream"])
def test_a_killed_run_resumes_bitwise_with_the_data_on_the_host_or_streamed(tmp_path, folder, placement):
    options = [*folder_options(folder, tmp_path), "--max-steps", "12", "--checkpoint-every", "4", "--deterministic",
               "--data-placement", placement]
    whole = python_script("train_rotation.py", *options, "--output-dir", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "cut"
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "train_rotation.py"), *map(str, options),
                                "--output-dir", str(out)], cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step_00000004").exists() and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "results.json").exists()
    resumed = python_script("train_rotation.py", *options, "--output-dir", out)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-3000:]
    final = [load_file(str(run / "checkpoints" / "step_00000012" / "model.safetensors"))
             for run in (tmp_path / "whole", out)]
    assert all(torch.equal(final[0][name], final[1][name]) for name in final[0])


def test_a_dataset_too_large_for_memory_is_refused_in_one_line_before_it_is_allocated(tmp_path):
    result = python_script("train_rotation.py", *SMALL, "--synthetic-size", "100000000", "--max-steps", "1",
                           "--output-dir", tmp_path / "out")  # 100M + 25M test images at 32 px
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert "the dataset takes 357.6 GiB of host memory per node" in errors[0] and "available" in errors[0]
