"""The character language model: lookup input, a fused multi-layer RNN/LSTM/GRU, LogSoftmax output,
and the same model's one-character step written out in numpy for fast sampling.

Dimensions in shape comments: B batch, T time, V vocabulary, E input width, H rnn size, L layers,
G gate blocks per layer, M copy memory, D copy key width. The state is always a tuple: (h,) or, for an
LSTM, (h, c), each (L, B, H); with the copy attention, followed by its memory, keys (M, B, D) and
the characters read at those steps (M, B, 1), -1 where the text has not reached yet.
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
COPY_KEY = 64  # D: the copy attention's query and key width
# K: the copy attention also scores each step it may read by how many characters up to it equal
# those up to the step reading, up to this many (`match_lengths`): a learnt score per length
COPY_MATCH = 8
# In training, this share of the rows forget their memory but for a random number of its latest
# steps (log-uniform, 0 to M - 1) at each window: a sample starts with an empty memory, which the
# carried memory of training never shows, and a model that has not learnt to write from a short one
# writes one character over and over there (`FFFF...` at any temperature). 1/32 was enough before
# the match scores, not with them: the model leans on the copy more (bench/RESULTS.md 2026-12-07).
COPY_FORGET = 1 / 4


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every weight matrix of a model with this config (biases follow from them)."""
    v, e, h, g = config.vocab_size, config.embedding_size, config.rnn_size, len(GATE_ORDER[config.model])
    shapes = {"embed.weight": (v, e), "head.weight": (v, h)}
    if config.num_labels:
        shapes["label_embed.weight"] = (config.num_labels, e)
    for k in range(config.num_layers):
        shapes[f"rnn.weight_ih_l{k}"] = (g * h, e if k == 0 else h)
        shapes[f"rnn.weight_hh_l{k}"] = (g * h, h)
    if config.copy_memory:
        shapes.update({"copy_query.weight": (COPY_KEY, h), "copy_key.weight": (COPY_KEY, h),
                       "copy_value.weight": (v, h), "copy_out.weight": (h, h)})
    return shapes


class CharRNN(nn.Module):
    """forward(indices (B, T), state, labels (B,)) -> (log-probabilities (B, T, V), state).

    A model trained with labels adds its label's learnt vector to every step's input: the
    tutorial's category input, as a lookup. The labels are needed then, and refused otherwise.

    With `weight_drop` (DropConnect on the recurrent weights, as AWD-LSTM: Merity et al. 2017), a
    training forward drops entries of each layer's hidden-to-hidden weights: one mask per call,
    the same at every time step. Evaluation uses the plain weights.

    With `copy_memory` M, the LSTM's output at each step attends to its own outputs of the last M
    steps (by learnt queries and keys) and to a learnt sink, which means "copy nothing", and reads
    the character that followed each step attended to; the read, through a learnt vector per
    character and a linear layer started at zero, is added to the output before the head, and
    times a learnt gain to the logits. A step's score adds a learnt one for how many characters
    up to it equal those up to the step reading (`match_lengths`). That is how it repeats a
    speaker's name from a few speeches back, which an LSTM's state cannot hold.
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
        if config.copy_memory:
            h = config.rnn_size
            self.copy_query, self.copy_key = nn.Linear(h, COPY_KEY), nn.Linear(h, COPY_KEY)
            self.copy_sink = nn.Parameter(torch.zeros(COPY_KEY))
            self.copy_value = nn.Embedding(config.vocab_size, h)
            self.copy_out = nn.Linear(h, h)
            nn.init.zeros_(self.copy_out.weight)
            nn.init.zeros_(self.copy_out.bias)
            # What a read adds to its own characters' logits: with it the attention has a gradient
            # from the first step, where copy_out alone (started at zero) gives it none. And a score
            # per match length, started at the length itself: queries and keys learnt from nothing
            # find the steps whose context matches late and in some runs not at all.
            self.copy_gain = nn.Parameter(torch.ones(1))
            self.copy_match = nn.Parameter(torch.arange(COPY_MATCH + 1, dtype=torch.float32))

    def forward(self, idx: torch.Tensor, state: State | None = None,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        x = self.embed(idx)                      # (B, T, E)
        if (labels is None) != (self.label_embed is None):
            raise ValueError("a model trained with labels needs one per row, and one without takes none")
        if labels is not None:
            x = x + self.label_embed(labels)[:, None]  # (B, 1, E): the same label at every step
        lstm = self.config.model == "lstm"
        hx, memory = (None, None) if state is None else (state[:1 + lstm], state[1 + lstm:] or None)
        out, hx = self.recur(x, hx if hx is None or lstm else hx[0])  # (B, T, H); nn.RNN/GRU take h alone
        state = tuple(hx) if lstm else (hx,)
        copied = None
        if self.config.copy_memory:
            out, copied, memory = self.copy(out, idx, memory)
            state += memory
        logits = self.head(self.drop(out)).float()  # (B, T, V), fp32 log-probs even under autocast
        if copied is not None:
            logits = logits + self.copy_gain * copied
        return self.log_softmax(logits), state

    def copy(self, out: torch.Tensor, idx: torch.Tensor, memory: State | None
             ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """The copy attention: out (B, T, H) plus what each step reads from the last M steps, the
        read itself (B, T, V: the attention's weight on each character), and the new memory."""
        (B, T), M = idx.shape, self.config.copy_memory
        if memory is None:  # nothing read yet: M steps of -1, none of them attended to
            memory = (out.new_zeros(M, B, COPY_KEY, dtype=torch.float32),
                      out.new_full((M, B, 1), -1.0, dtype=torch.float32))
        new_keys = self.copy_key(out)
        keys = torch.cat([memory[0].transpose(0, 1).to(new_keys.dtype), new_keys], 1)      # (B, M + T, D)
        read = torch.cat([memory[1][..., 0].T, idx.float()], 1)                            # (B, M + T)
        # step t (at M + t) attends to steps j in [t, M + t): each key but the last, with the
        # character that followed it; a step before the text (-1) is never attended to
        query = self.copy_query(out) / COPY_KEY ** 0.5
        scores = query @ keys[:, :-1].transpose(1, 2).to(query.dtype)                     # (B, T, M + T - 1)
        scores = scores.float() + self.copy_match[match_lengths(read, T)]
        sink = query @ self.copy_sink.to(query.dtype)                                     # (B, T)
        j = torch.arange(M + T - 1, device=idx.device)
        t = torch.arange(T, device=idx.device)[:, None]
        hidden = (j < t) | (j >= M + t) | (read[:, None, :-1] < 0)
        if self.training:
            hidden = hidden | (j < M - self.remembered(B, M, idx.device)[:, None])[:, None]
        weights = torch.cat([sink.float()[..., None], scores.masked_fill(hidden, -torch.inf)], -1)
        weights = weights.softmax(-1)[..., 1:]
        followed = read[:, None, 1:].long().clamp(min=0).expand(B, T, -1)
        copied = weights.new_zeros(B, T, self.config.vocab_size).scatter_add_(2, followed, weights)  # (B, T, V)
        out = out + self.copy_out(copied.to(out.dtype) @ self.copy_value.weight.to(out.dtype))
        return out, copied, (keys[:, -M:].transpose(0, 1).float(), read[:, -M:].T[..., None])

    def remembered(self, rows: int, m: int, device: torch.device) -> torch.Tensor:
        """How many of its memory's latest steps each row keeps for this window (COPY_FORGET)."""
        forget = torch.rand(rows, device=device) < COPY_FORGET
        kept = (m ** torch.rand(rows, device=device)).long() - 1  # log-uniform: half of them keep under 32
        return torch.where(forget, kept, m)

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


def match_lengths(read: torch.Tensor, steps: int) -> torch.Tensor:
    """read (B, N): the characters of N steps (-1 before the text), the last `steps` of them the
    window's -> (B, steps, N - 1): for window step t and step j, how many characters up to j
    equal those up to t, at most COPY_MATCH, within the M steps t attends to (j >= t here)."""
    (B, N), K = read.shape, COPY_MATCH
    memory = N - steps
    padded = torch.cat([read.new_full((B, K), -1.0), read], 1)  # padded[K + p] is read[p]
    keys = padded.masked_fill(padded < 0, -2.0)  # a step before the text matches nothing
    run = torch.ones(B, steps, N - 1, dtype=torch.bool, device=read.device)
    length = torch.zeros(B, steps, N - 1, dtype=torch.uint8, device=read.device)
    for i in range(K):  # the i-th characters back from t and from j
        run &= padded[:, K + memory - i:K + memory - i + steps, None] == keys[:, None, K - i:K - i + N - 1]
        length += run
    # t's memory starts at j = t in these coordinates: a run from j reaches back j - t + 1 steps
    j, t = torch.arange(N - 1, device=read.device), torch.arange(steps, device=read.device)[:, None]
    return torch.minimum(length.long(), (j - t + 1).clamp(min=0))


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

    - The copy attention keeps each row's memory in a ring (`Copy`), and what reading a character
      adds to the logits, through copy_out and the head, is precomputed: a (V, V) table. Its query
      and key are more columns of the last product, read with the head's: no call of their own.

    `step(idx, state)` is the plain form: states are tuples of float32 arrays laid out like the
    model's, (h,) or, for an LSTM, (h, c), each (L, N, H), then the copy attention's memory if it
    has one; the state passed in is left alone.
    `step.stream(state)` holds a state in place and moves it on one character a call: the fast
    form, for sampling loops. A model with labels takes each row's label, `labels` (N,).
    """

    WIDE_ROWS = 4  # from this many rows on, an LSTM's or GRU's stream is laid out transposed
    # from this many bytes of weights read a character on, even one row's products are worth
    # sharing among BLAS threads: one stream of a 2x256 (3 MB) gains nothing from a second, a 2x384
    # (7 MB) 1.25x, a 3x512 (21 MB) 2x (bench/RESULTS.md, 2026-12-07)
    SHARED_BYTES = 4 << 20

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
            # the last layer's hidden-to-hidden weights beside the head's [and the copy attention's
            # query and key], for [h, 1]: (H + 1, G*H + V [+ 2D])
            w_hh = self.layers[-1].pop()
            if not gru:
                w_hh = np.concatenate([w_hh, np.zeros_like(w_hh[:1])])
            self.vocab_size = model.head.out_features
            head = torch.cat([model.head.weight.float() * h_scale, model.head.bias.float()[:, None]], 1).T
            self.layers[-1].append(None)
            self.copy_memory = cfg.copy_memory
            copy_weights = []
            if cfg.copy_memory:
                def array(t: torch.Tensor) -> np.ndarray:
                    return np.ascontiguousarray(t.float().cpu().numpy())

                # [h, 1] -> [query / sqrt(D), key]: (H + 1, 2D), in the last product beside the head
                query = torch.cat([model.copy_query.weight * h_scale, model.copy_query.bias[:, None]], 1) / COPY_KEY ** 0.5
                key = torch.cat([model.copy_key.weight * h_scale, model.copy_key.bias[:, None]], 1)
                copy_weights = [array(torch.cat([query, key]).T)]
                self.copy_sink = array(model.copy_sink)
                self.copy_match = array(model.copy_match)
                # what reading a character adds to the logits, through copy_out and the head, and to
                # its own logit by the gain: (V, V); copy_out's bias adds the same every step, so
                # it joins the head's
                out_head = model.head.weight.float().T
                table = model.copy_value.weight.float() @ model.copy_out.weight.float().T @ out_head
                # in float64, as the read it multiplies comes from np.bincount: no conversion a step
                self.copy_table = (table + model.copy_gain.float() * torch.eye(len(table))).double().cpu().numpy()
                head[-1] += model.copy_out.bias.float() @ out_head
            self.last = np.ascontiguousarray(np.concatenate([w_hh, head.cpu().numpy(), *copy_weights], 1))

    @property
    def product_bytes(self) -> int:
        """Bytes of weights a character's step multiplies by (the first layer's table gives one row)."""
        return self.last.nbytes + sum(w.nbytes for k, layer in enumerate(self.layers)
                                      for w in layer[k == 0:] if w is not None)

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
            out = buffer(step.last.shape[1])        # the last layer's next share, logits [, query, key]
            self.h = [by_rows(x) for x in h]        # (N, H) views, as load and state read them
            self.last, self.logits = (*product(h1[-1], last), out), by_rows(part(out, g, g + step.vocab_size))
            # array operands: a Python float costs a conversion on every call
            self.ones, self.halves = by_rows(np.ones((1, 3 * n), f32)), by_rows(np.full((1, 2 * n), 0.5, f32))
            tmp = buffer(n)
            self.copy = (None if not step.copy_memory else
                         NumpyStep.Copy(step, by_rows(part(out, g + step.vocab_size, out.size)), rows))
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
            """Set the state: (h,) or (h, c), each (L, N, H), and the copy attention's memory."""
            for k, h in enumerate(self.h):
                np.multiply(state[0][k], 2.0 if self.cell == "lstm" else 1.0, out=h)
            for k, c in enumerate(self.c):
                c[...] = state[1][k]
            if self.copy:
                self.copy.load(*state[-2:])
            for a, b, share in self.shares[:-1]:  # each layer's share of the next step
                np.matmul(a, b, out=share)
            np.matmul(*self.last[:2], out=self.last[2])

        def state(self) -> NumpyState:
            """A copy of the state, laid out as `load` takes it."""
            h = np.stack(self.h)
            memory = self.copy.state() if self.copy else ()
            if self.cell != "lstm":
                return (h, *memory)
            h *= 0.5
            return h, np.stack(self.c), *memory

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
            if self.copy:
                add(self.logits, self.copy(idx), out=self.logits)
            return self.logits

    class Copy:
        """The copy attention's step for a stream: its memory, in a ring of M slots per row.

        Slot s holds a step's key, the character read at it (-1 before the text) and `followed`,
        the character read after it (offset by the row's start in a flat (N * V) array, for one
        bincount). A new step overwrites the oldest slot once it has been scored. The sink is one
        more key, at slot M, whose score nothing adds to and whose weight goes to a bin of its own:
        then one softmax over M + 1 scores serves both.
        Slot s's match length with the step just read (`match_lengths`) is one more than slot
        s - 1's with the step before, where s read the same character, up to its reach back to the
        oldest slot. The lengths lie in a window of a buffer twice M wide that moves one place left
        a step: slot s then finds s - 1's length where its own goes, and the update is in place.
        """

        def __init__(self, step: NumpyStep, query_key: np.ndarray, rows: int):
            m, self.vocab, f32 = step.copy_memory, step.vocab_size, np.float32
            # views of the last product's columns, made by every step: (N, D) each
            self.step, self.query, self.key = step, query_key[:, :COPY_KEY], query_key[:, COPY_KEY:]
            self.keys = np.zeros((rows, m + 1, COPY_KEY), f32)
            self.keys[:, m] = step.copy_sink
            self.read = np.full((rows, m), -1, np.intp)
            self.followed = np.full((rows, m + 1), rows * self.vocab, np.intp)  # the sink's bin: the last
            self.offsets = np.arange(rows) * self.vocab
            self.mask = np.zeros((rows, m), f32)  # 0 for a step of the text, -inf before it
            self.pending = 0  # steps until every slot holds a step of the text, and the mask is all 0
            self.lengths, self.start = np.zeros((rows, 2 * m), np.intp), m  # the window: start:start + m
            self.same, self.bonus = np.empty((rows, m), bool), np.empty((rows, m), f32)
            self.scores = np.empty((rows, m + 1), f32)
            self.at = 0  # the oldest step's slot, where the next one goes
            # a match may reach back to the oldest step: in rank r from the oldest, r + 1 characters;
            # twice over, so that slot s's bound is a slice, reach[m - at + s], with no copy a step
            self.reach = np.tile(np.minimum(np.arange(m) + 1, COPY_MATCH), 2)

        def load(self, keys: np.ndarray, read: np.ndarray) -> None:
            """The model's layout, oldest step first: keys (M, N, D), characters (M, N, 1)."""
            m = self.read.shape[1]
            self.read[...] = read[..., 0].T  # (N, M), -1 before the text
            self.keys[:, :m] = keys.transpose(1, 0, 2)
            self.mask[...] = np.where(self.read >= 0, 0.0, -np.inf)
            before = np.flatnonzero((self.read < 0).any(0))  # the text's first steps replace these
            self.pending = before[-1] + 1 if len(before) else 0
            self.followed[:, :m - 1] = np.maximum(self.read[:, 1:], 0) + self.offsets[:, None]
            self.at, self.start = 0, m
            with_last = match_lengths(torch.from_numpy(self.read).float(), 1)[:, 0]  # each slot's, with the last step
            self.lengths[:, m:-1] = with_last.numpy()
            self.lengths[:, -1] = 0

        def state(self) -> tuple[np.ndarray, np.ndarray]:
            order = np.roll(np.arange(self.read.shape[1]), -self.at)
            read = self.read[:, order].T[..., None].astype(np.float32)
            return np.ascontiguousarray(self.keys[:, order].transpose(1, 0, 2)), read

        def __call__(self, idx: np.ndarray) -> np.ndarray:
            """idx (N,), the characters just read -> what attending adds to the logits (N, V), float64."""
            step, at, m, scores = self.step, self.at, self.read.shape[1], self.scores
            if self.start == 0:  # the window has reached the buffer's left end: back to the right
                self.lengths[:, m:] = self.lengths[:, :m]
                self.start = m
            self.start -= 1
            self.lengths[:, self.start] = self.lengths[:, self.start + m]  # the ring: slot 0 follows M - 1
            lengths = self.lengths[:, self.start:self.start + m]
            np.add(lengths, 1, out=lengths)
            np.minimum(lengths, self.reach[m - at:2 * m - at], out=lengths)
            np.multiply(lengths, np.equal(self.read, idx[:, None], out=self.same), out=lengths)
            self.read[:, at] = idx
            self.followed[:, (at or m) - 1] = idx + self.offsets  # the newest step is followed by this one
            np.matmul(self.keys, self.query[:, :, None], out=scores[:, :, None])  # (N, M + 1)
            slots = scores[:, :m]
            np.add(slots, np.take(step.copy_match, lengths, out=self.bonus), out=slots)
            if self.pending:
                np.add(slots, self.mask, out=slots)
                self.mask[:, at], self.pending = 0.0, self.pending - 1
            np.exp(np.subtract(scores, scores.max(1, keepdims=True), out=scores), out=scores)
            np.divide(scores, scores.sum(1, keepdims=True), out=scores)
            copied = np.bincount(self.followed.ravel(), scores.ravel(), len(self.offsets) * self.vocab + 1)
            self.keys[:, at], self.at = self.key, (at + 1) % m
            return copied[:-1].reshape(-1, self.vocab) @ step.copy_table


@torch.no_grad()
def grow_vocab(model: CharRNN, old_symbols: list[str], new_symbols: list[str], config: ModelConfig,
               old_labels: list[str] = (), new_labels: list[str] = ()) -> CharRNN:
    """The same network over a larger vocabulary (`config` says which, and the dropouts), for
    fine-tuning on text with new characters, or on a list (the item marker is one more symbol).

    Every old symbol keeps its input and output rows. A new one gets a fresh input row and an
    output row of zeros with the lowest bias of any old one: it starts less likely than a typical
    known character, and its gradient is not zero, so it is learnt. Its copy attention row is zero:
    copying it adds nothing until that is learnt. Labels the base model knew keep their rows; new
    labels start fresh.
    """
    grown = CharRNN(config)
    old, new = model.state_dict(), grown.state_dict()
    rows = [new_symbols.index(c) for c in old_symbols]
    by_symbol = ["embed.weight", "head.weight", "head.bias"] + (["copy_value.weight"] if config.copy_memory else [])
    new["head.weight"].zero_()
    new["head.bias"].fill_(old["head.bias"].min())
    if config.copy_memory:
        new["copy_value.weight"].zero_()
    for name in by_symbol:
        new[name][rows] = old[name]
    new.update({k: v for k, v in old.items() if k.startswith(("rnn.", "copy_")) and k not in by_symbol})
    for i, label in enumerate(old_labels):
        if label in new_labels:
            new["label_embed.weight"][new_labels.index(label)] = old["label_embed.weight"][i]
    grown.load_state_dict(new)
    return grown
