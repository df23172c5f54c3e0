"""Sampling text from a model: temperature, top-k, top-p, prime, stop string, several samples at once.

The prime goes through the model in one forward pass; then one character per step, carrying the
state, in numpy (see model.NumpyStep). Randomness comes from a seeded numpy Generator only, so the same
seed gives the same text. A model of items starts each sample at the item marker (then the prime)
and ends it where it draws the marker again; `generate_items` draws whole items, new ones if asked.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from charrnn.config import NOVEL_DRAWS, SampleConfig
from charrnn.device import ThreadGovernor
from charrnn.errors import CharRNNError
from charrnn.items import is_known, normalise
from charrnn.model import CharRNN, NumpyStep, State, state_from_list, state_to_list
from charrnn.vocab import Vocab

END = ""  # what a sample of items yields when it draws the marker: its end, and no character


def filter_logits(logits: np.ndarray, temperature: float, top_k: int | None = None,
                  top_p: float | None = None) -> np.ndarray:
    """Logits (N, V) and a temperature > 0 -> float64 logits / temperature, -inf outside top-k and top-p."""
    rows = np.arange(len(logits))[:, None]
    # A temperature of 1e-300 would overflow to inf and make NaNs. At 1e-30 the draw is already
    # greedy for any logits a model makes, and no |logit| < 1e270 overflows in float64.
    logits = logits.astype(np.float64) / max(temperature, 1e-30)
    if top_k is not None and top_k < logits.shape[-1]:
        # by index, not by value: with ties at the k-th value a threshold would keep more than k
        keep = np.zeros(logits.shape, dtype=bool)
        keep[rows, np.argpartition(-logits, top_k - 1, axis=-1)[:, :top_k]] = True
        logits = np.where(keep, logits, -np.inf)
    if top_p is not None and top_p < 1:
        order = np.argsort(-logits, axis=-1, kind="stable")
        sorted_logits = logits[rows, order]
        probs = np.exp(sorted_logits - sorted_logits[:, :1])
        probs /= probs.sum(-1, keepdims=True)
        # drop a character when the ones more likely than it already reach top_p
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop_sorted[:, 0] = False  # the likeliest always stays, even if top_p rounds to 0
        drop = np.empty_like(drop_sorted)
        drop[rows, order] = drop_sorted
        logits = np.where(drop, -np.inf, logits)
    return logits


def draw(logits: np.ndarray, config: SampleConfig, generator: np.random.Generator) -> np.ndarray:
    """One character index per row of logits (N, V), under the config's temperature and filters.

    Two exact methods, whichever is cheaper: Gumbel-max for one row, the inverse CDF for several.
    """
    if config.temperature == 0:  # greedy
        return logits.argmax(-1)
    temperature = config.temperature
    if config.top_k is not None or config.top_p is not None:
        logits, temperature = filter_logits(logits, temperature, config.top_k, config.top_p), 1.0
    if len(logits) == 1:
        # One row (one stream): Gumbel-max. argmax(logits + T g), g Gumbel noise, is the argmax of
        # logits / T + g, a draw from softmax(logits / T). For one row the number of numpy calls
        # decides, not that of random numbers: this takes three, the inverse CDF below seven.
        return (logits[0] + generator.gumbel(0.0, temperature, logits.shape[1])).argmax(keepdims=True)
    if temperature < 1e-3:
        # float32 logits / temperature could pass float32's range; in float64 no |logit| < 1e278
        # does, and at 1e-30 the draw is already greedy for any logits a model makes
        logits, temperature = logits.astype(np.float64), max(temperature, 1e-30)
    # Several rows: inverse CDF. One uniform number u per row, scaled to the row's total of
    # exp(logits / T), picks the first character whose cumulative sum passes it. u < total, and a
    # character of probability 0 (at -inf, or too small to add anything) has an empty interval.
    x = logits - logits.max(-1, keepdims=True)
    if temperature != 1:
        x /= temperature
    cdf = np.exp(x, out=x).cumsum(-1, dtype=np.float64)
    u = generator.random(len(cdf)) * cdf[:, -1]
    return (cdf > u[:, None]).argmax(-1)


def start_indices(vocab: Vocab, prime: str, skip_unknown: bool = False) -> list[int]:
    """The prime's indices, after the marker for items; with no prime, a newline (or the first
    character) starts running text."""
    indices = vocab.encode(prime, skip_unknown)
    if vocab.items:
        return [vocab.marker, *indices]
    if indices:
        return indices
    return [vocab.chars.index("\n") if "\n" in vocab else 0]


def seen_prime(vocab: Vocab, prime: str, skip_unknown: bool = False) -> str:
    """The prime as the model reads it: with `skip_unknown`, without the characters it does not know."""
    return vocab.decode(vocab.encode(prime, skip_unknown)) if skip_unknown else prime


class Streamer:
    """Shows text as it comes: the first at once, then what came since, every few milliseconds.

    It holds the text itself, whatever the stream's buffering: with PYTHONUNBUFFERED (common in
    containers) every write is a system call, and one a character wakes the terminal on the core
    the sampler's second BLAS thread needs (one stream of a 3x512 through a terminal: 2,600-2,870
    chars/s against 3,040-3,250, bench/RESULTS.md 2026-12-07). Use it in a `with`: that shows the rest.
    """

    def __init__(self, out: TextIO, interval: float = 0.02):
        self.out, self.interval, self.last, self.held = out, interval, -math.inf, []

    def __call__(self, text: str) -> None:
        self.held.append(text)
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.flush()
            self.last = now

    def flush(self) -> None:
        self.out.write("".join(self.held))
        self.out.flush()
        self.held.clear()

    def __enter__(self) -> Streamer:
        return self

    def __exit__(self, *_) -> None:
        self.flush()


def generate(model: CharRNN, vocab: Vocab, config: SampleConfig, prime: str = "", *,
             num_samples: int = 1, generator: np.random.Generator | None = None, state: State | None = None,
             on_text: Callable[[str], None] | None = None, skip_unknown: bool = False,
             step: NumpyStep | None = None, labels: Sequence[int] | None = None) -> tuple[list[str], State]:
    """Continue `prime` (after `state`, if given) `num_samples` times, with `labels` for a model that has them.

    Returns the new text of each sample and the state before its last character: passing that
    character as the next prime, with that state, continues the text exactly. `on_text` receives
    the first sample's characters as they are made (for streaming).
    """
    steps = sample_steps(model, vocab, config, prime, num_samples=num_samples, generator=generator,
                         state=state, skip_unknown=skip_unknown, step=step, labels=labels)
    texts = None  # made after the prime's forward pass, which is where an impossible batch fails
    while True:
        try:
            new = next(steps)
        except StopIteration as end:
            return ["".join(t) for t in texts], end.value
        texts = texts or [[] for _ in new]
        for text, char in zip(texts, new):
            if char is not None:
                text.append(char)
        if on_text and new[0] is not None:
            on_text(new[0])


def sample_steps(model: CharRNN, vocab: Vocab, config: SampleConfig, prime: str = "", *,
                 num_samples: int = 1, generator: np.random.Generator | None = None,
                 state: State | None = None, skip_unknown: bool = False, step: NumpyStep | None = None,
                 labels: Sequence[int] | None = None) -> Generator[list[str | None], None, State]:
    """Yield each step's new character of every sample (None for a finished one, END for the end of
    an item); return the state.

    A stop string may begin in the prime. Pass `step` to reuse one NumpyStep over many calls.
    """
    device = next(model.parameters()).device
    generator = generator or np.random.default_rng(config.seed)
    model.eval()
    idx = torch.tensor(start_indices(vocab, prime, skip_unknown), device=device)
    label_rows = None if labels is None else torch.as_tensor(labels, dtype=torch.long, device=device)
    # no_grad here, not as a decorator: on a generator function that wraps every step's resumption
    # in two grad-mode switches, about 10 microseconds a character
    with torch.no_grad():
        log_probs, model_state = model(idx.expand(num_samples, -1), _expand(state, num_samples), label_rows)
    logits = log_probs[:, -1].cpu().numpy()                    # (N, V)
    # the state stays in the stream's buffers, moved on in place, one character a call
    step = step or NumpyStep(model)
    stream = step.stream(tuple(s.float().numpy() for s in state_to_list(model_state)),
                         None if labels is None else np.asarray(labels))
    stop = config.stop or ""
    tails = [seen_prime(vocab, prime, skip_unknown)[-(len(stop) - 1):] if len(stop) > 1 else ""] * num_samples
    chars = vocab.chars + [END] * vocab.items  # a sample of items ends at the marker
    done = [False] * num_samples  # a list, not an array: this loop runs once per character
    kept = None  # the state of each finished sample, from before its last character
    # numpy's BLAS threads: one for a few rows of a small model (too little work to share); for a
    # batch or a big model, the cores other processes leave free (two threads wait for each other at
    # every product, and a busy neighbour turns that into a quarter of the speed: bench/contention.py).
    # One stream starts on one thread and takes a second once the governor sees a core free: its
    # spinning threads crowd a neighbour and hide it from the governor (bench/RESULTS.md, 2026-12-07).
    cores = os.cpu_count() or 1
    batch = num_samples >= step.WIDE_ROWS
    shared = cores > 1 and (batch or step.product_bytes >= step.SHARED_BYTES)
    start = cores if shared and batch else 1
    limits = threadpool_limits(limits=start, user_api="blas")
    governor = (ThreadGovernor(cores, interval=0.5, apply=lambda n: threadpool_limits(limits=n, user_api="blas"),
                               start=start) if shared else lambda: None)
    try:
        for t in range(config.length):
            nxt = draw(logits, config, generator)                  # (N,)
            new = [None if d else chars[c] for d, c in zip(done, nxt.tolist())]
            if stop or vocab.items:
                finished = []
                for i, char in enumerate(new):  # the last len(stop) characters, prime included
                    if char is not None:
                        tails[i] = (tails[i] + char)[-len(stop):] if stop else ""
                        if char == END or (stop and tails[i] == stop):
                            done[i] = True
                            finished.append(i)
                if finished:  # a finished sample keeps the state from before its last character
                    now = stream.state()
                    if kept is None:
                        kept = now
                    for mine, current in zip(kept, now):
                        mine[:, finished] = current[:, finished]
            yield new
            if all(done) or t == config.length - 1:
                break
            logits = stream(nxt)  # finished samples move on too, unseen: cheaper than taking them out
            governor()
    finally:
        limits.restore_original_limits()
    state = stream.state()
    if kept is not None:
        for mine, finished in zip(state, kept):
            mine[:, done] = finished[:, done]
    return state_from_list([torch.from_numpy(s) for s in state], device)


def _expand(state: State | None, n: int) -> State | None:
    """A single stream's state copied to n rows (a state for n rows already is left alone)."""
    if state is None or state[0].shape[1] == n:
        return state
    return tuple(s.expand(-1, n, -1).contiguous() for s in state)


@dataclass
class ItemDraw:
    """Items drawn by `generate_items`: each text, whether it ended before the length cap, and
    what --novel threw away."""
    texts: list[str] = field(default_factory=list)
    whole: list[bool] = field(default_factory=list)
    labels: list[int | None] = field(default_factory=list)
    draws: int = 0
    copies: int = 0   # items of the training list
    repeats: int = 0  # items already drawn

    def shortfall(self, asked: int) -> str | None:
        """Why there are fewer items than `asked`, or None."""
        if len(self.texts) >= asked:
            return None
        return (f"only {len(self.texts)} new item{'s' * (len(self.texts) != 1)} of {asked} in {self.draws:,} draws "
                f"({self.copies:,} copies of the training list, {self.repeats:,} repeats): the model mostly copies "
                "its list; raise --temperature, or sample an earlier checkpoint")


def generate_items(model: CharRNN, vocab: Vocab, config: SampleConfig, prime: str = "", *,
                   num_samples: int = 1, label: int | None = None, known: np.ndarray | None = None,
                   generator: np.random.Generator | None = None, skip_unknown: bool = False,
                   step: NumpyStep | None = None) -> ItemDraw:
    """`num_samples` items that begin with `prime`, of `label` (a model with labels: else each of a
    random one); with `known` (the training list's fingerprints), only new ones, none twice, drawn
    in batches until there are enough or NOVEL_DRAWS per item."""
    if not vocab.items:
        raise CharRNNError("this model was trained on running text, not a list; items need a model "
                           "trained with --items")
    generator = generator or np.random.default_rng(config.seed)
    shown, out, seen = seen_prime(vocab, prime, skip_unknown), ItemDraw(), set()
    num_labels = model.config.num_labels
    limit = num_samples * (NOVEL_DRAWS if known is not None else 1)
    while len(out.texts) < num_samples and out.draws < limit:
        rows = num_samples - len(out.texts)
        if out.draws:  # a later round of --novel: draw more than missing, copies are likely again
            rows = min(max(2 * rows, 8), 256, limit - out.draws)
        labels = ([label] * rows if label is not None else generator.integers(num_labels, size=rows).tolist()
                  if num_labels else None)
        texts, _ = generate(model, vocab, config, prime, num_samples=rows, generator=generator,
                            skip_unknown=skip_unknown, step=step, labels=labels)
        out.draws += rows
        for text, row_label in zip(texts, labels or [None] * rows):
            item = shown + text
            if known is not None and is_known(item, known):
                out.copies += 1
            elif known is not None and normalise(item) in seen:
                out.repeats += 1
            elif len(out.texts) < num_samples:
                seen.add(normalise(item))
                out.texts.append(item)
                out.whole.append(len(text) < config.length)
                out.labels.append(row_label)
    return out
