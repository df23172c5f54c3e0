"""Sampling text from a model: temperature, top-k, top-p, prime, stop string, several samples at once.

The prime goes through the model in one forward pass; then one character per step, carrying the
state. Randomness comes from a seeded torch.Generator only, so the same seed gives the same text.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import torch

from charrnn.errors import CharRNNError
from charrnn.model import CharRNN, State
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


def next_char_probs(log_probs: torch.Tensor, temperature: float, top_k: int | None = None,
                    top_p: float | None = None) -> torch.Tensor:
    """Log-probabilities (N, V) -> the distribution to draw from (N, V), after the filters."""
    if temperature == 0:  # greedy: all the mass on the most likely character
        return torch.nn.functional.one_hot(log_probs.argmax(-1), log_probs.shape[-1]).float()
    # A temperature below float32's range would divide by 0 (0/0 = NaN, and a row of -inf). At 1e-30
    # the draw is already greedy for any logits a model makes, and no |logit| < 1e8 overflows.
    logits = log_probs.float() / max(temperature, 1e-30)
    if top_k is not None and top_k < logits.shape[-1]:
        # by index, not by value: with ties at the k-th value a threshold would keep more than k
        top = logits.topk(top_k, dim=-1).indices
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, top, True)
        logits = logits.masked_fill(~keep, -math.inf)
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a character when the ones more likely than it already reach top_p
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop_sorted[..., 0] = False  # the likeliest always stays, even if top_p rounds to 0 in float32
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -math.inf)
    return logits.softmax(-1)


class Stepper:
    """The model's one-character step written out by hand, for sampling speed.

    A fused nn.LSTM call costs milliseconds of set-up for a single character; these few tensor
    operations per layer cost microseconds. The first layer's input product is precomputed for
    every character (the lookup table times its input weights, plus biases), so a step starts
    with a row lookup. The state has the model's layout, so it passes between the two freely.
    """

    def __init__(self, model: CharRNN):
        cfg, rnn = model.config, model.rnn
        self.cell, self.hidden = cfg.model, cfg.rnn_size
        fold_hh_bias = cfg.model != "gru"  # GRU keeps b_hh apart: it sits inside r * (W_hn h + b_hn)
        self.layers = []
        with torch.no_grad():
            for k in range(cfg.num_layers):
                w_ih, w_hh = getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")
                b_ih, b_hh = getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}")
                b_in = b_ih + b_hh if fold_hh_bias else b_ih
                if k == 0:
                    w_in = model.embed.weight @ w_ih.T + b_in          # (V, G*H): a row per character
                else:
                    w_in = w_ih.T.contiguous()                          # (H, G*H)
                self.layers.append((w_in, b_in, w_hh.T.contiguous(), None if fold_hh_bias else b_hh))
            self.w_out, self.b_out = model.head.weight.T.contiguous(), model.head.bias.clone()

    def __call__(self, idx: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """idx (N,) and a model state -> logits (N, V) and the next state."""
        h_all, c_all = state if self.cell == "lstm" else (state, None)
        hs, cs = [], []
        x = None
        for k, (w_in, b_in, w_hh, b_hh) in enumerate(self.layers):
            h = h_all[k]
            gx = w_in[idx] if k == 0 else torch.addmm(b_in, x, w_in)   # (N, G*H)
            if self.cell == "lstm":
                gates = torch.addmm(gx, h, w_hh)
                sig = gates.sigmoid()
                i, f, o = sig[:, :self.hidden], sig[:, self.hidden:2 * self.hidden], sig[:, 3 * self.hidden:]
                c = torch.addcmul(f * c_all[k], i, gates[:, 2 * self.hidden:3 * self.hidden].tanh())
                x = o * c.tanh()
                cs.append(c)
            elif self.cell == "gru":
                gh = torch.addmm(b_hh, h, w_hh)
                rz = (gx[:, :2 * self.hidden] + gh[:, :2 * self.hidden]).sigmoid()
                r, z = rz[:, :self.hidden], rz[:, self.hidden:]
                n = torch.addcmul(gx[:, 2 * self.hidden:], r, gh[:, 2 * self.hidden:]).tanh()
                x = torch.addcmul(n, z, h - n)
            else:
                x = torch.addmm(gx, h, w_hh).tanh()
            hs.append(x)
        h_new = torch.stack(hs)
        logits = torch.addmm(self.b_out, x, self.w_out)
        return logits, ((h_new, torch.stack(cs)) if self.cell == "lstm" else h_new)


def start_indices(vocab: Vocab, prime: str, skip_unknown: bool = False) -> list[int]:
    """The prime's indices; with no prime, a newline (or the first character) starts the text."""
    indices = vocab.encode(prime, skip_unknown)
    if indices:
        return indices
    return [vocab.chars.index("\n") if "\n" in vocab else 0]


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded with `seed`, or from the OS when it is None."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # from the OS; torch.seed() would also reseed torch's global generator
    elif not 0 <= seed <= 2**63 - 1:
        raise CharRNNError(f"seed must be an integer from 0 to 2**63-1, not {seed}")
    else:
        generator.manual_seed(seed)
    return generator


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
             num_samples: int = 1, generator: torch.Generator | None = None, state: State | None = None,
             on_text: Callable[[str], None] | None = None, skip_unknown: bool = False,
             ) -> tuple[list[str], State]:
    """Continue `prime` (after `state`, if given) `num_samples` times.

    Returns the new text of each sample and the state before its last character: passing that
    character as the next prime, with that state, continues the text exactly. `on_text` receives
    the first sample's characters as they are made (for streaming).
    """
    device = next(model.parameters()).device
    generator = generator or make_generator(None, device)
    model.eval()
    idx = torch.tensor(start_indices(vocab, prime, skip_unknown), device=device)
    log_probs, state = model(idx.expand(num_samples, -1), _expand(state, num_samples))
    last = log_probs[:, -1]                                  # (N, V)
    step = Stepper(model)
    chars, texts = vocab.chars, [[] for _ in range(num_samples)]
    done = [False] * num_samples
    for t in range(config.length):
        probs = next_char_probs(last, config.temperature, config.top_k, config.top_p)
        nxt = torch.multinomial(probs, 1, generator=generator).view(-1)   # (N,)
        for i, c in enumerate(nxt.tolist()):
            if not done[i]:
                texts[i].append(chars[c])
                done[i] = _ends_with(texts[i], config.stop)
                if i == 0 and on_text:
                    on_text(chars[c])
        if all(done) or t == config.length - 1:
            break
        last, new_state = step(nxt, state)
        # a finished sample keeps the state from before its last character, as for the others
        state = _keep_rows(torch.tensor(done, device=device), state, new_state) if any(done) else new_state
    return ["".join(t) for t in texts], state


def _ends_with(text: list[str], stop: str | None) -> bool:
    return bool(stop) and "".join(text[-len(stop):]) == stop


def _keep_rows(rows: torch.Tensor, old: State, new: State) -> State:
    """`new`, except the batch rows where `rows` (N,) is True, which keep `old`."""
    if isinstance(new, tuple):
        return tuple(_keep_rows(rows, o, n) for o, n in zip(old, new))
    return torch.where(rows.view(1, -1, 1), old, new)


def _expand(state: State | None, n: int) -> State | None:
    """A single stream's state copied to n rows (a state for n rows already is left alone)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(_expand(s, n) for s in state)
    return state if state.shape[1] == n else state.expand(-1, n, -1).contiguous()
