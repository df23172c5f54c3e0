"""Run under torchrun by test_distributed.py: train a few steps and check what each rank sees.

Writes, from rank 0, a JSON file with the per-step mean loss over ranks, whether the ranks' first
batches differed, and whether every rank's weights were identical after every step; or, given 0
steps, every rank's learning rate at every step of a whole run.
"""
import json
import os
import sys

import torch
import torch.distributed as dist

from charrnn.config import TrainConfig
from charrnn.distributed import stop, world_from_env
from charrnn.launch import build


def stop_and_check() -> None:
    """End the process group, and fail if gloo's threads outlive it: threads still running at
    interpreter shutdown abort the process there, now and then (charrnn/distributed.py)."""
    stop(world)
    tasks = "/proc/self/task"
    if os.path.isdir(tasks) and any(open(f"{tasks}/{t}/comm").read().startswith("pt_gloo") for t in os.listdir(tasks)):
        sys.exit("gloo's threads outlived the process group")


config = TrainConfig.from_dict(json.loads(sys.argv[1]))
out_path, steps = sys.argv[2], int(sys.argv[3])
trainer = build(config, world_from_env())
world = trainer.world

if steps == 0:  # the whole loop under its stopping rule: record every rank's learning rates
    rates = []
    trainer.callbacks.append(lambda t: rates.append(t.optimizer.param_groups[0]["lr"]))
    trainer.run(progress_bar=False)
    everyone = [None] * world.size
    dist.all_gather_object(everyone, rates)
    if world.is_main:
        with open(out_path, "w") as f:
            json.dump({"rates": everyone}, f)
    stop_and_check()
    sys.exit(0)

position = trainer.batches.state_dict()
first_x, *_ = next(trainer.batches)  # a peek: the position is put back before training
trainer.batches.load_state_dict(position)
xs = [torch.empty_like(first_x) for _ in range(world.size)]
dist.all_gather(xs, first_x)
losses, identical = [], True
for _ in range(steps):
    loss = torch.tensor([trainer.train_step()], dtype=torch.float64)
    dist.all_reduce(loss)
    losses.append(loss.item() / world.size)
    flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    copies = [torch.empty_like(flat) for _ in range(world.size)]
    dist.all_gather(copies, flat)
    identical &= all(torch.equal(copies[0], c) for c in copies)
if world.is_main:
    weights = {k: v.tolist() for k, v in trainer.model.state_dict().items()}
    with open(out_path, "w") as f:
        json.dump({"losses": losses, "identical": identical, "world": world.size,
                   "different_data": not torch.equal(xs[0], xs[1]), "weights": weights}, f)
stop_and_check()
