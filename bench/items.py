"""Lists of things, measured: items mode against stream mode, labels, and the PyTorch tutorial's model.

First the training speed of both modes on the same items (characters per second, padding not
counted), quiet and beside a busy process; then two side-by-side runs of `--minutes` each (both
children at once, one core and one thread each):

1. The names of the packages Debian knows (`apt-cache pkgnames`): `train.py --items` against
   `train.py` on the same training items as one newline-separated stream. On the same held-out
   items (items.split's seeded sample): loss per item (the stream model reads "\\n" first and must
   end the item with "\\n", as the items model reads and ends it with its marker); from 1,000
   samples at temperature 0.8, the share of well-formed items (ended within --cap characters, not
   empty; the stream model samples after "\\n" with --stop "\\n"), the share of those that are new,
   and the two-sample Kolmogorov-Smirnov statistic between their lengths and the held-out items'.
2. Word lists of five languages (Debian's wamerican, wngerman, wfrench, witalian, wspanish;
   --words of each, at random): `train.py --labels files` against the tutorial's model ("NLP
   From Scratch: Generating Names with a Character-Level RNN": one-hot category and input,
   i2h/i2o/o2o Linear layers, dropout 0.1, LogSoftmax, one item per step, SGD at 0.0005, hidden
   128), each trained for the same time. Held-out loss per character on the targets the tutorial
   predicts (every character after the first, and the end), and ours on all of them; then the
   share of 200 items per language (temperature 0.8) that a character n-gram naive Bayes
   classifier, trained on the held-out items, assigns to the language asked for.

    python bench/items.py --minutes 5        # about 12 minutes
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import charrnn
from charrnn import corpus, items
from charrnn.config import SampleConfig
from charrnn.evaluate import loss_sums
from charrnn.sample import generate
from charrnn.vocab import Vocab
from common import REPO
from quality import finish_children, start_child

LANGUAGES = {"English": "american-english", "German": "ngerman", "French": "french", "Italian": "italian",
             "Spanish": "spanish"}
SHAPE = ["--rnn-size", "256", "--num-layers", "2"]  # the same network for both modes


# -- data ---------------------------------------------------------------------------------------

def package_names(out: Path) -> Path:
    names = subprocess.run(["apt-cache", "pkgnames"], capture_output=True, text=True, check=True).stdout.split()
    path = out / "pkgnames.txt"
    path.write_text("\n".join(sorted(set(names))) + "\n", encoding="utf-8")
    return path


def word_lists(out: Path, per_language: int) -> Path:
    folder = out / "languages"
    folder.mkdir(exist_ok=True)
    for label, name in LANGUAGES.items():
        source = Path("/usr/share/dict") / name
        if not source.exists():
            sys.exit(f"{source} is missing: apt-get install wamerican wngerman wfrench witalian wspanish")
        words = sorted({w for w in source.read_text(encoding="utf-8").split("\n") if w and "'" not in w})
        picked = np.random.default_rng(0).choice(len(words), min(per_language, len(words)), replace=False)
        (folder / f"{label}.txt").write_text("\n".join(words[i] for i in sorted(picked)) + "\n", encoding="utf-8")
    return folder


def held_out(path: Path, labels: str | None = None) -> tuple[list[str], list[str], list[str] | None, list[str] | None]:
    """(train texts, held-out texts, train labels, held-out labels) as train.py --items splits them."""
    listed = items.read(corpus.resolve(str(path)), labels=labels, folder=path.is_dir())
    order = np.arange(len(listed.texts))
    vocab = Vocab(sorted(set("".join(listed.texts))), items=True)
    every = items.encode(listed.texts, vocab)
    every.labels = order  # carry each item's position through the split
    train, val, _ = items.split(every, 0.1)
    pick = lambda part, values: None if values is None else [values[i] for i in part.labels]  # noqa: E731
    return pick(train, listed.texts), pick(val, listed.texts), pick(train, listed.labels), pick(val, listed.labels)


# -- measures -----------------------------------------------------------------------------------

def ks_statistic(a: list[int], b: list[int]) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    grid = np.union1d(a, b)
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max())


def stream_item_loss(model, texts: list[str]) -> tuple[float, int]:
    """(summed nats, targets) of each text read as "\\n" text "\\n" by a model of running text, each
    from a fresh state: "\\n" plays the marker's part."""
    vocab = model.vocab
    kept = [t for t in texts if all(c in vocab for c in t)]
    tokens = np.asarray(vocab.encode("\n" + "\n".join(kept) + "\n"), dtype=np.int64)
    bounds = np.flatnonzero(tokens == vocab.chars.index("\n"))
    return loss_sums(model.net, items.Items(tokens, bounds, None))


def summary_of(generated: list[str], whole: list[bool], known: set[str], val: list[str]) -> dict:
    formed = [t for t, w in zip(generated, whole) if w and t.strip()]
    new = [t for t in formed if items.normalise(t) not in known]
    return {"well_formed": len(formed) / len(generated), "new_of_well_formed": len(new) / max(1, len(formed)),
            "ks_lengths": ks_statistic([len(t) for t in formed], [len(t) for t in val]) if formed else 1.0}


class NaiveBayes:
    """Character 1- to 3-gram naive Bayes with add-one smoothing; ^ and $ mark an item's ends."""

    def __init__(self, texts: list[str], labels: list[str]):
        self.labels = sorted(set(labels))
        self.counts = {label: Counter() for label in self.labels}
        for text, label in zip(texts, labels):
            self.counts[label].update(self.grams(text))
        self.totals = {label: sum(c.values()) for label, c in self.counts.items()}
        self.size = len(set().union(*self.counts.values()))
        self.prior = {label: math.log(labels.count(label) / len(labels)) for label in self.labels}

    @staticmethod
    def grams(text: str) -> list[str]:
        padded = f"^{text.lower()}$"
        return [padded[i:i + n] for n in (1, 2, 3) for i in range(len(padded) - n + 1)]

    def predict(self, text: str) -> str:
        def score(label):
            counts, total = self.counts[label], self.totals[label] + self.size
            return self.prior[label] + sum(math.log((counts[g] + 1) / total) for g in self.grams(text))
        return max(self.labels, key=score)


# -- the tutorial's model -----------------------------------------------------------------------

class TutorialRNN(nn.Module):
    """The tutorial's network: category, input and hidden in; hidden and log-probabilities out."""

    def __init__(self, categories: int, letters: int, hidden: int = 128):
        super().__init__()
        self.hidden_size = hidden
        self.i2h = nn.Linear(categories + letters + hidden, hidden)
        self.i2o = nn.Linear(categories + letters + hidden, letters)
        self.o2o = nn.Linear(hidden + letters, letters)
        self.dropout = nn.Dropout(0.1)

    def forward(self, category, x, hidden):
        combined = torch.cat((category, x, hidden), 1)
        hidden, out = self.i2h(combined), self.i2o(combined)
        out = self.dropout(self.o2o(torch.cat((hidden, out), 1)))
        return F.log_softmax(out, dim=1), hidden


def tutorial_tensors(text: str, label: int, letters: list[str], categories: int):
    """One-hot category (1, C), inputs (T, 1, L): the item's characters; targets: the next ones, then EOS."""
    eos = len(letters)
    category = torch.zeros(1, categories)
    category[0, label] = 1
    x = torch.zeros(len(text), 1, eos + 1)
    idx = [letters.index(c) for c in text]
    x[torch.arange(len(text)), 0, idx] = 1
    return category, x, torch.tensor(idx[1:] + [eos])


def tutorial_item_loss(model: TutorialRNN, category, x, target) -> torch.Tensor:
    hidden, loss = torch.zeros(1, model.hidden_size), 0
    for t in range(x.shape[0]):
        out, hidden = model(category, x[t], hidden)
        loss = loss + F.nll_loss(out, target[t:t + 1], reduction="sum")
    return loss


def train_tutorial(folder: Path, seconds: float, out: Path) -> None:
    """The tutorial's loop: a random language, a random word of it, one SGD step; for `seconds`."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    train, _, labels, _ = held_out(folder, "files")
    names, letters = sorted(set(labels)), sorted(set("".join(train)))
    by_label = {n: [t for t, label in zip(train, labels) if label == n] for n in names}
    model, rng = TutorialRNN(len(names), len(letters) + 1), np.random.default_rng(0)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        label = int(rng.integers(len(names)))
        text = by_label[names[label]][int(rng.integers(len(by_label[names[label]])))]
        model.zero_grad()
        loss = tutorial_item_loss(model, *tutorial_tensors(text, label, letters, len(names)))
        loss.backward()
        for p in model.parameters():
            p.data.add_(p.grad.data, alpha=-0.0005)
        steps += 1
    torch.save({"model": model.state_dict(), "letters": letters, "labels": names, "steps": steps}, out)
    print(f"tutorial model: {steps:,} items in {seconds:.0f} s", flush=True)


@torch.no_grad()
def tutorial_held_out_loss(path: Path, val: list[str], labels: list[str]) -> tuple[float, int]:
    saved = torch.load(path, weights_only=True)
    letters, names = saved["letters"], saved["labels"]
    model = TutorialRNN(len(names), len(letters) + 1)
    model.load_state_dict(saved["model"])
    model.eval()
    total, count = 0.0, 0
    for text, label in zip(val, labels):
        if all(c in letters for c in text):
            category, x, target = tutorial_tensors(text, names.index(label), letters, len(names))
            total += tutorial_item_loss(model, category, x, target).item()
            count += len(target)
    return total, count


@torch.no_grad()
def ours_after_first(model, val: list[str], labels: list[str]) -> tuple[float, int]:
    """Our model's loss on the tutorial's targets: every character after the first, and the end."""
    total, count = 0.0, 0
    for text, label in zip(val, labels):
        if all(c in model.vocab for c in text):
            idx = torch.tensor([[model.vocab.marker, *model.vocab.encode(text), model.vocab.marker]])
            logp, _ = model.net(idx[:, :-1], None, torch.tensor([model.labels.index(label)]))
            total -= logp[0, 1:].gather(1, idx[0, 2:, None]).sum().item()
            count += len(text)
    return total, count


# -- throughput ---------------------------------------------------------------------------------

def throughput(out: Path, path: Path, steps: int = 40, rounds: int = 3) -> dict:
    """Characters trained on per second (padding not counted), items mode against the same items as
    one stream, the 2x256 LSTM at the default batch, one thread: alternating rounds, quiet and then
    beside one busy process."""
    from charrnn.config import TrainConfig
    from charrnn.distributed import World
    from charrnn.launch import build

    torch.set_num_threads(1)
    train, _, _, _ = held_out(path)
    stream_file = out / "pkgnames-stream.txt"
    stream_file.write_text("\n".join(train) + "\n", encoding="utf-8")
    trainers = {mode: build(TrainConfig.from_options(corpus=str(corpus_path), items=mode == "items", rnn_size=256,
                                                     threads=1, max_steps=10**6, sample_length=0,
                                                     checkpoint_dir=str(out / f"tp-{mode}")), World(), overwrite=True)
                for mode, corpus_path in (("items", path), ("stream", stream_file))}
    result = {}
    for condition in ("quiet", "beside a busy process"):
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition != "quiet" else None
        speeds = {mode: [] for mode in trainers}
        try:
            for _ in range(rounds):
                for mode, trainer in trainers.items():
                    for _ in range(3):
                        trainer.train_step()
                    start, chars = time.perf_counter(), 0
                    for _ in range(steps):
                        trainer.train_step()
                        chars += trainer.chars_last_step
                    speeds[mode].append(chars / (time.perf_counter() - start))
        finally:
            if busy:
                busy.kill()
        result[condition] = {mode: round(float(np.median(v))) for mode, v in speeds.items()}
        result[condition]["items/stream"] = round(result[condition]["items"] / result[condition]["stream"], 3)
    return result


# -- the runs -----------------------------------------------------------------------------------

def train_cmd(corpus_path: Path, run: Path, seconds: float, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), "--corpus", str(corpus_path), "--time-budget", f"{seconds}s",
            "--threads", "1", "--checkpoint-dir", str(run), "--overwrite", "--sample-length", "0", *SHAPE, *extra]


def items_against_stream(out: Path, seconds: float, cap: int, samples: int) -> dict:
    path = package_names(out)
    train, val, _, _ = held_out(path)
    stream_file = out / "pkgnames-train.txt"  # the same training items, in a shuffled order
    order = np.random.default_rng(1).permutation(len(train))
    stream_file.write_text("\n".join(train[i] for i in order) + "\n", encoding="utf-8")
    finish_children({
        "items": start_child(train_cmd(path, out / "pk-items", seconds, "--items"), "items", 0),
        "stream": start_child(train_cmd(stream_file, out / "pk-stream", seconds, "--val-frac", "0.01"), "stream", 1),
    })
    known = {items.normalise(t) for t in train + val}
    config = SampleConfig(length=cap, temperature=0.8, seed=0)
    ours = charrnn.load(out / "pk-items" / "last.pt")
    draw = ours.draw_items(config, num_samples=samples)
    score = ours.score_items(val)
    stream = charrnn.load(out / "pk-stream" / "last.pt")
    texts, _ = generate(stream.net, stream.vocab, SampleConfig(length=cap, temperature=0.8, seed=0, stop="\n"),
                        "\n", num_samples=samples)
    total, count = stream_item_loss(stream, val)
    return {"list": f"apt-cache pkgnames, {len(train) + len(val):,} items, {len(val):,} held out",
            "items": {"nats_per_item": score.nats_per_item, "nats_per_char": score.nats,
                      **summary_of(draw.texts, draw.whole, known, val), "sample": draw.texts[:12]},
            "stream": {"nats_per_item": total / len(val), "nats_per_char": total / count,
                       **summary_of([t.removesuffix("\n") for t in texts], [t.endswith("\n") for t in texts], known, val),
                       "sample": [t.removesuffix("\n") for t in texts[:12]]}}


def labels_against_tutorial(out: Path, seconds: float, per_language: int, per_label: int) -> dict:
    folder = word_lists(out, per_language)
    train, val, train_labels, val_labels = held_out(folder, "files")
    finish_children({
        "labels": start_child(train_cmd(folder, out / "lang", seconds, "--labels", "files"), "labels", 0),
        "tutorial": start_child([sys.executable, __file__, "--tutorial", str(folder), str(seconds),
                                 str(out / "tutorial.pt")], "tutorial", 1),
    })
    ours = charrnn.load(out / "lang" / "last.pt")
    score = ours.score_items(val, val_labels)
    ours_total, ours_count = ours_after_first(ours, val, val_labels)
    tut_total, tut_count = tutorial_held_out_loss(out / "tutorial.pt", val, val_labels)
    classifier = NaiveBayes(val, val_labels)
    right, made = {}, {}
    for label in ours.labels:
        draw = ours.draw_items(SampleConfig(length=60, temperature=0.8, seed=1), num_samples=per_label, label=label)
        right[label] = sum(classifier.predict(t) == label for t in draw.texts) / len(draw.texts)
        made[label] = draw.texts[:6]
    check = np.random.default_rng(2).choice(len(train), min(2000, len(train)), replace=False)
    return {"list": f"{len(LANGUAGES)} word lists, {len(train) + len(val):,} items, {len(val):,} held out",
            "ours_nats_per_char_all": score.nats, "ours_nats_per_char_tutorial_targets": ours_total / ours_count,
            "tutorial_nats_per_char": tut_total / tut_count, "held_out_chars_compared": [ours_count, tut_count],
            "classified_as_asked": right, "classified_as_asked_mean": sum(right.values()) / len(right),
            "classifier_accuracy_on_training_items": float(np.mean(
                [classifier.predict(train[i]) == train_labels[i] for i in check])),
            "sample": made}


def main() -> None:
    if sys.argv[1:2] == ["--tutorial"]:
        return train_tutorial(Path(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4]))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=5.0, help="training time of each model")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "items")
    p.add_argument("--cap", type=int, default=60, help="the most characters a sampled item may take")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--words", type=int, default=8000, help="words of each language")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seconds = args.minutes * 60
    result = {"throughput_chars_per_sec": throughput(args.out, package_names(args.out)),
              "items_against_stream": items_against_stream(args.out, seconds, args.cap, args.samples),
              "labels_against_tutorial": labels_against_tutorial(args.out, seconds, args.words, 200)}
    print(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
