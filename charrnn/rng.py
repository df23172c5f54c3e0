"""Every random number generator a run draws from, seeded once and saved in checkpoints, so that a
resumed run draws exactly what the uninterrupted one would have."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture() -> dict:
    """The generators' states as plain data (tensors and lists) for a checkpoint."""
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            # dropout on a GPU draws from the GPU's generator, not the CPU one above
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def restore(states: dict) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    name, key, *rest = states["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
