"""Data-parallel training with torch.distributed, as started by torchrun.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a world of one and every
helper below does nothing. Backend: nccl on CUDA, gloo otherwise.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                 int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", 1)))


def start(world: World, device: torch.device) -> None:
    if world.active and not dist.is_initialized():
        # torch._dynamo (imported by torch.optim) keeps a reference to a process group that exists
        # when it is first imported (torch 2.13). A group kept past destroy_process_group keeps
        # gloo's threads running into interpreter shutdown, where they abort the process as they
        # release the last collective's tensors (SIGABRT, "terminate called without an active
        # exception"). Imported first, it holds nothing and stop() ends the group for good.
        import torch._dynamo  # noqa: F401
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def stop(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def same_weights(world: World, model: torch.nn.Module) -> None:
    """Give every rank rank 0's weights (ranks seed differently, so their fresh models differ)."""
    if world.active:
        for t in model.state_dict().values():
            dist.broadcast(t, src=0)


def average_gradients(world: World, parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace every rank's gradients with their mean over ranks, in one all-reduce.

    Why not DistributedDataParallel: its wrapper holds the process group for as long as the
    trainer lives, past stop(), so gloo's threads can outlive it into interpreter shutdown and
    abort there (see start()). An RNN's gradients are only complete when backward ends, so DDP's
    overlap of communication with backward had little to hide anyway.
    """
    if not world.active:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    for g, mean in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(mean.view_as(g))


def agree(world: World, bad: bool, stop: bool, elapsed: float, device: torch.device) -> tuple[bool, bool, float]:
    """(any rank's loss went bad, any rank was asked to stop, rank 0's clock), in one all-reduce.

    Every rank then stops at the same step and computes the same learning rate from the same clock.
    """
    if not world.active:
        return bad, stop, elapsed
    t = torch.tensor([float(bad), float(stop), elapsed if world.is_main else 0.0], dtype=torch.float64,
                     device=device)
    dist.all_reduce(t)
    return t[0].item() > 0, t[1].item() > 0, t[2].item()


def sum_all(world: World, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all ranks."""
    if not world.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_rows(world: World, state: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's (L, B, H) state along the batch: the global batch's state, in rank order."""
    if not world.active:
        return state
    parts = [torch.empty_like(state) for _ in range(world.size)]
    dist.all_gather(parts, state.contiguous())
    return torch.cat(parts, dim=1)
