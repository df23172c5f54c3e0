"""Scoring text under a model: the validation loss during training, and `generate.py --score`."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from charrnn import corpus, data, distributed, items
from charrnn.config import ADAPT_SEGMENT
from charrnn.errors import CharRNNError
from charrnn.items import Items
from charrnn.model import CharRNN, detach_state
from charrnn.vocab import Vocab

EVAL_STREAMS = 8   # a split is scored as 8 contiguous streams, state carried along each
EVAL_CHUNK = 1024  # characters per forward call: the state carries, so only speed changes


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokens: np.ndarray | Items, device: torch.device | str = "cpu",
             amp: torch.dtype | None = None, streams: int = EVAL_STREAMS, chunk: int = EVAL_CHUNK,
             world: distributed.World = distributed.World()) -> float:
    """Mean NLL in nats/char: of every character of `tokens` after the first, state carried; or of
    every item's characters and its end, each item from a fresh state.

    Under data parallelism each rank scores its share of the rows and the sums are combined.
    """
    total, count = loss_sums(model, tokens, device, amp, streams, chunk, world)
    return total / count


def loss_sums(model: torch.nn.Module, tokens: np.ndarray | Items, device: torch.device | str = "cpu",
              amp: torch.dtype | None = None, streams: int = EVAL_STREAMS, chunk: int = EVAL_CHUNK,
              world: distributed.World = distributed.World()) -> tuple[float, int]:
    """(summed NLL in nats, characters scored): what `evaluate` divides."""
    if isinstance(tokens, Items):
        batches = items.eval_batches(tokens)
    elif len(tokens) < 2:
        raise CharRNNError("nothing to evaluate: the split holds fewer than 2 characters")
    else:  # a split shorter than `streams` still counts
        batches = data.eval_chunks(tokens, max(1, min(streams, len(tokens) - 1)), chunk)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    mine = slice(world.rank, None, world.size)
    for x, y, new_stream, labels in batches:
        x, y = x[mine], y[mine]
        if len(x) == 0:  # fewer rows than ranks: this rank has none
            continue
        if new_stream:
            state = None
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            log_probs, state = model(x.to(device), state, None if labels is None else labels[mine].to(device))
        y = y.to(device).flatten()
        total += F.nll_loss(log_probs.flatten(0, 1), y, reduction="sum").item()  # padding is ignored
        count += int((y != items.IGNORE).sum())
    model.train(was_training)
    total, count = distributed.sum_all(world, [total, count], device)
    return total, int(count)


def score_file(model: CharRNN, vocab: Vocab, path: str | Path, encoding: str = "utf-8",
               skip_unknown: bool = False, adapt: float = 0.0) -> tuple[float, int]:
    """(nats per character, characters scored) of one text file, read as one stream (see score_tokens)."""
    path = Path(path)
    if not path.is_file():  # not a corpus name or a directory: --score reads the file it is given
        what = "is a directory; give one text file" if path.is_dir() else "does not exist"
        raise CharRNNError(f"--score file {path} {what}")
    source = corpus.Source(path.stem, (path,), corpus.check_encoding(encoding))
    tokens = np.concatenate([np.zeros(0, vocab.index_dtype)]  # an empty file yields no chunk at all
                            + [vocab.encode_points(corpus.code_points(text), skip_unknown)
                               for text in corpus.read_chunks(source)])
    return score_tokens(model, tokens, what=str(path), adapt=adapt)


def score_tokens(model: CharRNN, tokens: np.ndarray, what: str = "the text",
                 adapt: float = 0.0) -> tuple[float, int]:
    """(nats per character, characters scored) of indices read as one stream; with `adapt`, by
    dynamic evaluation at that learning rate."""
    if len(tokens) < 2:
        raise CharRNNError(f"{what} has fewer than 2 known characters; nothing to score")
    if adapt:
        return adapted_loss_sum(model, tokens, adapt) / (len(tokens) - 1), len(tokens) - 1
    return evaluate(model, tokens, next(model.parameters()).device, streams=1), len(tokens) - 1


def adapted_loss_sum(model: CharRNN, tokens: np.ndarray, lr: float, segment: int = ADAPT_SEGMENT) -> float:
    """Summed NLL of one stream by dynamic evaluation (Krause et al. 2018): each segment is scored
    first, then a copy of the model takes an SGD step on it, so that it reads the rest of the text
    knowing the names and words it has met so far. The model itself is left as it was."""
    model = copy.deepcopy(model).eval()  # no dropout: the steps adapt the weights that score
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    tokens = torch.from_numpy(np.asarray(tokens, dtype=np.int64)).to(next(model.parameters()).device)
    total, state = 0.0, None
    with torch.backends.cudnn.flags(enabled=False):  # cuDNN's RNN takes no backward pass in eval mode
        for start in range(0, len(tokens) - 1, segment):
            y = tokens[start + 1:start + 1 + segment]
            log_probs, state = model(tokens[start:start + len(y)][None], state)
            loss = F.nll_loss(log_probs[0], y, reduction="sum")
            total += loss.item()  # scored before the step that learns from it
            optimizer.zero_grad(set_to_none=True)
            (loss / len(y)).backward()
            optimizer.step()
            state = detach_state(state)
    return total


def score_items(model: CharRNN, listed: Items) -> tuple[float, int]:
    """(nats per character, characters scored) of a list's items, each from a fresh state; an
    item's end counts as one character."""
    if not len(listed):
        raise CharRNNError("the list holds no items; nothing to score")
    total, count = loss_sums(model, listed, next(model.parameters()).device)
    return total / count, count


def describe_score(what: str, nats: float, count: int, num_items: int = 0, adapt: float = 0.0) -> str:
    """The line `generate.py --score` prints (tests and bench/web_speed.py read it); for a list,
    the loss per item too."""
    line = f"{what}: {nats:.4f} nats/char, {nats / math.log(2):.4f} bits/char over {count:,} characters"
    if adapt:
        line += f", adapting as it read (--adapt {adapt:g}: not comparable with a score without it)"
    if num_items:
        line += (f" ({num_items:,} items, their ends counted as characters); "
                 f"{nats * count / num_items:.3f} nats per item")
    return line
