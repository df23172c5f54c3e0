"""charrnn: character-level RNN/LSTM/GRU language models.

    import charrnn
    model = charrnn.load("checkpoints/tinyshakespeare")   # a run folder or a .pt file
    print(model.generate("ROMEO:", length=200, seed=1))
    run = charrnn.train("my_text.txt", time_budget="2m")  # the options of train.py

`load` and `train` import torch when first used, so that `python train.py --help` is instant.
"""
from __future__ import annotations

__all__ = ["load", "train", "CharRNNError"]

from charrnn.errors import CharRNNError


def __getattr__(name: str):
    if name in ("load", "train", "Model", "Run", "Score"):
        from charrnn import api
        return getattr(api, name)
    raise AttributeError(f"module 'charrnn' has no attribute {name!r}")
