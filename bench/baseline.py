"""The baseline charrnn is measured against: a plain, well-written PyTorch character LSTM.

What a user would write from the PyTorch docs: embedding, nn.LSTM, linear head, cross-entropy,
Adam at a constant learning rate, random windows (no state carried), fp32, nothing else. It
reports validation loss the same way charrnn does (charrnn.evaluate.evaluate: the whole split, 8
streams, state carried), at each of --marks (training time; the clock stops while it evaluates).
Example:

    python bench/baseline.py --time-budget 10m --marks 1m,3m,5m
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from charrnn import corpus, data
from charrnn.config import parse_duration
from charrnn.evaluate import evaluate, score_tokens
from common import SHAKESPEARE


class PlainLSTM(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, layers: int, embedding: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding)
        self.rnn = nn.LSTM(embedding, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, idx, state=None, labels=None):  # labels: charrnn.evaluate's call; a plain loop has none
        out, state = self.rnn(self.embed(idx), state)
        return F.log_softmax(self.head(out), dim=-1), state


class PlainLoop:
    """Random windows in, Adam step out: the whole training loop, one call per step."""

    def __init__(self, train: np.ndarray, vocab_size: int, args: argparse.Namespace):
        torch.manual_seed(args.seed)
        self.train, self.args = train, args
        self.model = PlainLSTM(vocab_size, args.rnn_size, args.num_layers, args.embedding_size)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=args.learning_rate)
        self.rng = np.random.default_rng(args.seed)
        self.offsets = np.arange(args.seq_length + 1)

    def step(self) -> float:
        a = self.args
        starts = self.rng.integers(0, len(self.train) - a.seq_length - 1, a.batch_size)
        w = torch.from_numpy(self.train[starts[:, None] + self.offsets].astype(np.int64))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            log_probs, _ = self.model(w[:, :-1])
        loss = F.nll_loss(log_probs.float().flatten(0, 1), w[:, 1:].flatten())
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=str(SHAKESPEARE))
    p.add_argument("--time-budget", type=parse_duration, default=90.0)
    p.add_argument("--marks", default="", help="also evaluate at these training times, e.g. 1m,3m,5m")
    p.add_argument("--rnn-size", type=int, default=256)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--embedding-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--bf16", action="store_true", help="autocast the forward pass to bfloat16")
    p.add_argument("--seed", type=int, default=1337)
    return p


def main() -> None:
    args = parser().parse_args()
    marks = sorted({parse_duration(m) for m in args.marks.split(",") if m} | {args.time_budget})
    text = corpus.load(corpus.resolve(args.corpus))
    train, val, _ = data.split(text.tokens, 0.1)
    loop = PlainLoop(train, len(text.vocab), args)
    steps, trained, curve = 0, 0.0, []
    for mark in marks:
        start = time.perf_counter()
        while trained + time.perf_counter() - start < mark:
            loop.step()
            steps += 1
        trained += time.perf_counter() - start
        curve.append({"elapsed": round(trained, 1), "step": steps,
                      "val_loss": round(evaluate(loop.model, val), 4)})
        print(f"baseline: step {steps} at {trained:.0f} s: val {curve[-1]['val_loss']:.4f} nats/char", flush=True)
    cps = steps * args.batch_size * args.seq_length / trained
    one_stream, _ = score_tokens(loop.model, val)  # as generate.py --score reads the split
    print(f"baseline: {steps} steps in {trained:.0f} s, {cps:,.0f} chars/s; the split as one stream: "
          f"{one_stream:.4f} nats/char")
    print(json.dumps({"steps": steps, "seconds": round(trained, 1), "chars_per_sec": round(cps), "curve": curve,
                      "one_stream": round(one_stream, 4), "model": f"{args.num_layers}x{args.rnn_size}"}))


if __name__ == "__main__":
    main()
