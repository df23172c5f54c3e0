"""The training loop: truncated BPTT with carried state, AdamW, clipping, warm-up then cosine decay.

One plain loop, no framework. It evaluates on the validation split every `eval_every` steps, keeps
`best.pt` and `last.pt`, appends every evaluation to `metrics.jsonl`, and on SIGINT/SIGTERM
finishes the step in hand, saves `last.pt` and returns, so `--resume` continues bit-identically.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from torch.nn.parallel import DistributedDataParallel

from charrnn import checkpoint, corpus, data, distributed
from charrnn.device import autocast_dtype, pick_device, set_threads
from charrnn.errors import CharRNNError
from charrnn.model import CharRNN, ModelConfig, detach_state, state_from_list, state_to_list

EVAL_STREAMS = 8          # the validation split is scored as 8 contiguous streams, state carried
EVAL_CHUNK = 1024         # characters per forward call when scoring: the state carries, so only speed changes
DEFAULT_TIME_BUDGET = 600  # seconds, used only when no other stopping rule is given


@dataclass(frozen=True)
class TrainConfig:
    """The defaults are the configuration that reached the lowest validation loss on tinyshakespeare
    in 10 minutes on a 2-core CPU; the runs behind each choice are in bench/RESULTS.md."""
    # data
    corpus: str | None = None
    encoding: str = "utf-8"
    val_frac: float = 0.1
    test_frac: float = 0.0
    batching: str = "stream"
    # model
    model: str = "lstm"
    rnn_size: int = 256
    num_layers: int = 2
    embedding_size: int = 64
    dropout: float = 0.2
    # optimisation: short windows give 4x the updates of 128-character ones for the same text, and
    # the carried state keeps the context; on a time budget the number of updates matters most
    seq_length: int = 32
    batch_size: int = 64
    learning_rate: float = 2e-3
    min_lr_frac: float = 0.02
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # when to stop (whichever comes first) and when to evaluate
    max_steps: int | None = None
    max_epochs: float | None = None
    time_budget: float | None = None
    eval_every: int = 500
    # where and how
    checkpoint_dir: str | None = None
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None


# Flags that may change when a run is resumed; the rest must match the checkpoint to stay exact.
RESUMABLE_OVERRIDES = {"max_steps", "max_epochs", "time_budget", "eval_every", "checkpoint_dir",
                       "device", "dtype", "threads"}


def resume_config(saved: dict, overrides: dict) -> TrainConfig:
    """The checkpoint's config with the flags that may change on resume replaced."""
    config = TrainConfig(**{f.name: saved[f.name] for f in fields(TrainConfig) if f.name in saved})
    for name, value in overrides.items():
        if name not in RESUMABLE_OVERRIDES and value != getattr(config, name):
            flag = "--" + name.replace("_", "-")
            raise CharRNNError(f"{flag} {value} differs from the resumed run's {getattr(config, name)}; "
                               f"drop {flag} to resume, or start a new run without --resume")
    return replace(config, **{k: v for k, v in overrides.items() if k in RESUMABLE_OVERRIDES})


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up, then cosine decay to min_lr_frac as progress goes 0 -> 1 (constant if unknown)."""
    warmup = min(1.0, (step + 1) / max(1, config.warmup_steps))
    decay = config.min_lr_frac + (1 - config.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.learning_rate * warmup * decay


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokens: np.ndarray, seq_length: int, device: torch.device,
             amp: torch.dtype | None = None, streams: int = EVAL_STREAMS,
             world: distributed.World = distributed.World()) -> float:
    """Mean NLL in nats/char over every character of `tokens`, state carried along each stream.

    Under data parallelism each rank scores its share of the streams and the sums are combined.
    """
    if len(tokens) < 2:
        raise CharRNNError("nothing to evaluate: the split holds fewer than 2 characters")
    streams = max(1, min(streams, len(tokens) - 1))  # a split shorter than `streams` still counts
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    mine = slice(world.rank, None, world.size)
    for x, y in data.eval_chunks(tokens, streams, seq_length):
        x, y = x[mine], y[mine]
        if len(x) == 0:  # fewer streams than ranks: this rank has none
            break
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            log_probs, state = model(x.to(device), state)
        total += F.nll_loss(log_probs.flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    total, count = distributed.sum_all(world, [total, count], device)
    return total / count


class StopFlag:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step."""

    def __init__(self):
        self.signal: int | None = None

    def __enter__(self) -> StopFlag:
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        signal.signal(signum, self._previous[signum])  # a second signal acts at once

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def rng_states() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            # dropout on a GPU draws from the GPU's generator, not the CPU one above
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    name, key, *rest = states["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def format_seconds(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


class Trainer:
    """Holds the run's state so that saving and resuming see one consistent picture."""

    def __init__(self, config: TrainConfig, resume_from: dict | None = None):
        self.config = config
        self.world = world = distributed.world_from_env()
        self.device = pick_device(config.device)
        if self.device.type == "cuda" and world.active:
            self.device = torch.device("cuda", world.local_rank)
            torch.cuda.set_device(self.device)
        distributed.start(world, self.device)
        self.amp = autocast_dtype(self.device, config.dtype)
        self.threads = set_threads(config.threads, world.local_size)
        # Ranks draw different dropout masks; DDP gives every rank rank 0's initial weights.
        seed_everything(config.seed + world.rank)

        source = corpus.resolve(config.corpus, config.encoding)
        self.corpus = corpus.load(source)
        self.vocab = self.corpus.vocab
        self.train_tokens, self.val_tokens, _ = data.split(self.corpus.tokens, config.val_frac, config.test_frac)
        if len(self.val_tokens) < 2:
            raise CharRNNError(f"the validation split of {self.corpus.name} is empty; "
                               "use a longer corpus or a larger --val-frac")
        if config.batching == "stream":
            self.batches = data.StreamBatches(self.train_tokens, config.batch_size, config.seq_length,
                                              world.rank, world.size)
        else:
            self.batches = data.RandomBatches(self.train_tokens, config.batch_size, config.seq_length,
                                              config.seed, world.rank, world.size)

        self.model_config = ModelConfig(len(self.vocab), config.model, config.rnn_size, config.num_layers,
                                        config.embedding_size, config.dropout)
        self.model = CharRNN(self.model_config).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate,
                                           betas=(0.9, 0.99), weight_decay=config.weight_decay)
        self.dir = Path(config.checkpoint_dir) if config.checkpoint_dir else checkpoint.CHECKPOINTS_DIR / self.corpus.name
        self.step, self.elapsed, self.best_val = 0, 0.0, math.inf
        self.state = None
        self.metrics: list[dict] = []
        if resume_from is not None:
            self._restore(resume_from)
        # Gradients are averaged over ranks inside backward(); self.model stays the plain module.
        self.forward_model = DistributedDataParallel(self.model) if world.active else self.model

    def _restore(self, ckpt: dict) -> None:
        if ckpt["vocab"] != self.vocab.to_list():
            raise CharRNNError("the corpus has changed since this checkpoint was written (its vocabulary "
                               "differs); resume with the same corpus or start a new run")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        progress = ckpt["progress"]
        self.step, self.elapsed, self.best_val = progress["step"], progress["elapsed"], progress["best_val_loss"]
        self.batches.load_state_dict(ckpt["data"])
        self.state = self._my_rows(state_from_list(ckpt["hidden"], self.device))
        self.metrics = list(ckpt["metrics"])
        set_rng_states(ckpt["rng"])
        if self.world.rank:  # the checkpoint holds rank 0's generators; the others start afresh
            torch.manual_seed(self.config.seed + self.world.rank + self.world.size * self.step)

    def _my_rows(self, state):
        """This rank's rows of a saved global-batch state; None if the world size has changed."""
        rows, b = self.config.batch_size * self.world.size, self.config.batch_size
        tensors = state if isinstance(state, tuple) else (state,)
        if state is None or tensors[0].shape[1] != rows:
            return None
        mine = tuple(t[:, self.world.rank * b:(self.world.rank + 1) * b].contiguous() for t in tensors)
        return mine if isinstance(state, tuple) else mine[0]

    # -- stopping and schedule ------------------------------------------------------------------
    def progress(self) -> float:
        """Fraction of the run done by the first stopping rule to be reached (0 if none is known)."""
        c = self.config
        fractions = [self.step / c.max_steps if c.max_steps else 0.0,
                     self.elapsed / c.time_budget if c.time_budget else 0.0,
                     self.step / (c.max_epochs * self.batches.steps_per_epoch) if c.max_epochs else 0.0]
        return max(fractions)

    def finished(self) -> bool:
        c = self.config
        return ((c.max_steps is not None and self.step >= c.max_steps)
                or (c.time_budget is not None and self.elapsed >= c.time_budget)
                or (c.max_epochs is not None and self.step >= c.max_epochs * self.batches.steps_per_epoch))

    # -- one step -------------------------------------------------------------------------------
    def train_step(self) -> float:
        x, y, new_stream = next(self.batches)
        if new_stream:
            self.state = None  # a new pass over the text: nothing to remember
        if self.device.type == "cuda":  # pinned pages let the copy overlap with the GPU's work
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        lr = learning_rate(self.config, self.step, self.progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            log_probs, state = self.forward_model(x, self.state)
        loss = F.nll_loss(log_probs.flatten(0, 1), y.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        # Keep the state's values for the next window but not its graph: backprop is truncated here.
        self.state = detach_state(state)
        self.step += 1
        return loss.item()

    # -- saving ---------------------------------------------------------------------------------
    def payload(self) -> dict:
        return {
            "vocab": self.vocab.to_list(),
            "model_config": asdict(self.model_config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "train_config": asdict(self.config),
            "corpus": {"name": self.corpus.name, "length": len(self.corpus.tokens)},
            "progress": {"step": self.step, "epoch": self.batches.epoch, "elapsed": self.elapsed,
                         "best_val_loss": self.best_val},
            "data": self.batches.state_dict(),
            "hidden": [distributed.gather_rows(self.world, t) for t in state_to_list(self.state)],
            "rng": rng_states(),
            "metrics": self.metrics,
        }

    def save(self, *names: str) -> None:
        """Every rank takes part (the state is gathered); rank 0 writes."""
        payload = self.payload()
        if self.world.is_main:
            for name in names:
                checkpoint.save(payload, self.dir / name)

    def write_metrics(self) -> None:
        if not self.world.is_main:
            return
        lines = "".join(json.dumps(m) + "\n" for m in self.metrics)
        checkpoint.atomic_write(self.dir / "metrics.jsonl", lambda f: f.write(lines.encode()))

    # -- the loop -------------------------------------------------------------------------------
    def evaluate_and_save(self, train_loss: float, chars_per_sec: float) -> dict:
        val = evaluate(self.model, self.val_tokens, EVAL_CHUNK, self.device, self.amp,
                       world=self.world)
        if not math.isfinite(val):  # the last update broke the weights: keep the checkpoints as they are
            raise CharRNNError(f"the validation loss became {val} at step {self.step}; the checkpoints in "
                               f"{self.dir} are kept; lower --learning-rate or --grad-clip")
        row = {"step": self.step, "epoch": round(self.step / self.batches.steps_per_epoch, 4),
               "elapsed": round(self.elapsed, 2), "train_loss": round(train_loss, 5),
               "val_loss": round(val, 5), "val_bpc": round(val / math.log(2), 5),
               "lr": learning_rate(self.config, self.step, self.progress()),
               "chars_per_sec": round(chars_per_sec)}
        self.metrics.append(row)
        improved = val < self.best_val
        self.best_val = min(self.best_val, val)
        self.save(*(["best.pt", "last.pt"] if improved else ["last.pt"]))
        self.write_metrics()
        return row

    def describe(self) -> str:
        c, n = self.config, len(self.corpus.tokens)
        return (f"corpus {self.corpus.name}: {n:,} chars, vocabulary {len(self.vocab)}, "
                f"train {len(self.train_tokens):,} / val {len(self.val_tokens):,}\n"
                f"model {c.model} {c.num_layers}x{c.rnn_size}, {self.model.num_parameters():,} parameters; "
                f"batch {c.batch_size}x{c.seq_length} ({c.batching})"
                + (f" per rank x {self.world.size} ranks = {c.batch_size * self.world.size} rows"
                   if self.world.active else "") + f", device {self.device}, "
                f"{'bf16 autocast' if self.amp else 'fp32'}, {self.threads} threads\n"
                f"checkpoints in {self.dir}")

    def run(self) -> dict:
        """Train until a stopping rule or a signal; returns a summary of the run."""
        main = self.world.is_main
        if main:
            checkpoint.remove_stale_temporaries(self.dir)
            config_json = json.dumps(asdict(self.config), indent=2) + "\n"
            checkpoint.atomic_write(self.dir / "config.json", lambda f: f.write(config_json.encode()))
            print(self.describe(), flush=True)
        chars_per_step = self.config.batch_size * self.config.seq_length * self.world.size
        train_loss, since_eval = math.nan, 0
        bar = tqdm(total=self.config.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (main and sys.stdout.isatty()), leave=False)
        say = bar.write if main else (lambda text: None)
        done, stopping = self.finished(), False  # at entry, from the checkpoint: the same on every rank
        last = window_start = time.perf_counter()
        with StopFlag() as stop, bar:
            while not (done or stopping):
                loss = self.train_step()
                now = time.perf_counter()
                self.elapsed, last, since_eval = self.elapsed + now - last, now, since_eval + 1
                # one small all-reduce per step keeps the ranks in step on when and why to stop
                bad, done, stopping = distributed.any_rank(
                    self.world, [not math.isfinite(loss), self.finished(), stop.signal is not None], self.device)
                if bad:
                    what = loss if not math.isfinite(loss) else "non-finite on another rank"
                    raise CharRNNError(f"the loss became {what} at step {self.step}; the checkpoints in "
                                       f"{self.dir} are kept; lower --learning-rate or --grad-clip")
                train_loss = loss if math.isnan(train_loss) else 0.95 * train_loss + 0.05 * loss
                cps = since_eval * chars_per_step / (now - window_start)  # training speed, evals excluded
                bar.update(1)
                bar.set_postfix_str(self._postfix(train_loss, cps), refresh=False)
                if self.step % self.config.eval_every == 0 or done:
                    say(self._summary(self.evaluate_and_save(train_loss, cps)))
                    now = time.perf_counter()  # the budget is wall time: evaluations count
                    self.elapsed, last, window_start, since_eval = self.elapsed + now - last, now, now, 0
        interrupted = stopping and not done
        if interrupted:
            self.save("last.pt")
            self.write_metrics()
        elif not self.metrics or self.metrics[-1]["step"] != self.step:
            say(self._summary(self.evaluate_and_save(train_loss, 0.0)))
        if main:
            plot_metrics(self.metrics, self.dir / "loss_curve.png")
        return {"step": self.step, "best_val_loss": self.best_val, "checkpoint_dir": str(self.dir),
                "interrupted": interrupted, "is_main": main}

    def _postfix(self, train_loss: float, cps: float) -> str:
        val = f"{self.metrics[-1]['val_loss']:.3f}" if self.metrics else "-"
        text = f"loss {train_loss:.3f} val {val} {cps:,.0f} char/s"
        if self.config.time_budget and not self.config.max_steps:
            text += f" left {format_seconds(self.config.time_budget - self.elapsed)}"
        return text

    def _summary(self, row: dict) -> str:
        return (f"step {row['step']:>6} | epoch {row['epoch']:.2f} | train {row['train_loss']:.4f} | "
                f"val {row['val_loss']:.4f} nats/char ({row['val_bpc']:.3f} bits) | "
                f"{row['chars_per_sec']:,} chars/s | {format_seconds(row['elapsed'])}")


def plot_metrics(metrics: list[dict], path: Path) -> None:
    """Draw train and validation loss against step; say how to get the plot without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"pip install matplotlib to draw {path.name} from metrics.jsonl", file=sys.stderr)
        return
    steps = [m["step"] for m in metrics]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [m["train_loss"] for m in metrics], label="train (smoothed)")
    ax.plot(steps, [m["val_loss"] for m in metrics], label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(config: TrainConfig, resume: str | None = None, overrides: dict | None = None) -> dict:
    """Train a new run from `config`, or continue the one at `resume` with `overrides` applied."""
    if resume is None:
        if config.corpus and Path(config.corpus).exists():  # so that --resume works from any folder
            config = replace(config, corpus=str(Path(config.corpus).resolve()))
        if not (config.max_steps or config.max_epochs or config.time_budget):
            config = replace(config, time_budget=DEFAULT_TIME_BUDGET)
        return _run(config, None)
    path = checkpoint.resolve(resume, prefer="last.pt")
    ckpt = checkpoint.load(path)
    with _invalid_checkpoint(path):
        config = resume_config(ckpt["train_config"], overrides or {})
        step = ckpt["progress"]["step"]
    if distributed.world_from_env().is_main:
        print(f"resuming {path} at step {step}", flush=True)
    return _run(config, ckpt, path)


@contextlib.contextmanager
def _invalid_checkpoint(path: Path):
    """A checkpoint that loads but lacks or garbles a field is a one-line error, not a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise CharRNNError(f"checkpoint {path} is incomplete or invalid ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:100] if str(e) else ''}); use another checkpoint") from None


def _run(config: TrainConfig, ckpt: dict | None, path: Path | None = None) -> dict:
    """Build and run a trainer; the process group (under torchrun) is closed however it ends."""
    try:
        if ckpt is None:
            trainer = Trainer(config)
        else:
            with _invalid_checkpoint(path):
                trainer = Trainer(config, resume_from=ckpt)
        return trainer.run()
    finally:
        distributed.stop(distributed.world_from_env())
