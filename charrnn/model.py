"""The character language model: lookup input, a fused multi-layer RNN/LSTM/GRU, LogSoftmax output,
and the same model's one-character step written out in numpy for fast sampling.

Dimensions in shape comments: B batch, T time, V vocabulary, E input width, H rnn size, L layers,
G gate blocks per layer. The hidden state is always a tuple: (h,) or, for an LSTM, (h, c), each (L, B, H).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from charrnn.config import CELLS, ModelConfig

RNN_CLASSES = dict(zip(CELLS, (nn.RNN, nn.LSTM, nn.GRU)))
# PyTorch's weight layout: each layer's weights stack G gate blocks of H rows, in this order.
GATE_ORDER = {"rnn": ("n",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
State = tuple[torch.Tensor, ...]


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every weight matrix of a model with this config (biases follow from them)."""
    v, e, h, g = config.vocab_size, config.embedding_size, config.rnn_size, len(GATE_ORDER[config.model])
    shapes = {"embed.weight": (v, e), "head.weight": (v, h)}
    for k in range(config.num_layers):
        shapes[f"rnn.weight_ih_l{k}"] = (g * h, e if k == 0 else h)
        shapes[f"rnn.weight_hh_l{k}"] = (g * h, h)
    return shapes


class CharRNN(nn.Module):
    """forward(indices (B, T), state) -> (log-probabilities (B, T, V), state)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size < 1:
            raise ValueError("a model needs a vocabulary of at least one character")
        self.config = config
        # A one-hot vector times a weight matrix picks one row of it: the lookup computes exactly
        # that product without building V-wide vectors, so a large vocabulary costs no more.
        self.embed = nn.Embedding(config.vocab_size, config.embedding_size)
        self.rnn = RNN_CLASSES[config.model](
            config.embedding_size, config.rnn_size, config.num_layers, batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.rnn_size, config.vocab_size)
        self.log_softmax = nn.LogSoftmax(dim=-1)

    def forward(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        x = self.embed(idx)                      # (B, T, E)
        hx = state if state is None or self.config.model == "lstm" else state[0]  # nn.RNN/GRU take h alone
        out, hx = self.rnn(x, hx)                # (B, T, H)
        logits = self.head(self.drop(out))       # (B, T, V)
        state = hx if self.config.model == "lstm" else (hx,)
        return self.log_softmax(logits.float()), state  # fp32 log-probs even under autocast

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_state(state: State | None) -> State | None:
    """Cut the graph at a window boundary: the state's values carry on, its gradients stop."""
    return None if state is None else tuple(s.detach() for s in state)


def state_to_list(state: State | None) -> list[torch.Tensor]:
    """Plain list of CPU tensors for a checkpoint."""
    return [] if state is None else [s.detach().cpu() for s in state]


def state_from_list(tensors: list[torch.Tensor], device: torch.device | str = "cpu") -> State | None:
    return tuple(t.to(device) for t in tensors) or None


NumpyState = tuple[np.ndarray, ...]


class NumpyStep:
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
        scale = np.concatenate([np.full(hidden, 1.0 if gate in "gn" else 0.5, dtype=np.float32)
                                for gate in GATE_ORDER[self.cell]])
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

    def __call__(self, idx: np.ndarray, state: NumpyState) -> tuple[np.ndarray, NumpyState]:
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


@torch.no_grad()
def grow_vocab(model: CharRNN, old_chars: list[str], new_chars: list[str], config: ModelConfig) -> CharRNN:
    """The same network over a larger vocabulary (`config` says which, and the dropout), for
    fine-tuning on text with new characters.

    Every old character keeps its input and output rows. A new character gets a fresh input row
    and an output row of zeros with the lowest bias any old character has: it starts as unlikely as
    the rarest character the model knows, and its gradient is not zero, so it is learnt.
    """
    grown = CharRNN(config)
    old, new = model.state_dict(), grown.state_dict()
    rows = [new_chars.index(c) for c in old_chars]
    new["head.weight"].zero_()
    new["head.bias"].fill_(old["head.bias"].min())
    for name in ("embed.weight", "head.weight", "head.bias"):
        new[name][rows] = old[name]
    new.update({k: v for k, v in old.items() if k.startswith("rnn.")})
    grown.load_state_dict(new)
    return grown
