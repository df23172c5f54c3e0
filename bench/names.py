"""Where a model's loss on tinyshakespeare's validation split lies: the whole split, the speakers'
name lines ("ROMEO:"), those of speakers the training text never names, and the rest.

Why: a plain LSTM cannot repeat a name it read a few speeches back, so name lines cost several
times the rest; the copy attention (--copy-memory) is there for them. The split is read as one
stream, state carried, as `generate.py --score` reads it, so the whole figure is that command's.
Example:

    python bench/names.py checkpoints/tinyshakespeare/best.pt other-run/best.pt
"""
from __future__ import annotations

import argparse
import re

import numpy as np
import torch

from charrnn import checkpoint, corpus, data
from charrnn.evaluate import EVAL_CHUNK
from common import SHAKESPEARE, cpu_name

NAME_LINE = re.compile(r"(?m)^([A-Z][A-Za-z' ]*):\n")


def per_char_losses(path: str, text: str) -> np.ndarray:
    """The loss of every character of `text` after the first, in nats, read as one stream."""
    model, vocab = checkpoint.build_model(checkpoint.load(checkpoint.resolve(path, prefer="best.pt")))
    tokens = torch.tensor(vocab.encode(text))
    losses, state = [], None
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, EVAL_CHUNK):
            x = tokens[start:start + EVAL_CHUNK + 1]
            log_probs, state = model(x[None, :-1], state)
            losses.append(-log_probs[0].gather(1, x[1:, None])[:, 0])
    return torch.cat(losses).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="run folders or .pt files of models of tinyshakespeare")
    args = p.parse_args()
    torch.set_num_threads(1)
    text = corpus.load(corpus.resolve(str(SHAKESPEARE)))
    train, val, _ = data.split(text.tokens, 0.1)
    train_text, val_text = text.vocab.decode(train), text.vocab.decode(val)
    names, unseen = np.zeros(len(val_text), bool), np.zeros(len(val_text), bool)
    for match in NAME_LINE.finditer(val_text):
        names[match.start():match.end()] = True
        unseen[match.start():match.end()] = f"\n{match.group(1)}:\n" not in train_text
    names, unseen = names[1:], unseen[1:]  # the first character is read, not scored
    print(f"{cpu_name()}; {len(val_text) - 1:,} characters scored, {names.sum():,} in name lines "
          f"({unseen.sum():,} of unseen speakers)")
    print("| checkpoint | whole | name lines | unseen speakers | the rest |\n| --- | --- | --- | --- | --- |")
    for path in args.checkpoints:
        loss = per_char_losses(path, val_text)
        print(f"| {path} | {loss.mean():.4f} | {loss[names].mean():.3f} | {loss[unseen].mean():.3f} | "
              f"{loss[~names].mean():.4f} |")


if __name__ == "__main__":
    main()
