"""Where the train split lives (--data-placement): the choice against free memory, said in one line when nothing
fits, and batches that are the same whichever placement gives them."""
import json

import pytest
import torch

from common import UserError
from common.placement import TrainImages, choose
from conftest import SMALL, accelerate_launch, python_script, steps_of

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
    with pytest.raises(UserError, match="the data fits neither placement: .* lower --image-size"):
        choose("auto", 193 * GiB, 230 * GiB, CUDA, device_free=79 * GiB, host_free=100 * GiB)
    with pytest.raises(UserError, match="needs 300.0 GiB of host memory decoded and 20.0 GiB is available"):
        choose("auto", 250 * GiB, 300 * GiB, CPU, device_free=20 * GiB, host_free=20 * GiB)


def test_on_a_cpu_both_placements_hold_the_data_in_host_memory():
    assert choose("auto", GiB, GiB, CPU, device_free=20 * GiB, host_free=20 * GiB)[0] == "device"
    assert choose("host", GiB, GiB, CPU, device_free=20 * GiB, host_free=20 * GiB)[0] == "host"


def test_host_and_device_placements_give_the_same_batches():
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    indices = torch.tensor([7, 3, 49, 3, 0])
    on_device, on_host = TrainImages(images, "device", CPU), TrainImages(images, "host", CPU)
    assert on_host.index_device == CPU and len(on_host) == len(on_device) == 50
    assert torch.equal(on_host[indices], images[indices]) and torch.equal(on_device[indices], images[indices])


@pytest.mark.parametrize("script, processes", [("train_rotation.py", 1), ("train_siamese.py", 2)])
def test_device_and_host_placements_train_on_the_same_samples_with_the_same_loss(tmp_path, script, processes):
    runs = {}
    for placement in ("device", "host"):
        out = tmp_path / placement
        result = accelerate_launch(script, *SMALL, "--augment", "none", "--max-steps", "3", "--log-every", "1",
                                   "--skip-eval", "--data-placement", placement, "--output-dir", out,
                                   num_processes=processes, env={"SSL_SCRIPTS_RECORD_INDICES": str(out)})
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"placement {placement} (--data-placement {placement})" in result.stdout
        losses = [json.loads(line)["train/loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
                  if '"train/loss"' in line]
        runs[placement] = steps_of(out, processes), losses
    (device_steps, device_losses), (host_steps, host_losses) = runs["device"], runs["host"]
    assert sorted(device_steps) == [1, 2, 3] and device_steps == host_steps
    assert device_losses == host_losses  # the same pixels, partners and arithmetic: equal to the last bit


def test_a_dataset_too_large_for_memory_is_refused_in_one_line_before_it_is_allocated(tmp_path):
    result = python_script("train_rotation.py", *SMALL, "--synthetic-size", "100000000", "--max-steps", "1",
                           "--output-dir", tmp_path / "out")  # 100M + 25M test images at 32 px
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert "the dataset needs 357.6 GiB of host memory decoded" in errors[0] and "available" in errors[0]
