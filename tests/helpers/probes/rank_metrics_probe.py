"""Not a test: launched by test_tracking.py with two processes. Feeds the real Run a different train loss on
each rank and writes what each rank fed, so the test can compare W&B's logged values with the per-rank ones."""
import json
import os
import sys

import torch


from helpers import parse, prepared_run, training_accelerator

args = parse(sys.argv[1:])
accelerator = training_accelerator(args)
run, model = prepared_run(args, accelerator, torch.nn.Linear(2, 1), project="probe")
generator = torch.Generator().manual_seed(accelerator.process_index)
fed = []
for epoch in run.epochs():
    for indices in run.batches():
        loss = torch.rand((), generator=generator) * (1 + 10 * accelerator.process_index)  # ranks far apart
        fed.append({"step": run.state.step + 1, "loss": loss.item()})
        run.end_batch(images=len(indices), samples=len(indices), loss=loss)
with open(os.path.join(args.output_dir, f"fed_rank{accelerator.process_index}.json"), "w") as f:
    json.dump(fed, f)
accelerator.end_training()
