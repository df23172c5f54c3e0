"""What the benchmarks share: the benchmark corpus, and a trainer built from its parts."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from charrnn.config import TrainConfig
from charrnn.data import StreamBatches
from charrnn.model import CharRNN
from charrnn.runs import RunDir
from charrnn.trainer import Trainer
from charrnn.vocab import Vocab

REPO = Path(__file__).resolve().parent.parent
SHAKESPEARE = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"


def trainer_from_parts(config: TrainConfig, vocab_size: int = 65, n_chars: int = 1_000_000) -> Trainer:
    """A Trainer on random text of `vocab_size` characters: times a step without loading a corpus."""
    tokens = np.random.default_rng(0).integers(0, vocab_size, n_chars).astype(np.uint8)
    vocab = Vocab([chr(33 + i) for i in range(vocab_size)])
    model = CharRNN(replace(config.model, vocab_size=vocab_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.99))
    batches = StreamBatches(tokens, config.batch_size, config.seq_length)
    return Trainer(config, model, optimizer, batches, tokens[:10_000], vocab, RunDir(Path("."), writes=False))
