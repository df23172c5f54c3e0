"""Train/validation split and the batches cut from it.

Stream batches (the default) serve truncated backprop through time. The split is cut into R equal
rows (R = batch size x world size) and each step takes the next T characters of every row, so batch
row b at step s+1 continues exactly where it stopped at step s and the hidden state can be carried:

    tokens: |row 0 ......|row 1 ......|row 2 ......|row 3 ......|
    step 0:  [T]          [T]          [T]          [T]
    step 1:     [T]          [T]          [T]          [T]       rank 0 takes rows 0-1, rank 1 rows 2-3

Random batches take windows at random offsets (the state is reset every step). Both are
deterministic for a seed, and their position is a small dict that checkpoints save and restore.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from charrnn.errors import CharRNNError

# (x (B, T), y (B, T), new_stream: reset the carried state first, labels (B,) or None)
Batch = tuple[torch.Tensor, torch.Tensor, bool, "torch.Tensor | None"]


def split(tokens: np.ndarray, val_frac: float, test_frac: float = 0.0
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split by position: train first, then the last val_frac (then test_frac, if any)."""
    if not (0 <= val_frac and 0 <= test_frac and val_frac + test_frac < 1):
        raise CharRNNError(f"--val-frac {val_frac} and --test-frac {test_frac} must be >= 0 and sum to "
                           "less than 1, so that some text is left to train on")
    n = len(tokens)
    n_test = int(n * test_frac)
    n_val = int(n * val_frac)
    n_train = n - n_val - n_test
    return tokens[:n_train], tokens[n_train:n_train + n_val], tokens[n_train + n_val:]


def _windows(tokens: np.ndarray, starts: np.ndarray, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-character targets of the windows at `starts`, each (B, length)."""
    w = torch.from_numpy(tokens[starts[:, None] + np.arange(length + 1)].astype(np.int64))
    return w[:, :-1], w[:, 1:]


class StreamBatches:
    """Contiguous rows for truncated BPTT; row i of this rank's batch continues row i of the last."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_length: int,
                 rank: int = 0, world_size: int = 1):
        rows = batch_size * world_size
        self.row_length = (len(tokens) - 1) // rows
        if self.row_length < seq_length:
            raise CharRNNError(
                f"the training text ({len(tokens):,} chars) is too short for {rows} rows of "
                f"--seq-length {seq_length}; use a longer corpus or a smaller --batch-size/--seq-length")
        self.tokens, self.seq_length = tokens, seq_length
        self.starts = (np.arange(batch_size) + rank * batch_size) * self.row_length
        self.steps_per_epoch = self.row_length // seq_length
        self.epoch, self.step_in_epoch = 0, 0

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        """(x, y, new_stream, labels): new_stream means the carried state must be reset first;
        running text has no labels (items.ItemBatches has)."""
        new_stream = self.step_in_epoch == 0
        x, y = _windows(self.tokens, self.starts + self.step_in_epoch * self.seq_length, self.seq_length)
        self.step_in_epoch += 1
        if self.step_in_epoch == self.steps_per_epoch:  # so `epoch` counts finished epochs, as in RandomBatches
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        return x, y, new_stream, None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Continue where a saved position left off; saved with another number of rows (another
        number of processes), continue at the same fraction of the epoch."""
        self.epoch, step = int(state["epoch"]), int(state["step_in_epoch"])
        saved_steps = int(state.get("steps_per_epoch", self.steps_per_epoch))
        if saved_steps != self.steps_per_epoch:
            step = step * self.steps_per_epoch // saved_steps
        self.step_in_epoch = min(step, self.steps_per_epoch - 1)


class RandomBatches:
    """Windows at random offsets; batch s depends only on (seed, s), so resuming is exact."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_length: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if len(tokens) <= seq_length:
            raise CharRNNError(
                f"the training text ({len(tokens):,} chars) is shorter than one window of "
                f"--seq-length {seq_length}; use a longer corpus or a smaller --seq-length")
        self.tokens, self.batch_size, self.seq_length, self.seed = tokens, batch_size, seq_length, seed
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = max(1, len(tokens) // (batch_size * world_size * seq_length))
        self.step = 0

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        rng = np.random.default_rng([self.seed, self.step])
        starts = rng.integers(0, len(self.tokens) - self.seq_length, self.batch_size * self.world_size)
        mine = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        self.step += 1
        return *_windows(self.tokens, mine, self.seq_length), True, None

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def eval_chunks(tokens: np.ndarray, streams: int, seq_length: int) -> Iterator[Batch]:
    """Every character of a split, as `streams` contiguous rows read T characters at a time,
    in the form of training batches: (x, y, new_stream, labels)."""
    row_length = (len(tokens) - 1) // streams
    starts = np.arange(streams) * row_length
    for pos in range(0, row_length, seq_length):
        yield *_windows(tokens, starts + pos, min(seq_length, row_length - pos)), pos == 0, None
