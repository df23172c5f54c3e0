"""Items: a corpus that is a list (names, titles, recipes), learnt one whole item at a time.

Each item is framed by the vocabulary's marker (vocab.py), and all of them lie in one array,
each marker closing one item and opening the next:

    tokens:  M B o b M A n n a M ...        bounds: [0, 4, 9, ...]  (where the markers are)

The model reads an item's opening M with a fresh state, then learns to predict each character
and the closing M; generation starts at M and stops when it draws M again: a whole item.

A list comes as a text file (one item a line, or --item-separator), a folder of such files
whose names are the labels (the PyTorch names tutorial's data/names/Russian.txt), or a .csv,
.tsv or .jsonl with `text` and `label` columns. Items are stripped of surrounding whitespace,
empty ones are dropped, and line endings are read as \\n.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charrnn import corpus
from charrnn.errors import CharRNNError
from charrnn.vocab import Vocab, code_points

TABLES = (".csv", ".tsv", ".jsonl")
IGNORE = -100      # the target under padding: F.nll_loss's default ignore_index, so it is not scored
SPLIT_SEED = 0     # the held-out items depend on the list alone, not on --seed: losses stay comparable
EVAL_CHARS = 8192  # characters per evaluation batch
ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}


def separator(text: str) -> str:
    """--item-separator as typed, with \\n, \\t, \\r and \\\\ read as escapes."""
    return re.sub(r"\\[ntr\\]", lambda m: ESCAPES[m.group()], text)


def is_table(spec: str | None) -> bool:
    return spec is not None and Path(spec).suffix.lower() in TABLES and Path(spec).is_file()


def wanted(config) -> bool:
    """Whether a run learns items: --items, --labels files, or a table corpus."""
    return config.items or config.labels == "files" or is_table(config.corpus)


def normalise(text: str) -> str:
    """How items are compared for --novel: case and surrounding whitespace do not count."""
    return text.strip().lower()


def fingerprints(texts: list[str]) -> np.ndarray:
    """Sorted distinct int64 fingerprints of the normalised texts: the first 8 bytes of their
    UTF-8 SHA-256, which the web page computes with its built-in crypto."""
    digests = b"".join(hashlib.sha256(normalise(t).encode("utf-8", "surrogatepass")).digest()[:8] for t in texts)
    return np.unique(np.frombuffer(digests, dtype=">i8").astype(np.int64))


def is_known(text: str, known: np.ndarray) -> bool:
    """Whether `text` is among the `fingerprints` (a sorted array)."""
    (value,) = fingerprints([text])
    at = np.searchsorted(known, value)
    return bool(at < len(known) and known[at] == value)


def label_index(labels: list[str], name: str | None) -> int | None:
    """The index of label `name` (None: none asked for); a name not in `labels` is a one-line error."""
    if name is None:
        return None
    if not labels:
        raise CharRNNError(f"this model was trained without labels; drop --label {name}")
    if name not in labels:
        raise CharRNNError(f"unknown label {name!r}; this model knows {', '.join(labels)}")
    return labels.index(name)


# -- reading ------------------------------------------------------------------------------------
@dataclass
class ItemList:
    """A corpus's items as text, with each one's label (None for a list without labels)."""
    name: str
    texts: list[str]
    labels: list[str] | None


def split_text(text: str, sep: str) -> list[str]:
    """The items in a text: split at `sep`, stripped, empty ones dropped."""
    items = (t.strip() for t in text.replace("\r\n", "\n").split(sep))
    return [t for t in items if t]


def read(source: corpus.Source, sep: str = "\n", labels: str | None = None, folder: bool = False) -> ItemList:
    """The items of a corpus (`folder`: given as a folder); `labels` is --labels (None: 'column'
    for a table, else 'none')."""
    table = not folder and source.files[0].suffix.lower() in TABLES
    labels = labels or ("column" if table else "none")
    if labels == "files" and not folder:
        raise CharRNNError("--labels files needs a folder with a file per label (names/Russian.txt, ...); "
                           f"{source.name} is not a folder")
    if labels == "column" and not table:
        raise CharRNNError("--labels column needs a .csv, .tsv or .jsonl corpus with a 'label' column; "
                           "for a folder of files named by label use --labels files")
    if table:
        listed = read_table(source.files[0], source.encoding, labels == "column")
    elif labels == "files":
        texts, names = [], []
        for path in source.files:
            found = split_text(read_file(path, source.encoding), sep)
            texts += found
            names += [path.stem] * len(found)
        listed = ItemList(source.name, texts, names)
    else:
        listed = ItemList(source.name, [t for path in source.files
                                        for t in split_text(read_file(path, source.encoding), sep)], None)
    if not listed.texts:
        raise CharRNNError(f"corpus {source.name} holds no items (every one was empty); give a list with an "
                           "item per line, or set --item-separator")
    return listed


def read_file(path: Path, encoding: str) -> str:
    return "".join(corpus.read_file(path, encoding))


def read_table(path: Path, encoding: str, with_labels: bool) -> ItemList:
    """Items and labels from the `text` and `label` columns of a .csv or .tsv, or fields of a .jsonl."""
    text = read_file(path, encoding)
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise CharRNNError(f"{path} line {number} is not JSON ({e.msg}); fix that line") from None
                if not isinstance(rows[-1], dict):
                    raise CharRNNError(f"{path} line {number} is not a JSON object; give one object per line")
        columns = sorted({key for row in rows for key in row})
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        rows, columns = list(reader), reader.fieldnames or []
    for column in ("text", "label") if with_labels else ("text",):
        if column not in columns:
            hint = ", or --labels none to learn the items without labels" if column == "label" else ""
            raise CharRNNError(f"{path} has no '{column}' {'field' if path.suffix == '.jsonl' else 'column'} "
                               f"(it has: {', '.join(map(str, columns)) or 'none'}); add one{hint}")
    kept = [(str(row.get("text") or "").strip(), str(row.get("label") or "").strip()) for row in rows]
    kept = [(text, label) for text, label in kept if text]
    if with_labels and any(not label for _, label in kept):
        raise CharRNNError(f"{path} has items without a label; give every row a label, or pass --labels none")
    return ItemList(path.stem, [t for t, _ in kept], [label for _, label in kept] if with_labels else None)


# -- as indices ---------------------------------------------------------------------------------
@dataclass
class Items:
    """Items as indices: markers at `bounds` in `tokens`, and each item's label index (or None)."""
    tokens: np.ndarray             # (characters + items + 1,)
    bounds: np.ndarray             # (items + 1,) int64
    labels: np.ndarray | None      # (items,) int64

    def __len__(self) -> int:
        return len(self.bounds) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Each item's characters plus its closing marker: the characters it is scored on."""
        return np.diff(self.bounds)

    def framed(self, i: int) -> np.ndarray:
        """Item i with its opening and closing markers."""
        return self.tokens[self.bounds[i]:self.bounds[i + 1] + 1]

    def subset(self, which: np.ndarray) -> Items:
        """The items at indices `which`, in that order."""
        starts, lengths = self.bounds[which], self.lengths[which]
        bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        picked = np.arange(bounds[-1]) + np.repeat(starts - bounds[:-1], lengths)
        return Items(np.append(self.tokens[picked], self.tokens[-1]), bounds,
                     None if self.labels is None else self.labels[which])


def encode(texts: list[str], vocab: Vocab, labels: np.ndarray | None = None, skip_unknown: bool = False) -> Items:
    """Texts -> Items over `vocab` (an items vocabulary)."""
    if skip_unknown:
        texts = [vocab.decode(vocab.encode(t, skip_unknown=True)) for t in texts]
    lengths = np.array([len(t) for t in texts], dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(lengths + 1)]).astype(np.int64)
    tokens = np.full(bounds[-1] + 1, vocab.marker, dtype=vocab.index_dtype)
    inside = np.ones(len(tokens), dtype=bool)
    inside[bounds] = False
    tokens[inside] = vocab.encode_points(code_points("".join(texts)))
    return Items(tokens, bounds, None if labels is None else np.asarray(labels, dtype=np.int64))


def split(items: Items, val_frac: float, test_frac: float = 0.0) -> tuple[Items, Items, Items]:
    """A seeded random sample of whole items for validation (and test); the rest, in order, trains."""
    n = len(items)
    n_val = max(1, int(n * val_frac)) if val_frac else 0
    n_test = max(1, int(n * test_frac)) if test_frac else 0
    if n - n_val - n_test < 1:
        raise CharRNNError(f"the list has {n} item{'s' * (n != 1)}: too few to hold some out for validation "
                           "and train on the rest; give a longer list")
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    parts = np.sort(order[:n_val]), np.sort(order[n_val:n_val + n_test]), np.sort(order[n_val + n_test:])
    return items.subset(parts[2]), items.subset(parts[0]), items.subset(parts[1])


# -- batches ------------------------------------------------------------------------------------
def rows_for(lengths: np.ndarray, chars: int, window: int, most: int) -> int:
    """Rows per batch: as many typical items (their median length, up to a window) as make `chars`."""
    return int(np.clip(chars // max(1, int(np.median(np.minimum(lengths, window)))), 1, most))


def cut(order: np.ndarray, pools: np.ndarray, rows: int) -> list[np.ndarray]:
    """Items in `order` (sorted by length within each pool) cut into batches of `rows`, a pool's
    last batch short. Every batch gets the same number of rows, padded if short: oneDNN's bf16
    LSTM builds its kernels for each batch size it meets, and ever-new numbers of rows cost up to
    twice the step time of one number, where ever-new lengths cost nothing (bench/RESULTS.md)."""
    runs = np.split(order, np.flatnonzero(np.diff(pools)) + 1)
    return [run[i:i + rows] for run in runs for i in range(0, len(run), rows)]


def padded(items: Items, which: np.ndarray, rows: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (rows, width) of items `which`, each from its opening marker; padding,
    and the rows after the items, read markers and are not scored."""
    lengths = items.lengths[which]
    at = np.repeat(np.arange(len(which)), lengths)
    cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    starts = np.repeat(items.bounds[which], lengths) + cols
    x = np.full((rows, width), items.tokens[-1], dtype=np.int64)
    y = np.full((rows, width), IGNORE, dtype=np.int64)
    x[at, cols], y[at, cols] = items.tokens[starts], items.tokens[starts + 1]
    return torch.from_numpy(x), torch.from_numpy(y)


def label_tensor(items: Items, which: np.ndarray, rows: int) -> torch.Tensor | None:
    """The labels of items `which`, then label 0 for the padding rows (nothing of theirs is scored)."""
    if items.labels is None:
        return None
    return torch.from_numpy(np.concatenate([items.labels[which], np.zeros(rows - len(which), np.int64)]))


class ItemBatches:
    """Whole items for training, reshuffled every epoch, each read from a fresh state.

    A batch holds items of about the same length (sorted within a shuffled pool of POOL batches'
    worth), as many as batch_size x seq_length characters of typical items make, so that short
    items cost what the same characters of running text cost. An item longer than seq_length goes
    through in windows of seq_length with the state carried, as running text does.
    """

    POOL = 64
    MOST_ROWS = 16  # x batch_size: a list of one-character items must not make a huge batch

    def __init__(self, items: Items, batch_size: int, seq_length: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if len(items) < world_size:
            raise CharRNNError(f"the training list has {len(items)} items, fewer than the {world_size} processes")
        self.items, self.seq_length, self.seed, self.rank, self.world_size = items, seq_length, seed, rank, world_size
        self.rows = rows_for(items.lengths, batch_size * seq_length, seq_length, self.MOST_ROWS * batch_size)
        self.rows = -(-max(self.rows, world_size) // world_size) * world_size  # the same rows on every rank
        self.epoch, self.batch, self.window = 0, 0, 0
        self.plan = self._plan(0)
        self.steps_per_epoch = sum(self._windows(b) for b in self.plan)
        self._current = None  # (epoch, batch) whose padded arrays are held

    def _plan(self, epoch: int) -> list[np.ndarray]:
        """The epoch's batches of item indices: shuffled, sorted by length within pools, shuffled again."""
        rng = np.random.default_rng([self.seed, epoch])
        lengths = self.items.lengths
        order = rng.permutation(len(self.items))
        pools = np.cumsum(lengths[order]) // (self.POOL * self.rows * self.seq_length)
        order = order[np.lexsort((lengths[order], pools))]
        batches = cut(order, np.sort(pools), self.rows)
        return [batches[i] for i in rng.permutation(len(batches))]

    def _windows(self, which: np.ndarray) -> int:
        return -(-int(self.items.lengths[which].max()) // self.seq_length)

    def __iter__(self) -> Iterator:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, bool, torch.Tensor | None]:
        """(x, y, new_stream, labels): new_stream means a new batch of items, read from a fresh state."""
        which = self.plan[self.batch]
        if self._current != (self.epoch, self.batch):
            mine, rows = which[self.rank::self.world_size], self.rows // self.world_size
            self._x, self._y = padded(self.items, mine, rows, int(self.items.lengths[which].max()))
            self._labels, self._current = label_tensor(self.items, mine, rows), (self.epoch, self.batch)
        t = slice(self.window * self.seq_length, (self.window + 1) * self.seq_length)
        out = self._x[:, t], self._y[:, t], self.window == 0, self._labels
        self.window += 1
        if self.window == self._windows(which):
            self.window, self.batch = 0, self.batch + 1
            if self.batch == len(self.plan):
                self.epoch, self.batch = self.epoch + 1, 0
                self.plan = self._plan(self.epoch)
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "window": self.window}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch, self.window = int(state["epoch"]), int(state["batch"]), int(state["window"])
        self.plan = self._plan(self.epoch)


def eval_batches(items: Items, chars: int = EVAL_CHARS, window: int = 1024
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool, torch.Tensor | None]]:
    """Every item once, by length, as (x, y, new_stream, labels) windows for evaluation."""
    order = np.argsort(items.lengths, kind="stable")
    rows = min(rows_for(items.lengths, chars, window, chars), len(order))
    for which in cut(order, np.zeros(len(order)), rows):
        x, y = padded(items, which, rows, int(items.lengths[which].max()))
        labels = label_tensor(items, which, rows)
        for start in range(0, x.shape[1], window):
            yield x[:, start:start + window], y[:, start:start + window], start == 0, labels
