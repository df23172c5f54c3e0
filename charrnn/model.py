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
    milliseconds of set-up, a torch operation several microseconds, a numpy one about one. So the
    step is laid out for as few numpy calls as possible, each writing into memory prepared once
    (`stream`): about 9 calls a layer and no temporaries beyond the first layer's row lookup. For
    a batch the three big products dominate, and those run at numpy's (BLAS's) own speed.

    - The first layer's input product is precomputed for every character (the lookup table times
      its input weights, plus biases), so it starts with a row lookup. A deeper layer does one
      product over its stacked input and state, [x, h] @ [W_ih; W_hh]: every layer's h lies side
      by side in one buffer, so [x, h] is already a slice of it and h is overwritten in place.
    - sigmoid(x) = (1 + tanh(x / 2)) / 2: with the sigmoid gates' weights and biases halved, one
      tanh call serves every gate. PyTorch stacks the gates in `GATE_ORDER`; the columns here are
      reordered (LSTM: o, i, f, g) so that the gates sharing an operation are adjacent, and the
      LSTM's c sits right after g: one product gives [sigmoid(i) g, sigmoid(f) c] at once.
    - The LSTM keeps 2h instead of h (it saves a halving a layer), and every weight that reads it
      is halved to match. Scaling by powers of two is exact, so nothing rounds differently.

    `step(idx, state)` is the plain form: states are tuples of float32 arrays laid out like the
    model's, (h,) or, for an LSTM, (h, c), each (L, N, H), and the state passed in is left alone.
    `step.stream(state)` keeps a state in place and advances it one character per call: the fast
    form, for sampling loops.
    """

    # the column order of the gate blocks here (see above); PyTorch's is GATE_ORDER
    ORDER = {"rnn": "n", "lstm": "oifg", "gru": "rzn"}

    def __init__(self, model: CharRNN):
        cfg, rnn = model.config, model.rnn
        self.cell, self.num_layers, n = cfg.model, cfg.num_layers, cfg.rnn_size
        self.hidden = n
        lstm, gru = self.cell == "lstm", self.cell == "gru"
        h_scale = 0.5 if lstm else 1.0  # the LSTM keeps 2h: whatever reads h is halved
        gates = GATE_ORDER[self.cell]
        order = [gates.index(gate) for gate in self.ORDER[self.cell]]
        scale = np.concatenate([np.full(n, 1.0 if gate in "gn" else 0.5, dtype=np.float32)
                                for gate in self.ORDER[self.cell]])

        def prepare(t: torch.Tensor, factor: float = 1.0) -> np.ndarray:
            """(G*H, ...) in PyTorch's gate order -> (..., G*H) in ours, transposed and scaled."""
            t = t.detach().float().cpu()
            t = torch.cat([t[j * n:(j + 1) * n] for j in order]).numpy()
            return np.ascontiguousarray(t.T * (scale * np.float32(factor)))

        self.layers = []
        with torch.no_grad():
            for k in range(cfg.num_layers):
                w_ih, w_hh = getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")
                b_ih, b_hh = getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}")
                # GRU keeps b_hh apart: it sits inside r * (W_hn h + b_hn)
                b_in = b_ih if gru else b_ih + b_hh
                if k == 0:  # (V, G*H): the lookup table times the input weights, plus b_in
                    w_in = prepare((model.embed.weight @ w_ih.T + b_in).T)
                else:
                    w_in = prepare(w_ih, h_scale)
                w_hh_t = prepare(w_hh, h_scale)
                if not gru and k > 0:  # one product over [x, h]
                    w_in, w_hh_t = np.ascontiguousarray(np.concatenate([w_in, w_hh_t])), None
                self.layers.append((w_in, None if k == 0 else prepare(b_in[:, None])[0],
                                    w_hh_t, prepare(b_hh[:, None])[0] if gru else None))
            self.w_out = np.ascontiguousarray(model.head.weight.detach().float().cpu().numpy().T * h_scale)
            self.b_out = model.head.bias.detach().float().cpu().numpy().copy()

    def __call__(self, idx: np.ndarray, state: NumpyState) -> tuple[np.ndarray, NumpyState]:
        """idx (N,) and a state -> logits (N, V) and the next state."""
        stream = self.stream(state)
        return stream(idx).copy(), stream.state()

    def stream(self, state: NumpyState) -> NumpyStep.Stream:
        """A state (N rows) held in place: each call takes idx (N,) and returns the logits (N, V)."""
        return NumpyStep.Stream(self, state)

    class Stream:
        """The buffers of one sampling run: the state, in place, and every intermediate.

        Each call overwrites the logits it returned before. Not shared between threads: each
        sampling run makes its own.
        """

        def __init__(self, step: NumpyStep, state: NumpyState):
            self.step = step
            cell, n, layers = step.cell, step.hidden, step.num_layers
            rows = state[0].shape[1]
            f32 = np.float32
            self.h = np.empty((rows, layers * n), f32)     # [h_0, h_1, ...]: 2h for an LSTM
            self.logits = np.empty((rows, len(step.b_out)), f32)
            hs = [self.h[:, k * n:(k + 1) * n] for k in range(layers)]
            self.h_views = hs
            ops = []
            if cell == "lstm":
                self.gates = [np.empty((rows, 5 * n), f32) for _ in range(layers)]  # o, i, f, g, c
                self.c_views = [g[:, 4 * n:] for g in self.gates]
                tmp, prod = np.empty((rows, n), f32), np.empty((rows, 2 * n), f32)
                for k, (w_in, b_in, w_hh, _) in enumerate(step.layers):
                    g = self.gates[k]
                    inp = hs[0] if k == 0 else self.h[:, (k - 1) * n:(k + 1) * n]
                    ops.append((inp, w_in if k else w_hh, b_in, g[:, :4 * n], g[:, :3 * n], g[:, n:3 * n],
                                g[:, 3 * n:], prod, prod[:, :n], prod[:, n:], g[:, 4 * n:], tmp, g[:, :n], hs[k]))
            elif cell == "gru":
                gx = [np.empty((rows, 3 * n), f32) for _ in step.layers]
                gh = [np.empty((rows, 3 * n), f32) for _ in step.layers]
                tmp = np.empty((rows, n), f32)
                for k, (w_in, b_in, w_hh, b_hh) in enumerate(step.layers):
                    x, h = gx[k], gh[k]
                    ops.append((None if k == 0 else hs[k - 1], w_in, b_in, x, hs[k], w_hh, b_hh, h,
                                x[:, :2 * n], h[:, :2 * n], x[:, 2 * n:], h[:, 2 * n:], x[:, :n],
                                x[:, n:2 * n], tmp))
            else:
                pre = [np.empty((rows, n), f32) for _ in step.layers]
                for k, (w_in, b_in, w_hh, _) in enumerate(step.layers):
                    inp = hs[0] if k == 0 else self.h[:, (k - 1) * n:(k + 1) * n]
                    ops.append((inp, w_in if k else w_hh, b_in, pre[k], hs[k]))
            self.ops = ops
            self.table = step.layers[0][0]
            self.head = (hs[-1], step.w_out, step.b_out, self.logits)
            self.load(state)

        def load(self, state: NumpyState) -> None:
            """Set the state (L, N, H) arrays, (h,) or (h, c)."""
            lstm = self.step.cell == "lstm"
            for k, view in enumerate(self.h_views):
                np.multiply(state[0][k], 2.0 if lstm else 1.0, out=view)
            if lstm:
                for k, view in enumerate(self.c_views):
                    view[...] = state[1][k]

        def state(self) -> NumpyState:
            """A copy of the state: (h,) or (h, c), each (L, N, H)."""
            h = np.stack(self.h_views)
            if self.step.cell != "lstm":
                return (h,)
            h *= 0.5
            return h, np.stack(self.c_views)

        def __call__(self, idx: np.ndarray) -> np.ndarray:
            """idx (N,) -> logits (N, V); the state moves on by one character."""
            matmul, add, multiply, tanh = np.matmul, np.add, np.multiply, np.tanh
            cell = self.step.cell
            if cell == "lstm":
                x = self.table[idx]
                for inp, w, b, pre, sig, if_, gc, prod, p0, p1, c, tmp, o, h in self.ops:
                    matmul(inp, w, out=pre)
                    add(pre, b if x is None else x, out=pre)
                    x = None
                    tanh(pre, out=pre)
                    add(sig, 1.0, out=sig)           # 2 sigmoid for o, i, f
                    multiply(if_, 0.5, out=if_)      # sigmoid for i, f
                    multiply(if_, gc, out=prod)      # [sigmoid(i) g, sigmoid(f) c]
                    add(p0, p1, out=c)               # c' = sigmoid(i) g + sigmoid(f) c
                    tanh(c, out=tmp)
                    multiply(o, tmp, out=h)          # 2h' = 2 sigmoid(o) tanh(c')
            elif cell == "gru":
                for k, (inp, w_in, b_in, gx, h, w_hh, b_hh, gh, rz, ghrz, xn, hn, r, z, tmp) in enumerate(self.ops):
                    if inp is None:
                        gx[...] = self.table[idx]
                    else:
                        matmul(inp, w_in, out=gx)
                        add(gx, b_in, out=gx)
                    matmul(h, w_hh, out=gh)
                    add(gh, b_hh, out=gh)
                    add(rz, ghrz, out=rz)
                    tanh(rz, out=rz)
                    add(rz, 1.0, out=rz)
                    multiply(rz, 0.5, out=rz)       # sigmoid for r, z
                    multiply(r, hn, out=hn)
                    add(xn, hn, out=xn)
                    tanh(xn, out=xn)                 # n
                    np.subtract(h, xn, out=tmp)
                    multiply(z, tmp, out=tmp)
                    add(xn, tmp, out=h)              # h' = (1 - z) n + z h
            else:
                x = self.table[idx]
                for inp, w, b, pre, h in self.ops:
                    matmul(inp, w, out=pre)
                    add(pre, b if x is None else x, out=pre)
                    x = None
                    tanh(pre, out=h)
            h, w_out, b_out, logits = self.head
            matmul(h, w_out, out=logits)
            add(logits, b_out, out=logits)
            return logits


@torch.no_grad()
def grow_vocab(model: CharRNN, old_chars: list[str], new_chars: list[str], config: ModelConfig) -> CharRNN:
    """The same network over a larger vocabulary (`config` says which, and the dropout), for
    fine-tuning on text with new characters.

    Every old character keeps its input and output rows. A new character gets a fresh input row
    and an output row of zeros with the lowest bias of any old character: it starts less likely
    than a typical known character, and its gradient is not zero, so it is learnt.
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
