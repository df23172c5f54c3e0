"""Sampling text from a model: temperature, top-k, top-p, prime, stop string, several samples at once.

The prime goes through the model in one forward pass; then one character per step, carrying the
state, in numpy (see Stepper). Randomness comes from a seeded numpy Generator only, so the same
seed gives the same text.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import numpy as np
import torch

from charrnn.errors import CharRNNError
from charrnn.model import GATES, CharRNN, State, state_from_list, state_to_list
from charrnn.vocab import Vocab


@dataclass(frozen=True)
class SampleConfig:
    length: int = 500
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    stop: str | None = None

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise CharRNNError(f"temperature must be a finite number >= 0, not {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise CharRNNError(f"top-k must be >= 1, not {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise CharRNNError(f"top-p must be in (0, 1], not {self.top_p}")
        if self.length < 1:
            raise CharRNNError(f"length must be >= 1, not {self.length}")


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
    """One character index per row of logits (N, V), under the config's temperature and filters."""
    if config.temperature == 0:  # greedy
        return logits.argmax(-1)
    logits = filter_logits(logits, config.temperature, config.top_k, config.top_p)
    # Gumbel-max: the argmax of logits plus Gumbel noise is a draw from softmax(logits), in three
    # numpy calls; characters at -inf are never drawn.
    return (logits + generator.gumbel(size=logits.shape)).argmax(-1)


class Stepper:
    """The model's one-character step written out by hand in numpy, for sampling speed.

    For one character the cost is per-call overhead, not arithmetic: a fused nn.LSTM call costs
    milliseconds of set-up, a torch operation several microseconds, a numpy one about one. The
    first layer's input product is precomputed for every character (the lookup table times its
    input weights, plus biases), so a step starts with a row lookup. States are tuples of
    float32 arrays laid out like the model's: (h,) or, for an LSTM, (h, c), each (L, N, H).
    """

    def __init__(self, model: CharRNN):
        cfg, rnn = model.config, model.rnn
        self.cell, hidden = cfg.model, cfg.rnn_size
        # sigmoid(x) = (1 + tanh(x / 2)) / 2: with the sigmoid gates' weights and biases halved
        # here, one tanh call serves every gate of a step.
        scale = np.ones(GATES[self.cell] * hidden, dtype=np.float32)
        scale[:2 * hidden if self.cell != "rnn" else 0] = 0.5      # LSTM i, f; GRU r, z
        if self.cell == "lstm":
            scale[3 * hidden:] = 0.5                                  # LSTM o
        keep_hh_bias = self.cell == "gru"  # GRU keeps b_hh apart: it sits inside r * (W_hn h + b_hn)
        self.layers = []
        with torch.no_grad():
            for k in range(cfg.num_layers):
                w_ih, w_hh = getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")
                b_ih, b_hh = getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}")
                b_in = b_ih if keep_hh_bias else b_ih + b_hh
                w_in = model.embed.weight @ w_ih.T + b_in if k == 0 else w_ih.T   # (V or H, G*H)
                self.layers.append(tuple(
                    None if t is None else np.ascontiguousarray(t.float().cpu().numpy() * scale)
                    for t in (w_in, b_in, w_hh.T, b_hh if keep_hh_bias else None)))
            self.w_out = model.head.weight.T.float().cpu().contiguous().numpy()
            self.b_out = model.head.bias.float().cpu().numpy()

    def __call__(self, idx: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """idx (N,) and a state -> logits (N, V) and the next state."""
        new = tuple(np.empty_like(s) for s in state)
        x, n = None, state[0].shape[2]
        for k, (w_in, b_in, w_hh, b_hh) in enumerate(self.layers):
            h = state[0][k]
            gx = w_in[idx] if k == 0 else x @ w_in + b_in      # (N, G*H); the table holds b_in
            x = new[0][k]
            if self.cell == "lstm":
                t = np.tanh(gx + h @ w_hh)
                t1 = t + 1                                      # 2 * sigmoid for i, f, o
                c = new[1][k]
                np.multiply(t1[:, n:2 * n], state[1][k], out=c)
                c += t1[:, :n] * t[:, 2 * n:3 * n]
                c *= 0.5                                        # c' = sigmoid(f) c + sigmoid(i) g
                np.multiply(t1[:, 3 * n:], np.tanh(c), out=x)
                x *= 0.5                                        # h' = sigmoid(o) tanh(c')
            elif self.cell == "gru":
                gh = h @ w_hh + b_hh
                rz = np.tanh(gx[:, :2 * n] + gh[:, :2 * n]) * 0.5 + 0.5
                cand = np.tanh(gx[:, 2 * n:] + rz[:, :n] * gh[:, 2 * n:])
                np.add(cand, rz[:, n:] * (h - cand), out=x)    # h' = (1 - z) n + z h
            else:
                np.tanh(gx + h @ w_hh, out=x)
        return x @ self.w_out + self.b_out, new


def start_indices(vocab: Vocab, prime: str, skip_unknown: bool = False) -> list[int]:
    """The prime's indices; with no prime, a newline (or the first character) starts the text."""
    indices = vocab.encode(prime, skip_unknown)
    if indices:
        return indices
    return [vocab.chars.index("\n") if "\n" in vocab else 0]


def make_generator(seed: int | None) -> np.random.Generator:
    """A generator seeded with `seed`, or from the OS when it is None."""
    if seed is not None and not 0 <= seed <= 2**63 - 1:
        raise CharRNNError(f"seed must be an integer from 0 to 2**63-1, not {seed}")
    return np.random.default_rng(seed)


class Streamer:
    """Writes text as it comes and flushes every few milliseconds, not every character."""

    def __init__(self, out: TextIO, interval: float = 0.02):
        self.out, self.interval, self.last = out, interval, time.perf_counter()

    def __call__(self, text: str) -> None:
        self.out.write(text)
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.out.flush()
            self.last = now


@torch.no_grad()
def generate(model: CharRNN, vocab: Vocab, config: SampleConfig, prime: str = "", *,
             num_samples: int = 1, generator: np.random.Generator | None = None, state: State | None = None,
             on_text: Callable[[str], None] | None = None, skip_unknown: bool = False,
             ) -> tuple[list[str], State]:
    """Continue `prime` (after `state`, if given) `num_samples` times.

    Returns the new text of each sample and the state before its last character: passing that
    character as the next prime, with that state, continues the text exactly. `on_text` receives
    the first sample's characters as they are made (for streaming).
    """
    device = next(model.parameters()).device
    generator = generator or make_generator(None)
    model.eval()
    idx = torch.tensor(start_indices(vocab, prime, skip_unknown), device=device)
    log_probs, model_state = model(idx.expand(num_samples, -1), _expand(state, num_samples))
    logits = log_probs[:, -1].cpu().numpy()                    # (N, V)
    state = tuple(s.float().numpy() for s in state_to_list(model_state))
    step = Stepper(model)
    chars, texts = vocab.chars, [[] for _ in range(num_samples)]
    done = [False] * num_samples  # a list, not an array: this loop runs once per character
    for t in range(config.length):
        nxt = draw(logits, config, generator)
        for i, c in enumerate(nxt.tolist()):
            if not done[i]:
                texts[i].append(chars[c])
                done[i] = _ends_with(texts[i], config.stop)
                if i == 0 and on_text:
                    on_text(chars[c])
        if all(done) or t == config.length - 1:
            break
        logits, new_state = step(nxt, state)
        if any(done):  # a finished sample keeps the state from before its last character
            rows = np.array(done)[:, None]
            new_state = tuple(np.where(rows, old, new) for old, new in zip(state, new_state))
        state = new_state
    return ["".join(t) for t in texts], state_from_list([torch.from_numpy(s) for s in state], device)


def _ends_with(text: list[str], stop: str | None) -> bool:
    return bool(stop) and "".join(text[-len(stop):]) == stop


def _expand(state: State | None, n: int) -> State | None:
    """A single stream's state copied to n rows (a state for n rows already is left alone)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(_expand(s, n) for s in state)
    return state if state.shape[1] == n else state.expand(-1, n, -1).contiguous()
