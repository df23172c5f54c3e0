"""Start-up: everything a run does to the process (process group, threads, seeds), the corpus, and
the parts the Trainer is handed; a new run, a resumed one, or a fine-tune of a trained model."""
from __future__ import annotations

import contextlib
import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from charrnn import checkpoint, corpus, data, distributed, items, rng, sizing
from charrnn.config import REGULARISED_OPTIONS, TrainConfig
from charrnn.device import ThreadGovernor, autocast_dtype, pick_device, set_threads
from charrnn.errors import CharRNNError
from charrnn.model import CharRNN, grow_vocab
from charrnn.runs import RunDir, new_run_dir
from charrnn.trainer import Trainer
from charrnn.vocab import Vocab

# Options that may change when a run is resumed; the rest must match the checkpoint to stay exact.
RESUMABLE = {"max_steps", "max_epochs", "time_budget", "eval_every", "log_every", "sample_length",
             "sample_prime", "keep_checkpoints", "checkpoint_dir", "device", "dtype", "threads"}
# Options a fine-tune takes from its base model.
SHAPE = {"model", "rnn_size", "num_layers", "embedding_size", "copy_memory"}
# Below this many validation characters the start-up lines say the loss is a rough guide. A mean
# of n per-character losses is uncertain by about std/sqrt(n), and their std is 2-3.6 nats (3.6
# on a 22,450-char CJK-like text, whose 2,245-char split gave a bootstrap error of 0.07 nats), so
# under 10,000 the loss moves by more than 0.02-0.04 nats with the text held out, as much as late
# checkpoints differ. The held-out share is not raised instead: on a tiny corpus the training text
# is what is short, and --val-frac should mean what it says (resume checks the split by it).
FEW_VAL_CHARS = 10_000


def train(config: TrainConfig, *, resume: str | None = None, init_from: str | None = None,
          overrides: dict | None = None, overwrite: bool = False, progress_bar: bool = True,
          callbacks: list[Callable[[Trainer], None]] = ()) -> dict:
    """Train a new run from `config`; or continue the run at `resume` with `overrides` (the options
    the user gave) applied; or start from the weights at `init_from` on the config's corpus.
    `callbacks` are called with the trainer after every step."""
    if resume and init_from:
        raise CharRNNError("--resume continues a run and --init-from starts a new one from a model; use one")
    world = distributed.world_from_env()
    try:
        if resume:
            path = checkpoint.resolve(resume, prefer="last.pt")
            ckpt = checkpoint.load(path)
            with invalid_checkpoint(path):
                config = resume_config(ckpt["train_config"], overrides or {})
                step = ckpt["progress"]["step"]
            if world.is_main:
                print(f"resuming {path} at step {step}", flush=True)
            folder = path.parent
            if "checkpoint_dir" in (overrides or {}) and Path(overrides["checkpoint_dir"]).resolve() != folder.resolve():
                folder = new_run_dir(overrides["checkpoint_dir"], "", overwrite)  # never into another run
            with invalid_checkpoint(path):
                trainer = build(config, world, resume_from=ckpt, run_dir=folder)
        else:
            config = absolute_corpus(config).with_stopping_rule()
            base = load_base(init_from, overrides or {}) if init_from else None
            if base:  # the network's shape is the base model's
                config = config.with_options(**{name: getattr(base.model.config, name) for name in SHAPE})
            trainer = build(config, world, base=base, overwrite=overwrite,
                            size_for_budget=base is None and sizing.wanted(config, overrides),
                            regularise=not REGULARISED_OPTIONS & (overrides or {}).keys(),
                            copy=not items.wanted(config) and "copy_memory" not in (overrides or {}))
        if world.is_main:
            trainer.run_dir.start(asdict(trainer.config))
        trainer.callbacks.extend(callbacks)
        return trainer.run(progress_bar=progress_bar)
    finally:
        distributed.stop(world)


def build(config: TrainConfig, world: distributed.World, *, resume_from: dict | None = None,
          base: Base | None = None, run_dir: Path | None = None,
          overwrite: bool = False, size_for_budget: bool = False, regularise: bool = False,
          copy: bool = False) -> Trainer:
    """Set up the process and build a Trainer: the one place with process-wide side effects."""
    device = pick_device(config.device)
    if device.type == "cuda" and world.active:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    distributed.start(world, device)
    amp = autocast_dtype(device, config.dtype)
    threads = set_threads(config.threads, world.local_size)
    # a time budget on the CPU trains with the cores other processes leave free (ThreadGovernor)
    governed = config.threads is None and bool(config.time_budget) and device.type == "cpu" and threads > 1

    source = corpus.resolve(config.corpus, config.encoding)
    if source.skipped and world.is_main:  # before the encoding, which may take a while
        print(corpus.skipped_summary(source), file=sys.stderr, flush=True)
    # A fine-tune (and its resumption) knows the base model's characters too: the union, sorted.
    known = base.vocab.chars if base else resume_from["vocab"] if resume_from else []
    if base and base.vocab.items and not items.wanted(config):
        raise CharRNNError("--init-from names a model of items; fine-tune it on a list with --items")
    split = item_split(config, source, known) if items.wanted(config) else stream_split(config, source, known)
    if size_for_budget:
        if governed:  # time the sizes at the threads the run will use: beside a busy neighbour two
            probe = ThreadGovernor(threads, interval=0.0)  # time 2-5x slower than the one it trains with
            time.sleep(0.25)  # the machine's load over a moment
            probe()
        config, why = sizing.size_for_budget(config, split.train_chars, len(split.vocab), device, amp, world,
                                             regularise, copy)
        torch.set_num_threads(threads)  # from here on the run's own governor decides
        if why and world.is_main:
            print(why, flush=True)
    rng.seed_everything(config.seed + world.rank)  # ranks draw different dropout masks
    batches = make_batches(config, split.train, world)
    vocab = split.vocab
    model_config = replace(config.model, vocab_size=len(vocab), num_labels=len(split.labels))
    model = (CharRNN(model_config) if base is None else
             grow_vocab(base.model, base.vocab.symbols, vocab.symbols, model_config, base.labels, split.labels))
    model.to(device)
    # betas (0.9, 0.99): char models see a new mix of characters every step; a shorter second
    # moment memory than 0.999 follows it better (nanoGPT uses 0.95 for the same reason)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.99),
                                  weight_decay=config.weight_decay)
    if resume_from is None and world.is_main:
        run_dir = new_run_dir(config.checkpoint_dir, split.info["corpus"]["name"], overwrite)
    info = {**split.info, "lineage": base.lineage if base else []}
    if resume_from is not None:
        info["lineage"] = resume_from.get("lineage", [])
        check_same_corpus(resume_from, info["corpus"])
    trainer = Trainer(config, model, optimizer, batches, split.val, vocab,
                      RunDir(run_dir or Path("."), writes=world.is_main), device=device, amp=amp, world=world,
                      checkpoint_info=info)
    if governed:
        trainer.callbacks.append(ThreadGovernor(threads))  # fewer threads while the machine is busy
    if resume_from is not None:
        if resume_from["vocab"] != vocab.to_list():
            raise CharRNNError("the corpus has changed since this checkpoint was written (its vocabulary "
                               "differs); resume with the same corpus or start a new run")
        trainer.restore(resume_from)
    if world.is_main:
        print(describe(trainer, split), flush=True)
    return trainer


class Base(NamedTuple):
    """The trained model a fine-tune starts from."""
    model: CharRNN
    vocab: Vocab
    labels: list[str]
    lineage: list[dict]


class Split(NamedTuple):
    """A corpus ready to train on: its vocabulary, training and validation data, what checkpoints
    record of it, and its labels."""
    vocab: Vocab
    train: np.ndarray | items.Items
    val: np.ndarray | items.Items  # what each evaluation scores
    val_size: int                  # characters held out (not all scored, with --eval-chars)
    train_chars: int
    info: dict
    labels: list[str]


def stream_split(config: TrainConfig, source: corpus.Source, known: list[str]) -> Split:
    """Running text: split by position."""
    text = corpus.load(source)
    vocab, tokens = Vocab(sorted(set(known) | set(text.vocab.chars))), text.tokens
    if vocab != text.vocab:
        tokens = remap(tokens, text.vocab, vocab)
    train_tokens, val_tokens, _ = data.split(tokens, config.val_frac, config.test_frac)
    if len(val_tokens) < 2:
        raise CharRNNError(f"the validation split of {text.name} is empty; "
                           "use a longer corpus or a larger --val-frac")
    eval_tokens = val_tokens[:config.eval_chars] if config.eval_chars else val_tokens
    info = {"corpus": {"name": text.name, "length": len(tokens), "fingerprint": fingerprint(tokens, config)}}
    return Split(vocab, train_tokens, eval_tokens, len(val_tokens), len(train_tokens), info, [])


def item_split(config: TrainConfig, source: corpus.Source, known: list[str]) -> Split:
    """A list: whole items, a seeded random sample of them held out; labels numbered in sorted order."""
    listed = items.read(source, items.separator(config.item_separator), config.labels,
                        folder=bool(config.corpus) and Path(config.corpus).expanduser().is_dir())
    vocab = Vocab(sorted(set(known) | set("".join(listed.texts))), items=True)
    names = sorted(set(listed.labels or []))
    number = {name: i for i, name in enumerate(names)}
    labels = None if listed.labels is None else np.array([number[n] for n in listed.labels], dtype=np.int64)
    every = items.encode(listed.texts, vocab, labels)
    train, val, _ = items.split(every, config.val_frac, config.test_frac)
    scored = val if not config.eval_chars else val.subset(  # the first items up to --eval-chars
        np.arange(max(1, int(np.searchsorted(np.cumsum(val.lengths), config.eval_chars, side="right")))))
    digest = hashlib.sha256(every.tokens.tobytes() + (b"" if labels is None else labels.tobytes())).hexdigest()
    info = {"corpus": {"name": listed.name, "length": len(every.tokens), "items": len(every), "fingerprint": digest[:16]},
            "items": {"separator": config.item_separator, "labels": names,
                      "label_counts": np.bincount(labels, minlength=len(names)).tolist() if names else [],
                      "fingerprints": torch.from_numpy(items.fingerprints(listed.texts))}}
    return Split(vocab, train, scored, len(val.tokens), len(train.tokens), info, names)


def make_batches(config: TrainConfig, train: np.ndarray | items.Items, world: distributed.World):
    """The training batches: whole items, contiguous rows of running text, or random windows."""
    if isinstance(train, items.Items):
        return items.ItemBatches(train, config.batch_size, config.seq_length, config.seed, world.rank, world.size)
    if config.batching == "stream":
        return data.StreamBatches(train, config.batch_size, config.seq_length, world.rank, world.size)
    return data.RandomBatches(train, config.batch_size, config.seq_length, config.seed, world.rank, world.size)


def resume_config(saved: dict, overrides: dict) -> TrainConfig:
    """The checkpoint's config with the options that may change on resume replaced."""
    config = TrainConfig.from_dict(saved)
    overrides = absolute_corpus_option(overrides)
    current = config.options()
    for name, value in overrides.items():
        if name not in RESUMABLE and value != current.get(name):
            flag = "--" + name.replace("_", "-")
            raise CharRNNError(f"{flag} {value} differs from the resumed run's {current.get(name)}; "
                               f"drop {flag} to resume, or start a new run without --resume")
    return config.with_options(**{k: v for k, v in overrides.items() if k in RESUMABLE})


def load_base(init_from: str, overrides: dict) -> Base:
    """The trained model a fine-tune starts from, its vocabulary and labels, and the lineage to record."""
    path = checkpoint.resolve(init_from, prefer="best.pt")
    ckpt = checkpoint.load(path)
    model, vocab = checkpoint.build_model(ckpt)
    for name in sorted(SHAPE & overrides.keys()):
        if overrides[name] != getattr(model.config, name):
            flag = "--" + name.replace("_", "-")
            raise CharRNNError(f"{flag} {overrides[name]} differs from the base model's "
                               f"{getattr(model.config, name)}: a fine-tune keeps the shape of --init-from; "
                               f"drop {flag}")
    progress = ckpt.get("progress", {})
    entry = {"checkpoint": str(path.resolve()), "corpus": ckpt.get("corpus", {}).get("name", "unknown"),
             "step": progress.get("step", 0), "best_val_loss": progress.get("best_val_loss")}
    return Base(model, vocab, list(ckpt.get("items", {}).get("labels", [])), [*ckpt.get("lineage", []), entry])


def remap(tokens: np.ndarray, old: Vocab, new: Vocab) -> np.ndarray:
    """Indices in `old` -> the same characters' indices in `new` (a superset)."""
    table = np.array([new.chars.index(c) for c in old.chars], dtype=new.index_dtype)
    return table[tokens]


def fingerprint(tokens: np.ndarray, config: TrainConfig) -> str:
    """A hash of the text at the start, the end and around the split: changes when the corpus does."""
    n, cut = len(tokens), int(len(tokens) * (1 - config.val_frac - config.test_frac))
    pieces = [tokens[:4096], tokens[max(0, cut - 2048):cut + 2048], tokens[-4096:]]
    return hashlib.sha256(b"".join(np.ascontiguousarray(p).tobytes() for p in pieces) + str(n).encode()).hexdigest()[:16]


def check_same_corpus(ckpt: dict, now: dict) -> None:
    saved = ckpt.get("corpus", {})
    same = saved.get("length") == now["length"] and saved.get("fingerprint", now["fingerprint"]) == now["fingerprint"]
    if not same:
        raise CharRNNError(f"the corpus has changed since this checkpoint was written ({saved.get('length', '?'):,} "
                           f"characters then, {now['length']:,} now, or other text); resume with the same "
                           "corpus, or fine-tune on the new one with --init-from")


def absolute_corpus(config: TrainConfig) -> TrainConfig:
    """A corpus path made absolute, so that --resume finds it from any folder."""
    return replace(config, **absolute_corpus_option({"corpus": config.corpus}))


def absolute_corpus_option(options: dict) -> dict:
    value = options.get("corpus")
    if value and Path(value).expanduser().exists():
        return {**options, "corpus": str(Path(value).expanduser().resolve())}
    return options


def describe(trainer: Trainer, split: Split) -> str:
    c, m = trainer.config, trainer.model.config
    info = trainer.checkpoint_info["corpus"]
    world = trainer.world
    scored = len(split.val.tokens if isinstance(split.val, items.Items) else split.val)
    lines = [
        f"corpus {info['name']}: {info['length']:,} chars" + (f" in {info['items']:,} items" if "items" in info else "")
        + f", vocabulary {len(trainer.vocab)}, train {split.train_chars:,} / val {split.val_size:,}",
        f"model {m.model} {m.num_layers}x{m.rnn_size}, {trainer.model.num_parameters():,} parameters"
        + (f", copy attention over the last {m.copy_memory:,} characters" if m.copy_memory else "")
        + (f", DropConnect {m.weight_drop:g} on the recurrent weights" if m.weight_drop else "")
        + (f", averaged weights (decay {c.ema_decay:g}) evaluated and saved" if c.ema_decay else "")
        + f"; batch {c.batch_size}x{c.seq_length} ({'items' if trainer.vocab.items else c.batching})"
        + (f" per rank x {world.size} ranks = {c.batch_size * world.size} rows" if world.active else "")
        + f", device {trainer.device}, {'bf16 autocast' if trainer.amp else 'fp32'}, "
        + (f"up to {torch.get_num_threads()} threads (fewer while other processes keep cores busy)"
           if any(isinstance(c, ThreadGovernor) for c in trainer.callbacks) else f"{torch.get_num_threads()} threads"),
        f"evaluation scores {'all ' if scored == split.val_size else f'the first {scored:,} of the '}"
        f"{split.val_size:,} validation chars (--eval-chars; python generate.py --score FILE scores a whole file)",
        f"checkpoints in {trainer.run_dir.path}",
    ]
    if split.val_size < FEW_VAL_CHARS:
        lines.insert(3, f"the validation split is small ({split.val_size:,} chars, under {FEW_VAL_CHARS:,}): its loss "
                        "is a rough guide, not a measure; a larger --val-frac holds out more")
    if split.labels:
        counts = trainer.checkpoint_info["items"]["label_counts"]
        lines.insert(1, f"labels {len(split.labels)}: " + ", ".join(
            f"{name} ({count:,})" for name, count in zip(split.labels[:8], counts)) + (" ..." if len(split.labels) > 8 else ""))
    for entry in trainer.checkpoint_info["lineage"][-1:]:
        lines.insert(2, f"initialised from {entry['checkpoint']} (trained on {entry['corpus']})")
    return "\n".join(lines)


@contextlib.contextmanager
def invalid_checkpoint(path: Path | None):
    """A checkpoint that loads but lacks or garbles a field is a one-line error, not a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, IndexError) as e:
        detail = str(e).splitlines()[0][:100] if str(e) else "a field is missing"
        raise CharRNNError(f"checkpoint {path} is incomplete or invalid ({detail}); use another checkpoint") from None

