"""The Python API: `charrnn.load` a trained model to sample from, `charrnn.train` a new one.

    import charrnn
    run = charrnn.train("my_text.txt", time_budget="2m", progress=False)
    model = charrnn.load(run.checkpoint_dir)
    print(model.generate("The ", length=200, temperature=0.8, seed=1))
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

from charrnn import checkpoint
from charrnn.config import SampleConfig, TrainConfig, parse_duration
from charrnn.device import pick_device
from charrnn.errors import CharRNNError
from charrnn.evaluate import score_file, score_tokens
from charrnn.model import NumpyStep
from charrnn.sample import generate, sample_steps


@dataclass(frozen=True)
class Score:
    """The loss of a text under a model, per character scored."""
    nats: float
    chars: int

    @property
    def bits(self) -> float:
        return self.nats / math.log(2)


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
                "encoding": ckpt.get("train_config", {}).get("encoding", "utf-8")}

    def describe(self) -> str:
        """The info as a few lines of text (what `generate.py --info` prints)."""
        i, cfg = self.info, self.info["model_config"]
        corpus = i["corpus"]
        lines = [f"checkpoint {i['checkpoint']}",
                 f"corpus {corpus.get('name', 'unknown')}"
                 + (f" ({corpus['length']:,} chars)" if "length" in corpus else "") + f", vocabulary {i['vocab_size']}",
                 f"model {cfg['model']} {cfg['num_layers']}x{cfg['rnn_size']}, {i['parameters']:,} parameters"]
        if i["step"] is not None:
            best = i["best_val_loss"]
            loss = (f"best validation loss {best:.4f} nats/char ({best / math.log(2):.3f} bits)"
                    if best is not None and math.isfinite(best) else "not evaluated yet")
            lines.append(f"trained {i['step']:,} steps ({(i['elapsed'] or 0) / 60:.1f} min), {loss}")
        for entry in i["lineage"]:
            lines.append(f"initialised from {entry['checkpoint']} (trained on {entry['corpus']}, "
                         f"{entry['step']:,} steps)")
        return "\n".join(lines)

    def generate(self, prime: str = "", length: int = 500, temperature: float = 0.8, top_k: int | None = None,
                 top_p: float | None = None, stop: str | None = None, seed: int | None = None,
                 num_samples: int | None = None, skip_unknown: bool = False) -> str | list[str]:
        """The prime followed by up to `length` new characters; a list of `num_samples` such texts if given."""
        config = SampleConfig(length, temperature, top_k, top_p, stop, seed)
        texts, _ = generate(self.net, self.vocab, config, prime, num_samples=num_samples or 1,
                            skip_unknown=skip_unknown, step=self._step)
        shown = self.seen_prime(prime, skip_unknown)
        return [shown + t for t in texts] if num_samples else shown + texts[0]

    def stream(self, prime: str = "", length: int = 500, temperature: float = 0.8, top_k: int | None = None,
               top_p: float | None = None, stop: str | None = None, seed: int | None = None,
               skip_unknown: bool = False) -> Iterator[str]:
        """Yield the new characters one at a time, as they are made."""
        config = SampleConfig(length, temperature, top_k, top_p, stop, seed)
        for new in sample_steps(self.net, self.vocab, config, prime, skip_unknown=skip_unknown, step=self._step):
            if new[0] is not None:
                yield new[0]

    def seen_prime(self, prime: str, skip_unknown: bool = False) -> str:
        """The prime as the model reads it (checked; without unknown characters if `skip_unknown`)."""
        return self.vocab.decode(self.vocab.encode(prime, skip_unknown))

    def score(self, text: str, skip_unknown: bool = False) -> Score:
        """Loss of `text` read as one stream: each character given the ones before it."""
        tokens = np.asarray(self.vocab.encode(text, skip_unknown), dtype=np.int64)
        return Score(*score_tokens(self.net, tokens))

    def score_file(self, path: str | Path, encoding: str | None = None, skip_unknown: bool = False) -> Score:
        """Loss of a text file, read in the training corpus's encoding unless `encoding` is given."""
        return Score(*score_file(self.net, self.vocab, path, encoding or self.info["encoding"], skip_unknown))

    def export_web(self, out_dir: str | Path, dtype: str = "float32") -> Path:
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
