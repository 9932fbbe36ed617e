"""ssl_scripts/models/collectives.py: the identity on one process; on two gloo processes (tests/helpers/probes/
collectives_probe.py) gathers in rank order with gradients summed back, so that the global-batch losses (Barlow
Twins, VICReg, MoCo v2's InfoNCE and queue) give, after DDP's average, the one-process loss and gradient."""
import sys

import pytest
import torch

from helpers import REPO, parse, run_script
from ssl_scripts.methods import METHODS
from ssl_scripts.methods.barlowtwins import barlow_twins_loss
from ssl_scripts.methods.mocov2 import KeyQueue, info_nce
from ssl_scripts.methods.vicreg import vicreg_loss
from ssl_scripts.models import collectives, encoders

WORLD_SIZE, ROWS, TEMPERATURE = 2, 4, 0.2
# The probe's tiny methods (its METHOD_OPTIONS); their weights come from the probe's saved ones.
METHOD_OPTIONS = {"embedding_dim": 6, "projector_hidden": 8, "queue_size": 10, "temperature": TEMPERATURE}
# float32 losses (the modules compute in float32): one process and two differ by their sums' order only
CLOSE = {"rtol": 1e-5, "atol": 1e-6}


def test_one_process_collectives_are_the_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert collectives.world_size() == 1 and collectives.rank() == 0
    assert collectives.gather(x) is x and collectives.all_reduce_sum(x) is x
    gathered, start = collectives.gather_with_start(x)
    assert gathered is x and start == 0


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """(what each rank computed, the whole batch): the probe run once for every test here."""
    out = tmp_path_factory.mktemp("collectives")
    result = run_script([sys.executable, f"{REPO}/tests/helpers/probes/collectives_probe.py", str(out)], timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]
    return ranks, torch.load(out / "inputs.pt", weights_only=False)


def section(ranks, name):
    """What every rank computed in the probe's section `name`, once it is known none raised."""
    for rank, seen in enumerate(ranks):
        assert "error" not in seen[name], f"rank {rank}: {seen[name]['error']}"
    return [seen[name] for seen in ranks]


def halves(x):
    return x[:ROWS], x[ROWS:]


def test_gather_concatenates_in_rank_order_and_sums_the_gradients_over_processes(two_processes):
    ranks, batch = two_processes
    whole, weights = batch["gathered"], batch["weights"]
    for rank, seen in enumerate(section(ranks, "collectives")):
        assert (seen["world_size"], seen["rank"]) == (WORLD_SIZE, rank)
        assert torch.equal(seen["gathered"], whole)
        assert seen["gather_start"] == rank * ROWS
        # each process's loss weighs the gathered rows with its own weights: its rows get the sum of their weights
        assert torch.equal(seen["gather_grad"], halves(weights[0] + weights[1])[rank])
        # a loss computed alike on every process: world_size x its rows' gradient, which DDP's average divides back
        assert torch.equal(seen["gather_alike_grad"], WORLD_SIZE * halves(weights[0])[rank])


def test_all_reduce_sum_is_the_sum_on_every_process_and_its_gradient_the_sum_of_theirs(two_processes):
    ranks, batch = two_processes
    whole, weights = batch["gathered"], batch["weights"]
    for seen in section(ranks, "collectives"):
        assert torch.equal(seen["summed"], whole[:ROWS] + whole[ROWS:])
        assert torch.equal(seen["sum_grad"], weights[0][:ROWS] + weights[1][:ROWS])


def ddp_average_of_rows(local_grads):
    """The gradient of the whole batch's rows as DDP ends up applying it: each process's local rows' gradient,
    divided by the number of processes (DDP averages over processes what every row contributes)."""
    return torch.cat(local_grads) / WORLD_SIZE


@pytest.mark.parametrize("name", ["barlowtwins", "vicreg"])
def test_barlow_twins_and_vicreg_on_two_halves_are_the_one_process_loss_and_gradient(two_processes, name):
    ranks, batch = two_processes
    seen_by = [seen[name] for seen in section(ranks, "losses")]
    loss_of = {"barlowtwins": lambda a, b: barlow_twins_loss(a, b, 0.0051, 0.1),
               "vicreg": lambda a, b: vicreg_loss(a, b, 25.0, 25.0, 1.0)}[name]
    z1, z2 = batch["z1"].clone().requires_grad_(), batch["z2"].clone().requires_grad_()
    loss = loss_of(z1, z2)
    loss.backward()
    half = loss_of(batch["z1"][:ROWS], batch["z2"][:ROWS])  # what a process would get without the gather
    assert abs(half.item() - loss.item()) > 1e-3 * abs(loss.item())
    for seen in seen_by:  # the global batch's loss on every process, not its half's
        torch.testing.assert_close(seen["loss"], loss.detach(), **CLOSE)
    for key, whole in (("z1_grad", z1.grad), ("z2_grad", z2.grad)):
        torch.testing.assert_close(ddp_average_of_rows([seen[key] for seen in seen_by]), whole, **CLOSE)


def test_info_nce_and_the_queue_on_two_halves_are_the_one_process_ones(two_processes):
    ranks, batch = two_processes
    seen_by = [seen["mocov2"] for seen in section(ranks, "losses")]
    start = seen_by[0]["start"]
    q1, q2 = batch["q1"].clone().requires_grad_(), batch["q2"].clone().requires_grad_()
    loss = (info_nce(q1, batch["k2"], start, TEMPERATURE) + info_nce(q2, batch["k1"], start, TEMPERATURE)) / 2
    loss.backward()
    queue = KeyQueue(len(start), start.shape[1])
    queue.keys.copy_(start)
    queue.push(batch["k2"])
    # each process's loss is its half's mean: DDP's average over processes is the global mean
    torch.testing.assert_close(sum(seen["loss"] for seen in seen_by) / WORLD_SIZE, loss.detach(), **CLOSE)
    for key, whole in (("q1_grad", q1.grad), ("q2_grad", q2.grad)):
        torch.testing.assert_close(ddp_average_of_rows([seen[key] for seen in seen_by]), whole, **CLOSE)
    for seen in seen_by:  # every process queued the global batch's view-2 keys, in rank order
        assert torch.equal(seen["start"], start)
        assert torch.equal(seen["queue"], queue.keys) and torch.equal(seen["next"], queue.next)


def built_method(name):
    """(method, model, head) as the probe builds them: a tiny simple_cnn and head without batch norm anywhere."""
    args = parse(["--method", name, "--model", "simple_cnn", "--dataset", "synthetic", "--no-head-bn"], "siamese")
    method = METHODS[name](args.replace(**METHOD_OPTIONS))
    encoder = encoders.build_encoder("simple_cnn", 8)
    head = method.head(encoder)
    return method, encoders.EncoderWithHead(encoder, head), head


@pytest.mark.parametrize("name", ["barlowtwins", "vicreg", "mocov2"])
def test_a_methods_step_on_two_processes_is_its_step_on_one_after_ddps_average(two_processes, name):
    """Method.loss on each process's half of the images (view 1s then view 2s), a model without batch norm: the
    parameters' gradients averaged over processes are those of one process on every image."""
    ranks, batch = two_processes
    seen_by = [seen[name] for seen in section(ranks, "methods")]
    method, model, head = built_method(name)
    model.load_state_dict(seen_by[0]["start"])
    views = batch["views"]
    output = model(views)
    loss, _ = method.loss(model, head, views, output, torch.ones(len(views) // 2))
    loss.backward()
    expected = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert expected and all(expected.keys() == seen["grads"].keys() for seen in seen_by)
    # float32 through a network, whose sums run in another order on 4 images than on 8: within 2e-6 of the
    # largest gradient (Barlow Twins' standardization over 8 rows amplifies rounding the most)
    scale = max(g.abs().max().item() for g in expected.values())
    for key, whole in expected.items():
        averaged = sum(seen["grads"][key] for seen in seen_by) / WORLD_SIZE
        torch.testing.assert_close(averaged, whole, rtol=1e-5, atol=2e-6 * scale)
    if name == "mocov2":  # the queue: the global batch's keys on every process
        for seen in seen_by:
            assert torch.equal(seen["after"]["queue.next"], head.queue.next)
            torch.testing.assert_close(seen["after"]["queue.keys"], head.queue.keys, **CLOSE)
