"""Not a test: run by test_collectives.py as `python collectives_probe.py OUT`. Two gloo processes, each holding
half of a seeded batch, call ssl_scripts/models/collectives.py and the losses built on it (Barlow Twins, VICReg,
MoCo v2's InfoNCE and queue, and those methods' Method.loss on a tiny model); each writes what it computed, with
its gradients, to OUT/rank<N>.pt, and rank 0 the whole batch and the starting weights to OUT/inputs.pt, from which
the test computes the one-process values."""
import os
import socket
import sys
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

WORLD_SIZE = 2
ROWS = 4  # per process
DIM = 5
QUEUE_SIZE = 10
TEMPERATURE = 0.2
METHOD_OPTIONS = {"embedding_dim": 6, "projector_hidden": 8, "queue_size": QUEUE_SIZE, "temperature": TEMPERATURE}
METHODS = ("barlowtwins", "vicreg", "mocov2")


def whole_batch() -> dict:
    """The same on every process (seeded): projections of both views, and MoCo's unit queries and keys."""
    generator = torch.Generator().manual_seed(0)
    spread = torch.tensor([0.3, 0.7, 1.0, 2.0, 4.0], dtype=torch.float64)

    def sample(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)
    z1 = sample(WORLD_SIZE * ROWS, DIM) * spread + 1.0
    batch = {"z1": z1, "z2": z1 + 0.5 * sample(WORLD_SIZE * ROWS, DIM) * spread}
    for name in ("q1", "q2", "k1", "k2"):
        batch[name] = F.normalize(sample(WORLD_SIZE * ROWS, DIM).float(), dim=1)
    batch["gathered"] = torch.arange(WORLD_SIZE * ROWS * 2, dtype=torch.float64).view(-1, 2)
    batch["weights"] = sample(WORLD_SIZE, WORLD_SIZE * ROWS, 2)  # a loss's weights per process
    batch["views"] = torch.rand(WORLD_SIZE * ROWS * 2, 3, 8, 8, generator=generator)
    return batch


def local_rows(x: torch.Tensor, rank: int) -> torch.Tensor:
    return x[rank * ROWS:(rank + 1) * ROWS].clone()


def local_views(views: torch.Tensor, rank: int) -> torch.Tensor:
    """This process's images, view 1 of each then view 2, as the Siamese task hands them to Method.loss."""
    first, second = views.chunk(2)
    return torch.cat([local_rows(first, rank), local_rows(second, rank)])


def collective_results(batch: dict, rank: int) -> dict:
    from ssl_scripts.models import collectives
    seen = {"world_size": collectives.world_size(), "rank": collectives.rank()}
    x = local_rows(batch["gathered"], rank).requires_grad_()
    gathered = collectives.gather(x)
    (gathered * batch["weights"][rank]).sum().backward()  # a different loss on each process
    seen.update(gathered=gathered.detach(), gather_grad=x.grad.clone(),
                gather_start=collectives.gather_with_start(x.detach())[1])
    x.grad = None
    (collectives.gather(x) * batch["weights"][0]).sum().backward()  # the same loss on every process
    seen["gather_alike_grad"] = x.grad.clone()
    y = local_rows(batch["gathered"], rank).requires_grad_()
    summed = collectives.all_reduce_sum(y)
    (summed * local_rows(batch["weights"][rank], 0)).sum().backward()
    seen.update(summed=summed.detach(), sum_grad=y.grad.clone())
    return seen


def loss_results(batch: dict, rank: int) -> dict:
    from ssl_scripts.methods.barlowtwins import barlow_twins_loss
    from ssl_scripts.methods.mocov2 import KeyQueue, info_nce
    from ssl_scripts.methods.vicreg import vicreg_loss
    from ssl_scripts.models import collectives
    seen = {}
    for name, loss_of in (("barlowtwins", lambda a, b: barlow_twins_loss(a, b, 0.0051, 0.1)),
                          ("vicreg", lambda a, b: vicreg_loss(a, b, 25.0, 25.0, 1.0))):
        z1, z2 = local_rows(batch["z1"], rank).requires_grad_(), local_rows(batch["z2"], rank).requires_grad_()
        loss = loss_of(z1, z2)
        loss.backward()
        seen[name] = {"loss": loss.detach(), "z1_grad": z1.grad, "z2_grad": z2.grad}
    torch.manual_seed(1)  # the queue's random start, alike on every process
    queue = KeyQueue(QUEUE_SIZE, DIM)
    start = queue.keys.clone()
    q1, q2 = local_rows(batch["q1"], rank).requires_grad_(), local_rows(batch["q2"], rank).requires_grad_()
    k1, k2 = local_rows(batch["k1"], rank), local_rows(batch["k2"], rank)
    loss = (info_nce(q1, k2, start, TEMPERATURE) + info_nce(q2, k1, start, TEMPERATURE)) / 2
    loss.backward()
    queue.push(collectives.gather(k2))
    seen["mocov2"] = {"loss": loss.detach(), "q1_grad": q1.grad, "q2_grad": q2.grad, "start": start,
                      "queue": queue.keys.clone(), "next": queue.next.clone()}
    return seen


def built_method(name: str):
    """(method, model, head) on a tiny simple_cnn without batch norm anywhere, alike on every process (seeded)."""
    from helpers import parse
    from ssl_scripts.methods import METHODS as ALL_METHODS
    from ssl_scripts.models import encoders
    args = parse(["--method", name, "--model", "simple_cnn", "--dataset", "synthetic", "--no-head-bn"], "siamese")
    method = ALL_METHODS[name](args.replace(**METHOD_OPTIONS))
    torch.manual_seed(2)
    encoder = encoders.build_encoder("simple_cnn", 8)
    head = method.head(encoder)
    return method, encoders.EncoderWithHead(encoder, head), head


def method_results(batch: dict, rank: int) -> dict:
    seen = {}
    for name in METHODS:
        method, model, head = built_method(name)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        views = local_views(batch["views"], rank)
        output = model(views)
        loss, _ = method.loss(model, head, views, output, torch.ones(ROWS))
        loss.backward()
        seen[name] = {"start": start, "loss": loss.detach(),
                      "grads": {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
                      "after": {k: v.clone() for k, v in head.state_dict().items() if k.startswith("queue.")}}
    return seen


def worker(rank: int, out: str, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        batch = whole_batch()
        seen = {}
        for section, results in (("collectives", collective_results), ("losses", loss_results),
                                 ("methods", method_results)):
            try:  # a broken collective fails its own section's tests only (it fails alike on every process)
                seen[section] = results(batch, rank)
            except Exception:
                seen[section] = {"error": traceback.format_exc()}
        torch.save(seen, os.path.join(out, f"rank{rank}.pt"))
        if rank == 0:
            torch.save(batch, os.path.join(out, "inputs.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    import helpers  # noqa: F401  imported once here, forked into both processes: seconds less than spawning
    import ssl_scripts.methods  # noqa: F401
    import ssl_scripts.tasks  # noqa: F401
    mp.start_processes(worker, args=(sys.argv[1], free_port()), nprocs=WORLD_SIZE, start_method="fork")
