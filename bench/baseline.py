"""The baseline charrnn is measured against: a plain, well-written PyTorch character LSTM.

What a user would write from the PyTorch docs: embedding, nn.LSTM, linear head, cross-entropy,
Adam at a constant learning rate, random windows (no state carried), fp32, nothing else. It
reports validation loss the same way charrnn does (charrnn.train.evaluate, 8 streams, state
carried), so the two are comparable. Example:

    python bench/baseline.py --time-budget 90s
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from charrnn import corpus, data, flags  # noqa: E402
from charrnn.train import evaluate  # noqa: E402


class PlainLSTM(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, layers: int, embedding: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding)
        self.rnn = nn.LSTM(embedding, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, idx, state=None):
        out, state = self.rnn(self.embed(idx), state)
        return F.log_softmax(self.head(out), dim=-1), state


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "corpora"
                                           / "tinyshakespeare.txt"))
    p.add_argument("--time-budget", type=flags.duration, default=90.0)
    p.add_argument("--rnn-size", type=int, default=256)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--embedding-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    text = corpus.load(corpus.resolve(args.corpus))
    train, val, _ = data.split(text.tokens, 0.1)
    model = PlainLSTM(len(text.vocab), args.rnn_size, args.num_layers, args.embedding_size)
    opt = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    rng = np.random.default_rng(args.seed)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.time_budget:
        starts = rng.integers(0, len(train) - args.seq_length - 1, args.batch_size)
        w = torch.from_numpy(train[starts[:, None] + np.arange(args.seq_length + 1)].astype(np.int64))
        log_probs, _ = model(w[:, :-1])
        loss = F.nll_loss(log_probs.flatten(0, 1), w[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    seconds = time.perf_counter() - start
    val_loss = evaluate(model, val, args.seq_length, torch.device("cpu"))
    cps = steps * args.batch_size * args.seq_length / seconds
    print(f"baseline: {steps} steps in {seconds:.0f} s, {cps:,.0f} chars/s, val {val_loss:.4f} nats/char")
    print(json.dumps({"steps": steps, "seconds": round(seconds, 1), "chars_per_sec": round(cps),
                      "val_loss": round(val_loss, 4)}))


if __name__ == "__main__":
    main()
