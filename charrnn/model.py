"""The character language model: lookup input, a fused multi-layer RNN/LSTM/GRU, LogSoftmax output,
and the same model's one-character step written out in numpy for fast sampling.

Dimensions in shape comments: B batch, T time, V vocabulary, E input width, H rnn size, L layers,
G gate blocks per layer. The hidden state is always a tuple: (h,) or, for an LSTM, (h, c), each (L, B, H).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from charrnn.config import CELLS, ModelConfig

RNN_CLASSES = dict(zip(CELLS, (nn.RNN, nn.LSTM, nn.GRU)))
# PyTorch's weight layout: each layer's weights stack G gate blocks of H rows, in this order.
GATE_ORDER = {"rnn": ("n",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
State = tuple[torch.Tensor, ...]


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every weight matrix of a model with this config (biases follow from them)."""
    v, e, h, g = config.vocab_size, config.embedding_size, config.rnn_size, len(GATE_ORDER[config.model])
    shapes = {"embed.weight": (v, e), "head.weight": (v, h)}
    if config.num_labels:
        shapes["label_embed.weight"] = (config.num_labels, e)
    for k in range(config.num_layers):
        shapes[f"rnn.weight_ih_l{k}"] = (g * h, e if k == 0 else h)
        shapes[f"rnn.weight_hh_l{k}"] = (g * h, h)
    return shapes


class CharRNN(nn.Module):
    """forward(indices (B, T), state, labels (B,)) -> (log-probabilities (B, T, V), state).

    A model trained with labels adds its label's learnt vector to every step's input: the
    tutorial's category input, as a lookup. The labels are needed then, and refused otherwise.

    With `weight_drop` (DropConnect on the recurrent weights, as AWD-LSTM: Merity et al. 2017), a
    training forward drops entries of each layer's hidden-to-hidden weights: one mask per call,
    the same at every time step. Evaluation uses the plain weights.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size < 1:
            raise ValueError("a model needs a vocabulary of at least one character")
        self.config = config
        # A one-hot vector times a weight matrix picks one row of it: the lookup computes exactly
        # that product without building V-wide vectors, so a large vocabulary costs no more.
        self.embed = nn.Embedding(config.vocab_size, config.embedding_size)
        self.label_embed = nn.Embedding(config.num_labels, config.embedding_size) if config.num_labels else None
        self.rnn = RNN_CLASSES[config.model](
            config.embedding_size, config.rnn_size, config.num_layers, batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.rnn_size, config.vocab_size)
        self.log_softmax = nn.LogSoftmax(dim=-1)

    def forward(self, idx: torch.Tensor, state: State | None = None,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        x = self.embed(idx)                      # (B, T, E)
        if (labels is None) != (self.label_embed is None):
            raise ValueError("a model trained with labels needs one per row, and one without takes none")
        if labels is not None:
            x = x + self.label_embed(labels)[:, None]  # (B, 1, E): the same label at every step
        hx = state if state is None or self.config.model == "lstm" else state[0]  # nn.RNN/GRU take h alone
        out, hx = self.recur(x, hx)              # (B, T, H)
        logits = self.head(self.drop(out))       # (B, T, V)
        state = hx if self.config.model == "lstm" else (hx,)
        return self.log_softmax(logits.float()), state  # fp32 log-probs even under autocast

    def recur(self, x: torch.Tensor, hx: State | torch.Tensor | None) -> tuple[torch.Tensor, State | torch.Tensor]:
        """The fused multi-layer call; in training with weight_drop, on DropConnect-masked W_hh."""
        if not (self.training and self.config.weight_drop):
            return self.rnn(x, hx)
        # One mask per weight per call, drawn before the call: a mask per time step would need a
        # step-by-step loop instead of the fused kernel. The masked tensors stand in for this call
        # only, so the parameters keep their names, and checkpoints their keys. The mask is
        # dropout's (kept entries scaled by 1/(1-p)), drawn with rand_like: on a CPU, F.dropout's
        # bernoulli_ costs 1.5x as much (2x256: 4.1 against 2.5 ms a layer a step, one thread).
        p = self.config.weight_drop
        dropped = {name: weight * ((torch.rand_like(weight) >= p) / (1 - p))
                   for name, weight in self.rnn.named_parameters() if name.startswith("weight_hh")}
        return functional_call(self.rnn, dropped, (x, hx))

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
    milliseconds of set-up, a torch operation several microseconds, a numpy one about one. A step
    must read each big weight matrix once; beyond that it makes as few numpy calls as it can (about
    nine a layer), each writing into buffers made once per sampling run (`stream`):

    - The first layer's input product is precomputed for every character (the lookup table times
      its input weights, plus biases), so it starts with a row lookup.
    - Every layer's h lies in one buffer, each followed by a constant 1, so [x, 1] @ [W_ih; b]
      takes a bias in the product. A layer's hidden-to-hidden product for the next step is made
      as soon as its new h is: for the last layer, whose new h also feeds the head, that is one
      product, [h, 1] @ [W_hh | W_head], for the next step's share and the logits. Products stay
      at the floor's size otherwise: one over a layer's stacked [x, h] is no faster, and past
      that size OpenBLAS starts threads, which on a busy machine cost 3x.
    - sigmoid(x) = (1 + tanh(x / 2)) / 2: with the sigmoid gates' weights and biases halved, one
      tanh call serves every gate.
    - PyTorch stacks the gate blocks in `GATE_ORDER`; here the columns are reordered (LSTM: i, f,
      o, g) so that gates sharing an operation are adjacent, and the LSTM's c sits right after g:
      one product gives [sigmoid(i) g, sigmoid(f) c] at once.
    - An LSTM or GRU stream of many rows (WIDE_ROWS) lays its buffers out transposed, features by
      rows, and makes W x rather than x W: then each gate's block is a contiguous (H, N) array,
      where numpy's elementwise operations on a column slice of an (N, 5H) buffer cost 2-3x as much.
      The weights it reads are transposed copies (`turned`), made once.
    - The LSTM keeps 2h instead of h (that saves a halving a layer) and every weight that reads it
      is halved to match. Scaling by powers of two is exact: nothing rounds differently.

    - A label's share of the first layer's input product is precomputed too (`label_table`), one
      row per label; a stream adds its rows' label rows after the table's, one call a step.

    `step(idx, state)` is the plain form: states are tuples of float32 arrays laid out like the
    model's, (h,) or, for an LSTM, (h, c), each (L, N, H), and the state passed in is left alone.
    `step.stream(state)` holds a state in place and moves it on one character a call: the fast
    form, for sampling loops. A model with labels takes each row's label, `labels` (N,).
    """

    WIDE_ROWS = 4  # from this many rows on, an LSTM's or GRU's stream is laid out transposed

    def __init__(self, model: CharRNN):
        cfg, rnn = model.config, model.rnn
        self.cell, self.num_layers, self.hidden = cfg.model, cfg.num_layers, cfg.rnn_size
        n, gru = cfg.rnn_size, cfg.model == "gru"
        h_scale = 0.5 if self.cell == "lstm" else 1.0  # the LSTM keeps 2h: what reads h is halved
        ours = {"rnn": "n", "lstm": "ifog", "gru": "rzn"}[self.cell]  # the gate blocks' column order here
        order = [GATE_ORDER[self.cell].index(gate) for gate in ours]
        gate_scale = np.concatenate([np.full(n, 1.0 if gate in "gn" else 0.5, dtype=np.float32) for gate in ours])

        def prepare(weight: torch.Tensor, bias: torch.Tensor | None = None, scale: float = 1.0) -> np.ndarray:
            """(G*H, K) weights in PyTorch's gate order [and a bias] -> (K [+ 1], G*H) in ours, scaled."""
            weight = weight.float() * scale
            weight = (weight if bias is None else torch.cat([weight, bias.float()[:, None]], 1)).cpu().numpy()
            weight = np.concatenate([weight[j * n:(j + 1) * n] for j in order])
            return np.ascontiguousarray(weight.T * gate_scale)

        self.layers = []  # (input weights, or the first layer's table; hidden-to-hidden weights)
        with torch.no_grad():
            for k in range(cfg.num_layers):
                w_ih, w_hh = getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")
                b_ih, b_hh = getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}")
                # GRU keeps b_hh apart, with W_hh: it sits inside r * (W_hn h + b_hn)
                b_in = b_ih if gru else b_ih + b_hh
                if k == 0:  # (V, G*H), the table: a one-hot input's product is a row of it
                    w_in = prepare((model.embed.weight @ w_ih.T + b_in).T)
                    self.label_table = (None if model.label_embed is None  # (labels, G*H), no bias
                                        else prepare((model.label_embed.weight @ w_ih.T).T))
                else:       # (H + 1, G*H): the bias as a last row, for the 1 after x
                    w_in = prepare(w_ih, b_in, h_scale)
                self.layers.append([w_in, prepare(w_hh, b_hh if gru else None, h_scale)])  # (H [+ 1], G*H)
            # the last layer's hidden-to-hidden weights beside the head's, for [h, 1]: (H + 1, G*H + V)
            w_hh = self.layers[-1].pop()
            if not gru:
                w_hh = np.concatenate([w_hh, np.zeros_like(w_hh[:1])])
            head = torch.cat([model.head.weight.float() * h_scale, model.head.bias.float()[:, None]], 1)
            self.last = np.ascontiguousarray(np.concatenate([w_hh, head.cpu().numpy().T], 1))
            self.layers[-1].append(None)

    @functools.cached_property
    def turned(self) -> tuple[list, np.ndarray]:
        """The layers' weights and the last product's, transposed into contiguous copies, for wide
        streams: BLAS multiplies by a copy faster than by a transposed view (15-50% at 8-64 rows)."""
        def turn(w: np.ndarray | None) -> np.ndarray | None:
            return None if w is None else np.ascontiguousarray(w.T)

        layers = [[None if k == 0 else turn(w_in), turn(w_hh)] for k, (w_in, w_hh) in enumerate(self.layers)]
        return layers, turn(self.last)

    def __call__(self, idx: np.ndarray, state: NumpyState, labels: np.ndarray | None = None
                 ) -> tuple[np.ndarray, NumpyState]:
        """idx (N,) and a state -> logits (N, V) and the next state."""
        stream = self.stream(state, labels)
        return stream(idx).copy(), stream.state()

    def stream(self, state: NumpyState, labels: np.ndarray | None = None) -> NumpyStep.Stream:
        """The state's N rows held in place: each call takes idx (N,) and returns the logits (N, V)."""
        return NumpyStep.Stream(self, state, labels)

    class Stream:
        """One sampling run's buffers: its state, in place, and every intermediate.

        A call returns a view of logits that the next call overwrites. Each run makes its own
        Stream, so that runs on one NumpyStep (in threads, say) never share buffers.
        """

        def __init__(self, step: NumpyStep, state: NumpyState, labels: np.ndarray | None = None):
            cell, layers, n = step.cell, step.num_layers, step.hidden
            rows, f32 = state[0].shape[1], np.float32
            if (labels is None) != (step.label_table is None):
                raise ValueError("a model trained with labels needs one per row, and one without takes none")
            g, w = len(GATE_ORDER[cell]) * n, n + 1
            wide = cell != "rnn" and rows >= step.WIDE_ROWS  # the rnn has no gate blocks to make contiguous

            def buffer(size: int) -> np.ndarray:
                """`size` features a row: (size, N) if wide, else (N, size)."""
                return np.empty((size, rows) if wide else (rows, size), f32)

            def part(a: np.ndarray, start: int, stop: int) -> np.ndarray:
                """Features start:stop of a buffer."""
                return a[start:stop] if wide else a[:, start:stop]

            def by_rows(a: np.ndarray) -> np.ndarray:
                """A buffer seen as (N, size), or a (1, size) operand as the buffer's layout needs it."""
                return a.T if wide else a

            def product(a: np.ndarray, weight: np.ndarray | None) -> tuple:
                """The operands of a @ weight, a a buffer, in the order that writes a buffer (wide:
                the weight is already turned)."""
                return (None, None) if weight is None else (weight, a) if wide else (a, weight)

            weights, last = step.turned if wide else (step.layers, step.last)
            # each row's label share of the first layer's input product: (N, G*H), or (G*H, N) if wide
            self.label_rows = None if labels is None else np.ascontiguousarray(
                by_rows(step.label_table[np.asarray(labels)]))
            self.cell, self.table, self.one = cell, step.layers[0][0], rows == 1
            self.lookup = np.empty((rows, g), f32)  # the table's rows for a step
            self.looked = by_rows(self.lookup)
            self.hs = buffer(layers * w)            # [h_0, 1, h_1, 1, ...]; 2h for an LSTM
            by_rows(self.hs)[:, n::w] = 1.0
            h = [part(self.hs, k * w, k * w + n) for k in range(layers)]
            h1 = [part(self.hs, k * w, (k + 1) * w) for k in range(layers)]  # [h, 1]
            out = buffer(step.last.shape[1])        # the last layer's next share, logits
            self.h = [by_rows(x) for x in h]        # (N, H) views, as load and state read them
            self.last, self.logits = (*product(h1[-1], last), out), by_rows(part(out, g, out.size))
            # array operands: a Python float costs a conversion on every call
            self.ones, self.halves = by_rows(np.ones((1, 3 * n), f32)), by_rows(np.full((1, 2 * n), 0.5, f32))
            tmp = buffer(n)
            self.layers, self.c, self.shares = [], [], []
            for k, (w_in, w_hh) in enumerate(weights):
                x = None if k == 0 else h1[k - 1]
                gh = part(out, 0, g) if w_hh is None else buffer(g)  # the hidden state's share
                hh = h1[k] if cell == "gru" or w_hh is None else h[k]  # [h, 1] where a bias row follows
                hidden = product(hh, w_hh)
                self.shares.append((*hidden, gh))
                inputs = (None, None) if x is None else product(x, w_in)
                if cell == "lstm":
                    pre, prod = buffer(5 * n), buffer(2 * n)  # i, f, o, g, then c
                    self.c.append(by_rows(part(pre, 4 * n, 5 * n)))
                    self.layers.append((*inputs, part(pre, 0, g), gh, h[k],
                                        *hidden, part(pre, 0, 2 * n), part(pre, 0, 3 * n),
                                        part(pre, 3 * n, 5 * n), prod, part(prod, 0, n), part(prod, n, 2 * n),
                                        part(pre, 4 * n, 5 * n), tmp, part(pre, 2 * n, 3 * n)))
                elif cell == "gru":
                    pre = buffer(g)
                    self.layers.append((*inputs, pre, gh, h[k], *hidden, part(pre, 0, 2 * n),
                                        part(gh, 0, 2 * n), part(pre, 0, n), part(pre, n, 2 * n),
                                        part(pre, 2 * n, g), part(gh, 2 * n, g), tmp))
                else:
                    self.layers.append((*inputs, buffer(g), gh, h[k], *hidden))
            self.load(state)

        def load(self, state: NumpyState) -> None:
            """Set the state: (h,) or (h, c), each (L, N, H)."""
            for k, h in enumerate(self.h):
                np.multiply(state[0][k], 2.0 if self.cell == "lstm" else 1.0, out=h)
            for k, c in enumerate(self.c):
                c[...] = state[1][k]
            for a, b, share in self.shares[:-1]:  # each layer's share of the next step
                np.matmul(a, b, out=share)
            np.matmul(*self.last[:2], out=self.last[2])

        def state(self) -> NumpyState:
            """A copy of the state: (h,) or (h, c), each (L, N, H)."""
            h = np.stack(self.h)
            if self.cell != "lstm":
                return (h,)
            h *= 0.5
            return h, np.stack(self.c)

        def first_share(self, idx: np.ndarray) -> np.ndarray:
            """The first layer's input share of the step: the table's row of each character."""
            if self.one:
                return self.table[idx[0]]
            np.take(self.table, idx, 0, out=self.lookup, mode="clip")  # clip, not raise: that copies via a buffer
            return self.looked

        def __call__(self, idx: np.ndarray) -> np.ndarray:
            """idx (N,) -> logits (N, V); the state moves on by one character."""
            matmul, add, multiply, tanh = np.matmul, np.add, np.multiply, np.tanh
            labels = self.label_rows
            # each layer: pre-activations, the input's share (a table row, or a product) plus the
            # hidden state's (made by the last call); the new state; the next call's share
            if self.cell == "lstm":
                for x_a, x_b, pre, gh, h, hh_a, hh_b, if_, ifo, gc, prod, p0, p1, c, tmp, o in self.layers:
                    if x_a is None:
                        add(gh, self.first_share(idx), out=pre)
                        if labels is not None:
                            add(pre, labels, out=pre)
                    else:
                        add(matmul(x_a, x_b, out=pre), gh, out=pre)
                    tanh(pre, out=pre)
                    add(ifo, self.ones, out=ifo)          # 2 sigmoid for i, f, o
                    multiply(if_, self.halves, out=if_)   # sigmoid for i, f
                    multiply(if_, gc, out=prod)           # [sigmoid(i) g, sigmoid(f) c]
                    add(p0, p1, out=c)                    # c' = sigmoid(i) g + sigmoid(f) c
                    tanh(c, out=tmp)
                    multiply(o, tmp, out=h)               # 2h' = 2 sigmoid(o) tanh(c')
                    if hh_b is not None:
                        matmul(hh_a, hh_b, out=gh)
            elif self.cell == "gru":
                for x_a, x_b, pre, gh, h, hh_a, hh_b, rz, gh_rz, r, z, xn, hn, tmp in self.layers:
                    if x_a is None:
                        np.copyto(pre, self.first_share(idx))
                        if labels is not None:
                            add(pre, labels, out=pre)
                    else:
                        matmul(x_a, x_b, out=pre)
                    add(rz, gh_rz, out=rz)
                    tanh(rz, out=rz)
                    add(rz, 1.0, out=rz)
                    multiply(rz, 0.5, out=rz)             # sigmoid for r, z
                    multiply(r, hn, out=hn)               # r (W_hn h + b_hn)
                    add(xn, hn, out=xn)
                    tanh(xn, out=xn)                      # n
                    np.subtract(h, xn, out=tmp)
                    multiply(z, tmp, out=tmp)
                    add(xn, tmp, out=h)                   # h' = (1 - z) n + z h
                    if hh_b is not None:
                        matmul(hh_a, hh_b, out=gh)
            else:
                for x_a, x_b, pre, gh, h, hh_a, hh_b in self.layers:
                    if x_a is None:
                        add(gh, self.first_share(idx), out=pre)
                        if labels is not None:
                            add(pre, labels, out=pre)
                    else:
                        add(matmul(x_a, x_b, out=pre), gh, out=pre)
                    tanh(pre, out=h)
                    if hh_b is not None:
                        matmul(hh_a, hh_b, out=gh)
            matmul(*self.last[:2], out=self.last[2])      # the logits, and the next call's share
            return self.logits


@torch.no_grad()
def grow_vocab(model: CharRNN, old_symbols: list[str], new_symbols: list[str], config: ModelConfig,
               old_labels: list[str] = (), new_labels: list[str] = ()) -> CharRNN:
    """The same network over a larger vocabulary (`config` says which, and the dropouts), for
    fine-tuning on text with new characters, or on a list (the item marker is one more symbol).

    Every old symbol keeps its input and output rows. A new one gets a fresh input row and an
    output row of zeros with the lowest bias of any old one: it starts less likely than a typical
    known character, and its gradient is not zero, so it is learnt. Labels the base model knew
    keep their rows; new labels start fresh.
    """
    grown = CharRNN(config)
    old, new = model.state_dict(), grown.state_dict()
    rows = [new_symbols.index(c) for c in old_symbols]
    new["head.weight"].zero_()
    new["head.bias"].fill_(old["head.bias"].min())
    for name in ("embed.weight", "head.weight", "head.bias"):
        new[name][rows] = old[name]
    new.update({k: v for k, v in old.items() if k.startswith("rnn.")})
    for i, label in enumerate(old_labels):
        if label in new_labels:
            new["label_embed.weight"][new_labels.index(label)] = old["label_embed.weight"][i]
    grown.load_state_dict(new)
    return grown
