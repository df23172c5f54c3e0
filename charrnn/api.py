"""The Python API: `charrnn.load` a trained model to sample from, `charrnn.train` a new one.

    import charrnn
    run = charrnn.train("my_text.txt", time_budget="2m", progress=False)
    model = charrnn.load(run.checkpoint_dir)
    print(model.generate("The ", length=200, temperature=0.8, seed=1))

    names = charrnn.train("names/", items=True, labels="files", time_budget="2m", progress=False).load()
    print(names.generate(num_samples=20, label="Russian", novel=True))   # 20 new whole items
"""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charrnn import checkpoint, corpus, items
from charrnn.config import SampleConfig, TrainConfig, parse_duration
from charrnn.device import pick_device
from charrnn.errors import CharRNNError
from charrnn.evaluate import score_file, score_items, score_tokens
from charrnn.model import NumpyStep
from charrnn.sample import END, ItemDraw, generate, generate_items, sample_steps


@dataclass(frozen=True)
class Score:
    """The loss of a text under a model, per character scored; for a list, each item's end counts
    as a character, and `items` says how many there were."""
    nats: float
    chars: int
    items: int = 0

    @property
    def bits(self) -> float:
        return self.nats / math.log(2)

    @property
    def nats_per_item(self) -> float | None:
        return self.nats * self.chars / self.items if self.items else None


@dataclass(frozen=True)
class Run:
    """Where a training run is and how it ended."""
    checkpoint_dir: Path
    step: int
    best_val_loss: float
    interrupted: bool

    def load(self, device: str = "cpu") -> Model:
        return load(self.checkpoint_dir, device)


class Model:
    """A trained model and its vocabulary, ready to generate text and score it."""

    def __init__(self, ckpt: dict, path: Path, device: str = "cpu"):
        self.path = path
        self.net, self.vocab = checkpoint.build_model(ckpt, pick_device(device))
        self.checkpoint = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "rng", "hidden")}
        self._step = NumpyStep(self.net)
        # a model of items: its separator, labels and the training list's fingerprints (items.py)
        self.list = ckpt.get("items")

    @property
    def labels(self) -> list[str]:
        """The labels the model was trained with, in index order (none for most models)."""
        return list(self.list["labels"]) if self.list else []

    @property
    def info(self) -> dict:
        """What the model is: corpus, shape, parameters, training so far, lineage."""
        ckpt = self.checkpoint
        progress = ckpt.get("progress", {})
        return {"checkpoint": str(self.path), "corpus": ckpt.get("corpus", {}),
                "vocab_size": len(self.vocab), "model_config": ckpt["model_config"],
                "parameters": self.net.num_parameters(), "step": progress.get("step"),
                "elapsed": progress.get("elapsed"), "best_val_loss": progress.get("best_val_loss"),
                "lineage": ckpt.get("lineage", []),
                "encoding": ckpt.get("train_config", {}).get("encoding", "utf-8"),
                "items": None if not self.list else {
                    "separator": self.list["separator"], "count": ckpt.get("corpus", {}).get("items"),
                    "labels": dict(zip(self.list["labels"], self.list["label_counts"]))}}

    def describe(self) -> str:
        """The info as a few lines of text (what `generate.py --info` prints)."""
        i, cfg = self.info, self.info["model_config"]
        corpus = i["corpus"]
        lines = [f"checkpoint {i['checkpoint']}",
                 f"corpus {corpus.get('name', 'unknown')}"
                 + (f" ({corpus['length']:,} chars)" if "length" in corpus else "") + f", vocabulary {i['vocab_size']}",
                 f"model {cfg['model']} {cfg['num_layers']}x{cfg['rnn_size']}, {i['parameters']:,} parameters"
                 + (f", copy attention over {cfg['copy_memory']:,} characters" if cfg.get("copy_memory") else "")]
        if i["step"] is not None:
            best = i["best_val_loss"]
            loss = (f"best validation loss {best:.4f} nats/char ({best / math.log(2):.3f} bits)"
                    if best is not None and math.isfinite(best) else "not evaluated yet")
            lines.append(f"trained {i['step']:,} steps ({(i['elapsed'] or 0) / 60:.1f} min), {loss}")
        if i["items"]:
            labels = ", ".join(f"{name} ({count:,})" for name, count in i["items"]["labels"].items())
            lines.append(f"items: a list of {i['items']['count'] or 0:,} separated by \"{i['items']['separator']}\""
                         + (f"; labels {labels}" if labels else "; no labels"))
        for entry in i["lineage"]:
            lines.append(f"initialised from {entry['checkpoint']} (trained on {entry['corpus']}, "
                         f"{entry['step']:,} steps)")
        return "\n".join(lines)

    def generate(self, prime: str = "", length: int = 500, temperature: float = 0.8, top_k: int | None = None,
                 top_p: float | None = None, stop: str | None = None, seed: int | None = None,
                 num_samples: int | None = None, skip_unknown: bool = False, label: str | None = None,
                 novel: bool = False) -> str | list[str]:
        """The prime followed by up to `length` new characters; a list of `num_samples` such texts if given.

        A model of items makes whole items that begin with the prime (`length` caps each), of the
        `label` given (else of random labels); `novel` keeps only items not in the training list.
        """
        config = SampleConfig(length, temperature, top_k, top_p, stop, seed)
        if self.vocab.items:
            draw = self.draw_items(config, prime, num_samples or 1, label, novel, skip_unknown)
            if draw.shortfall(num_samples or 1):
                raise CharRNNError(draw.shortfall(num_samples or 1))
            return draw.texts if num_samples else draw.texts[0]
        if label is not None or novel:
            raise CharRNNError("this model was trained on running text; --label and --novel need a model "
                               "trained on a list with --items")
        texts, _ = generate(self.net, self.vocab, config, prime, num_samples=num_samples or 1,
                            skip_unknown=skip_unknown, step=self._step)
        shown = self.seen_prime(prime, skip_unknown)
        return [shown + t for t in texts] if num_samples else shown + texts[0]

    def draw_items(self, config: SampleConfig, prime: str = "", num_samples: int = 1, label: str | None = None,
                   novel: bool = False, skip_unknown: bool = False,
                   generator: np.random.Generator | None = None) -> ItemDraw:
        """Whole items and what --novel threw away (sample.generate_items), for a model of items."""
        return generate_items(self.net, self.vocab, config, prime, num_samples=num_samples,
                              label=self.label_index(label), known=self.known_items() if novel else None,
                              generator=generator, skip_unknown=skip_unknown, step=self._step)

    def label_index(self, label: str | None) -> int | None:
        """The index of a label name; a name the model does not know is a one-line error listing those it does."""
        return items.label_index(self.labels, label)

    def known_items(self) -> np.ndarray:
        """The fingerprints of the training list's items (items.fingerprints), sorted."""
        return self.list["fingerprints"].numpy()

    def stream(self, prime: str = "", length: int = 500, temperature: float = 0.8, top_k: int | None = None,
               top_p: float | None = None, stop: str | None = None, seed: int | None = None,
               skip_unknown: bool = False, label: str | None = None) -> Iterator[str]:
        """Yield the new characters one at a time, as they are made (for items: up to the item's end)."""
        config = SampleConfig(length, temperature, top_k, top_p, stop, seed)
        index = self.label_index(label)
        if self.labels and index is None:
            index = int(np.random.default_rng(seed).integers(len(self.labels)))
        for new in sample_steps(self.net, self.vocab, config, prime, skip_unknown=skip_unknown, step=self._step,
                                labels=None if index is None else [index]):
            if new[0] not in (None, END):
                yield new[0]

    def seen_prime(self, prime: str, skip_unknown: bool = False) -> str:
        """The prime as the model reads it (checked; without unknown characters if `skip_unknown`)."""
        return self.vocab.decode(self.vocab.encode(prime, skip_unknown))

    def score(self, text: str, skip_unknown: bool = False, label: str | None = None, adapt: float = 0.0) -> Score:
        """Loss of `text` read as one stream: each character given the ones before it (with `adapt`,
        by dynamic evaluation at that learning rate). For a model of items, `text` is a list (split
        as the training list was), each item of `label`."""
        if self.vocab.items:
            self._no_adapting(adapt)
            return self.score_items(items.split_text(text, items.separator(self.list["separator"])),
                                    None, label, skip_unknown)
        tokens = np.asarray(self.vocab.encode(text, skip_unknown), dtype=np.int64)
        return Score(*score_tokens(self.net, tokens, adapt=adapt))

    def score_file(self, path: str | Path, encoding: str | None = None, skip_unknown: bool = False,
                   label: str | None = None, adapt: float = 0.0) -> Score:
        """Loss of a text file, read in the training corpus's encoding unless `encoding` is given; for
        a model of items, a list as train.py reads one (a .csv or .jsonl may give each item's label)."""
        encoding, path = encoding or self.info["encoding"], Path(path)
        if not self.vocab.items:
            return Score(*score_file(self.net, self.vocab, path, encoding, skip_unknown, adapt))
        self._no_adapting(adapt)
        if not path.is_file():
            raise CharRNNError(f"--score file {path} {'is a directory' if path.is_dir() else 'does not exist'}; "
                               "give one list")
        listed = items.read(corpus.Source(path.stem, (path,), corpus.check_encoding(encoding)),
                            items.separator(self.list["separator"]),
                            "column" if items.is_table(str(path)) and self.labels else "none")
        return self.score_items(listed.texts, listed.labels, label, skip_unknown)

    def score_items(self, texts: list[str], names: list[str] | None = None, label: str | None = None,
                    skip_unknown: bool = False) -> Score:
        """Loss of items, each read from a fresh state, with their label names (or all of `label`)."""
        index = self.label_index(label)  # refuses one the model does not know, and any if it has none
        if self.labels and names is None:
            if index is None:
                raise CharRNNError("this model needs each item's label: give --label, or score a .csv, .tsv or "
                                   "a .jsonl with a label column")
            names = [label] * len(texts)
        indices = [self.label_index(name) for name in names] if self.labels else None
        listed = items.encode(texts, self.vocab, indices, skip_unknown)
        nats, chars = score_items(self.net, listed)
        return Score(nats, chars, len(listed))

    @staticmethod
    def _no_adapting(adapt: float) -> None:
        if adapt:
            raise CharRNNError("--adapt reads running text as one stream, and this model makes items, each "
                               "scored from a fresh state; drop --adapt")

    def export_web(self, out_dir: str | Path, dtype: str = "float16") -> Path:
        """Write a self-contained web page that runs this model in the browser; returns its index.html."""
        from charrnn.web import export_web

        return export_web({**self.checkpoint, "model": self.net.state_dict()}, out_dir, dtype=dtype)


def load(path: str | Path | None = None, device: str = "cpu") -> Model:
    """A model from a checkpoint file or a run folder (its best.pt); None: the run written last."""
    resolved = checkpoint.resolve(path)
    return Model(checkpoint.load(resolved), resolved, device)


def train(corpus: str | Path | None = None, *, resume: str | Path | None = None,
          init_from: str | Path | None = None, overwrite: bool = False, progress: bool = True,
          **options: Any) -> Run:
    """Train as `python train.py` does, with the same options (rnn_size=512, time_budget="10m", ...),
    defaults and checks; progress=False keeps it quiet. Returns where the run is and how it ended."""
    from charrnn.launch import train as launch

    if isinstance(options.get("time_budget"), str):
        try:
            options["time_budget"] = parse_duration(options["time_budget"])
        except ValueError as e:
            raise CharRNNError(f"time_budget: {e}") from None
    if corpus is not None:
        options["corpus"] = str(corpus)
    config = TrainConfig.from_options(**options)
    quiet = contextlib.ExitStack()
    if not progress:  # the run's report and the corpus notes go nowhere
        quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
        quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
    with quiet:
        summary = launch(config, resume=str(resume) if resume else None,
                         init_from=str(init_from) if init_from else None, overrides=options,
                         overwrite=overwrite, progress_bar=progress)
    return Run(Path(summary["checkpoint_dir"]), summary["step"], summary["best_val_loss"], summary["interrupted"])
