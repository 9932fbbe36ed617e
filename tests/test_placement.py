"""Where the train split lives (--data-placement): the choice against free memory, said in one line when nothing
fits, and batches that are the same whichever placement gives them."""
import json
import os
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from ssl_scripts import UserError
from ssl_scripts.data.placement import TrainImages, choose
from helpers import REPO, SMALL, accelerate_launch, killed_when_held, python_script, steps_of

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


def test_processes_sharing_a_gpu_and_evaluation_features_count_against_its_memory(monkeypatch):
    # Two processes on the one GPU each place the split: at 50% of free memory each, 100% in all (the old estimate
    # counted one copy, allowed 70%, and the second copy ran out of memory later).
    from ssl_scripts.data import placement
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (80 * GiB, 141 * GiB))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    sharing = placement.processes_per_device(CUDA)
    assert sharing == 2
    with pytest.raises(UserError) as refused:
        choose("device", 40 * GiB, 100 * GiB, CUDA, placement.device_free_bytes(CUDA), 1800 * GiB,
               processes_per_device=sharing)
    assert str(refused.value) == ("--data-placement device: the train split takes 40.0 GiB on each GPU x 2 processes "
                                  "sharing it, 80.0 GiB free on cuda:0 (at most 70% of it is used): use "
                                  "--data-placement host")
    assert choose("auto", 40 * GiB, 100 * GiB, CUDA, 80 * GiB, 1800 * GiB, processes_per_device=sharing)[0] == "host"
    assert choose("auto", 20 * GiB, 100 * GiB, CUDA, 80 * GiB, 1800 * GiB, processes_per_device=sharing)[0] == "device"
    # one process per GPU on a 2-GPU node: one copy each
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert placement.processes_per_device(CUDA) == 1
    # evaluation's gathered features: 60,000 images x 512 floats, 2 copies per process and 2 more on the main one
    args = type("Args", (), {"skip_eval": False, "model": "resnet18", "image_size": 32})()
    assert placement.evaluation_bytes(args, 60_000, processes_per_device=2) == 60_000 * 512 * 4 * 6
    with pytest.raises(UserError, match=r"40.0 GiB on each GPU \+ 30.0 GiB for evaluation's features, 80.0 GiB"):
        choose("device", 40 * GiB, 100 * GiB, CUDA, 80 * GiB, 1800 * GiB, eval_bytes=30 * GiB)


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


@pytest.mark.e2e
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


def test_streamed_batches_are_decoded_ahead_off_the_training_thread(folder, tmp_path, monkeypatch):
    import threading
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from ssl_scripts.data import streaming
    from ssl_scripts.data.loader import index_loader
    from helpers import parse
    AcceleratorState._reset_state(True)
    accelerator = Accelerator(cpu=True)
    dataset = streaming.stream_imagefolder(str(folder), 32, cache_dir=str(tmp_path / "cache"))
    images = TrainImages(dataset.train_images, "stream", CPU)
    events, decode_into, read_ahead = [], streaming.StreamedImages._decode_into, images.read_ahead

    def recorded(self, indices, out):
        events.append(("decode", threading.current_thread().name, indices[0]))
        return decode_into(self, indices, out)
    monkeypatch.setattr(streaming.StreamedImages, "_decode_into", recorded)

    def drawn(indices):
        events.append(("drawn", threading.current_thread().name, indices[0].item()))
        return read_ahead(indices)
    args = parse(["--batch-size", "16", "--report-to", "none"])
    loader = accelerator.prepare(index_loader(accelerator, args, len(images), on_draw=drawn))
    batches = []
    for indices in loader:
        events.append(("train", threading.current_thread().name, indices[0].item()))
        batches.append((indices, images[indices]))
    trained = [e[2] for e in events if e[0] == "train"]
    assert len(trained) == 6 and [e[2] for e in events if e[0] == "drawn"] == trained
    # every batch was decoded by the reader thread, none by the training thread
    assert sorted(e[2] for e in events if e[0] == "decode") == sorted(trained)
    assert {e[1] for e in events if e[0] == "decode"} == {"stream-reader_0"}
    # each batch's decode was asked for before the previous one was handed to training
    order = [e[:1] + e[2:] for e in events if e[0] in ("drawn", "train")]
    for before, after in zip(trained, trained[1:]):
        assert order.index(("drawn", after)) < order.index(("train", before))
    for indices, batch in batches:  # the pixels of a plain decode
        assert torch.equal(batch, dataset.train_images[indices])

    # Indices no loader drew (siamese partners) are decoded now, and leave the batch read ahead in place
    events.clear()
    drawn([torch.tensor([1, 2]), torch.tensor([3, 4])][0])
    partners = images[torch.tensor([5, 6])]
    assert torch.equal(partners, dataset.train_images[torch.tensor([5, 6])])
    assert torch.equal(images[torch.tensor([1, 2])], dataset.train_images[torch.tensor([1, 2])])
    assert [e[2] for e in events if e[1].startswith("stream-reader")] == [1, 5]  # the drawn batch once


def test_streamed_siamese_steps_wait_for_one_decode_read_ahead_with_the_partners(folder, tmp_path, monkeypatch):
    # A pair's partner is a pure function of (seed, epoch, index): decoded ahead with its anchors, in one decode, a
    # step waits for one decode asked for before it began (not a second for its partners), across an epoch's end
    # and a resume mid-epoch (epoch 1, batch 1), with the host placement's pixels. 96 images, batch 32: 3 steps an
    # epoch.
    from accelerate.state import AcceleratorState
    from ssl_scripts.data import streaming
    from ssl_scripts import loop
    from helpers import exited
    from ssl_scripts.tasks.siamese import Siamese
    steps, submit, make_batch = [], streaming.StreamedImages.submit, Siamese.make_batch

    class Waited:  # the Future of one decode, which records the steps that wait for it
        def __init__(self, future):
            self.future = future

        def result(self):
            if steps and "inputs" not in steps[-1]:
                steps[-1]["waited"].add(id(self))
            return self.future.result()

    def recorded_submit(self, indices, pin):
        if steps and "inputs" not in steps[-1]:
            steps[-1]["asked"] += 1  # a decode asked for while a step waits
        return Waited(submit(self, indices, pin))

    def recorded_make_batch(self, indices, epoch):
        steps.append({"waited": set(), "asked": 0})
        batch = make_batch(self, indices, epoch)
        steps[-1].update(inputs=batch.inputs.clone(), targets=batch.targets.clone())
        return batch
    monkeypatch.setattr(streaming.StreamedImages, "submit", recorded_submit)
    monkeypatch.setattr(Siamese, "make_batch", recorded_make_batch)

    def train(placement, out, max_steps):
        AcceleratorState._reset_state(True)
        loop.train(Siamese, [str(a) for a in (*folder_options(folder, tmp_path), "--batch-size", "32", "--augment",
                                              "none", "--max-steps", max_steps, "--checkpoint-every", "2",
                                              "--data-placement", placement, "--output-dir", out)])
        exited(out)
        taken = steps[:]
        steps.clear()
        return taken

    host = train("host", tmp_path / "host", 5)
    streamed = train("stream", tmp_path / "stream", 4) + train("stream", tmp_path / "stream", 5)  # resumed at 4
    assert len(host) == len(streamed) == 5
    assert [(s["asked"], len(s["waited"])) for s in streamed] == [(0, 1)] * 5
    for on_host, read_ahead in zip(host, streamed):  # the same pairs, the same pixels
        assert torch.equal(on_host["inputs"], read_ahead["inputs"])
        assert torch.equal(on_host["targets"], read_ahead["targets"])


def test_an_index_batch_a_step_reads_twice_is_decoded_once(folder, tmp_path):
    # ntxent's partners are its anchors: read ahead, they are decoded once
    from ssl_scripts.data import streaming
    dataset = streaming.stream_imagefolder(str(folder), 32, cache_dir=str(tmp_path / "cache"))
    images = TrainImages(dataset.train_images, "stream", CPU)
    images.images_to_read = lambda indices, epoch: [indices, indices]
    indices = torch.tensor([4, 9, 2])
    images.read_ahead(indices)
    anchors, partners = images[indices], images[indices]
    assert torch.equal(anchors, dataset.sample_images[indices]) and torch.equal(partners, anchors)
    assert dataset.train_images.decoded == 3


def test_evaluating_a_streamed_split_decodes_nothing(folder, tmp_path):
    # The k-NN memory and the probe's data are a seeded sample of the train split, decoded once (here, all 96)
    from types import SimpleNamespace
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from ssl_scripts.data import streaming
    from ssl_scripts.evaluation import frozen
    from ssl_scripts.models.encoders import build_encoder
    AcceleratorState._reset_state(True)
    dataset = streaming.stream_imagefolder(str(folder), 32, cache_dir=str(tmp_path / "cache"))
    assert dataset.sample_images.shape == (96, 3, 32, 32) and isinstance(dataset.test_images, torch.Tensor)
    args = SimpleNamespace(eval_batch_size=64, knn_k=5, knn_temperature=0.07, linear_probe_epochs=1, seed=0)
    metrics = frozen.encoder_metrics(Accelerator(cpu=True), build_encoder("simple_cnn", 32), dataset, args)
    assert set(metrics) == {"eval/knn_acc", "eval/linear_probe_acc"} and dataset.train_images.decoded == 0
    monkey = streaming.STREAM_EVAL_SAMPLE
    try:
        streaming.STREAM_EVAL_SAMPLE = 10
        sampled = streaming.stream_imagefolder(str(folder), 32, cache_dir=str(tmp_path / "cache"))
    finally:
        streaming.STREAM_EVAL_SAMPLE = monkey
    assert len(sampled.sample_images) == 10 and len(sampled.train_images) == 96


@pytest.mark.e2e
def test_an_unreadable_streamed_file_on_one_rank_stops_every_rank_with_one_line(tmp_path, folder):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "train" / "c1" / "zz.png").write_bytes(b"not a png")  # 97 train files; the sample leaves it out
    out = tmp_path / "out"
    began = time.time()
    result = accelerate_launch("train_rotation.py", *folder_options(broken, tmp_path), "--data-placement", "stream",
                               "--epochs", "1", "--log-every", "100", "--checkpoint-every", "2", "--dist-timeout",
                               "300", "--output-dir", out, num_processes=2, timeout=280)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and time.time() - began < 120, result.stderr[-3000:]
    assert len(errors) == 1 and "cannot read image" in errors[0] and "zz.png" in errors[0], result.stderr[-3000:]
    assert f'{REPO}/ssl_scripts/' not in result.stderr  # no worker's traceback: only the launcher's report
    assert not (out / "results.json").exists()


@pytest.mark.e2e
def test_a_rank_whose_listing_of_the_folder_misses_a_file_streams_the_main_process_list(tmp_path, folder):
    # On a shared file system two nodes can list a folder differently for a while. Rank 1's os.scandir here misses
    # one train file: had it listed the folder itself, its images after that file would shift by one (other
    # losses), or its loader would be shorter (a hang in the next collective).
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    scandir = os.scandir\n"
        "    class Listing(list):\n"
        "        def __enter__(self): return self\n"
        "        def __exit__(self, *exc): pass\n"
        "    os.scandir = lambda path='.': Listing(e for e in scandir(path) if e.name != '0.png')\n")
    losses = {}
    for name, env in (("as_listed", {}), ("rank1_misses_a_file", {"PYTHONPATH": str(site)})):
        out = tmp_path / name
        result = accelerate_launch("train_rotation.py", *folder_options(folder, tmp_path), "--augment", "none",
                                   "--max-steps", "3", "--log-every", "1", "--data-placement", "stream",
                                   "--dist-timeout", "60", "--output-dir", out, num_processes=2, env=env, timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
        losses[name] = [json.loads(line)["train/loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
                        if '"train/loss"' in line]
    assert len(losses["as_listed"]) == 3 and losses["rank1_misses_a_file"] == losses["as_listed"]


@pytest.mark.e2e
@pytest.mark.parametrize("placement, dataset", [("host", "imagefolder"), ("stream", "imagefolder"),
                                                ("stream", "images")])
def test_a_killed_run_resumes_bitwise_with_the_data_on_the_host_or_streamed(tmp_path, folder, placement, dataset):
    options = [*folder_options(folder, tmp_path), "--max-steps", "12", "--checkpoint-every", "4", "--deterministic",
               "--data-placement", placement]
    if dataset == "images":  # the train images, unlabeled: their class folders are just folders
        options += ["--dataset", "images", "--data-dir", folder / "train"]
    whole = python_script("train_rotation.py", *options, "--output-dir", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "cut"
    killed_when_held([sys.executable, os.path.join(REPO, "train_rotation.py"), *map(str, options), "--output-dir",
                      str(out)], out, "step@6")  # after the checkpoint of step 4, before that of step 8
    assert not (out / "results.json").exists()
    resumed = python_script("train_rotation.py", *options, "--output-dir", out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'step_00000004'} at step 4 " in resumed.stdout
    final = [load_file(str(run / "checkpoints" / "step_00000012" / "model.safetensors"))
             for run in (tmp_path / "whole", out)]
    assert all(torch.equal(final[0][name], final[1][name]) for name in final[0])


@pytest.mark.e2e
def test_a_dataset_too_large_for_memory_is_refused_in_one_line_before_it_is_allocated(tmp_path):
    result = python_script("train_rotation.py", *SMALL, "--synthetic-size", "100000000", "--max-steps", "1",
                           "--output-dir", tmp_path / "out")  # 100M + 25M test images at 32 px
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert "the dataset takes 357.6 GiB of host memory per node" in errors[0] and "available" in errors[0]


def test_auto_takes_a_placement_up_to_exactly_its_share_and_not_one_byte_more():
    # The shares are promised: the device while the split takes at most 70% of the GPU's free memory, the host
    # while the dataset takes at most 80% of the available host memory (both "at most": <=). 10 GiB makes both
    # edges whole bytes: 7 GiB and 8 GiB.
    free = 10 * GiB
    assert choose("auto", 7 * GiB, GiB, CUDA, device_free=free, host_free=100 * GiB)[0] == "device"
    assert choose("auto", 7 * GiB + 1, GiB, CUDA, device_free=free, host_free=100 * GiB)[0] == "host"
    # the split fits no GPU: host up to 80% of the host's memory, then stream
    assert choose("auto", 9 * GiB, 8 * GiB, CUDA, device_free=free, host_free=free, streamable=True)[0] == "host"
    assert choose("auto", 9 * GiB, 8 * GiB + 1, CUDA, device_free=free, host_free=free, streamable=True)[0] \
        == "stream"
    # on a CPU the device is the host: its 80% decides
    assert choose("auto", 8 * GiB, 8 * GiB, CPU, device_free=free, host_free=free, streamable=True)[0] == "device"
    assert choose("auto", 8 * GiB + 1, 8 * GiB + 1, CPU, device_free=free, host_free=free, streamable=True)[0] \
        == "stream"
