"""The character language model: lookup input, a fused multi-layer RNN/LSTM/GRU, LogSoftmax output.

Dimensions in shape comments: B batch, T time, V vocabulary, E input width, H rnn size, L layers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # gate blocks per layer, in PyTorch's weight layout
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # h (L, B, H), or (h, c) for an LSTM


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    model: str = "lstm"
    rnn_size: int = 256
    num_layers: int = 2
    embedding_size: int = 64
    dropout: float = 0.0


class CharRNN(nn.Module):
    """forward(indices (B, T), state) -> (log-probabilities (B, T, V), state)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # A one-hot vector times a weight matrix picks one row of it: the lookup computes exactly
        # that product without building V-wide vectors, so a large vocabulary costs no more.
        self.embed = nn.Embedding(config.vocab_size, config.embedding_size)
        self.rnn = CELLS[config.model](
            config.embedding_size, config.rnn_size, config.num_layers, batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.rnn_size, config.vocab_size)
        self.log_softmax = nn.LogSoftmax(dim=-1)

    def forward(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        x = self.embed(idx)                      # (B, T, E)
        out, state = self.rnn(x, state)          # (B, T, H)
        logits = self.head(self.drop(out))       # (B, T, V)
        return self.log_softmax(logits.float()), state  # fp32 log-probs even under autocast

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_state(state: State | None) -> State | None:
    """Cut the graph at a window boundary: the state's values carry on, its gradients stop."""
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def state_to_list(state: State | None) -> list[torch.Tensor]:
    """Plain list of tensors for a checkpoint."""
    if state is None:
        return []
    return [s.detach().cpu() for s in state] if isinstance(state, tuple) else [state.detach().cpu()]


def state_from_list(tensors: list[torch.Tensor], device: torch.device) -> State | None:
    if not tensors:
        return None
    tensors = [t.to(device) for t in tensors]
    return tuple(tensors) if len(tensors) == 2 else tensors[0]
