"""The training loop: truncated BPTT with carried state, AdamW, clipping, warm-up then decay.

One plain loop, handed its parts (see launch.py for where they are built). Each step: set the
rate, forward/backward, clip, step, log; every `eval_every` steps (and at least once a pass over
the text and every few minutes) evaluate, print a sample and save. On SIGINT/SIGTERM it finishes
the step in hand, saves `last.pt` and returns, so `--resume` continues bit-identically.

With --ema-decay the trainer also keeps an exponential moving average of the weights: that is
what it evaluates, samples from and saves as the model (Polyak averaging: the average of the
late, noisy iterates often generalises better than the last of them).
"""
from __future__ import annotations

import copy
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from charrnn import distributed, rng
from charrnn.config import SampleConfig, TrainConfig
from charrnn.errors import CharRNNError
from charrnn.evaluate import evaluate
from charrnn.items import IGNORE
from charrnn.model import CharRNN, detach_state, state_from_list, state_to_list
from charrnn.plot import plot_metrics
from charrnn.runs import RunDir
from charrnn.sample import generate, generate_items
from charrnn.vocab import Vocab

SAMPLE_SEED = 0  # every evaluation's sample is drawn with the same seed, so samples compare fairly
SAMPLE_ITEMS = 6  # items shown at each evaluation of a list


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up, then cosine or linear decay to min_lr_frac as progress goes 0 -> 1 (constant if unknown)."""
    warmup = min(1.0, (step + 1) / max(1, config.warmup_steps))
    left = 1 - min(1.0, progress)
    shape = left if config.lr_schedule == "linear" else 0.5 * (1 - math.cos(math.pi * left))
    decay = config.min_lr_frac + (1 - config.min_lr_frac) * shape
    return config.learning_rate * warmup * decay


def ema_decay(config: TrainConfig, step: int) -> float:
    """The averaged weights' decay for the update after `step` earlier ones: --ema-decay, lowered early.

    The average starts as the initial weights, which a fixed decay D forgets slowly (at 0.999 they
    still weigh 37% after 1,000 steps), so a short run would save a model pulled back towards its
    random start. Until (1+t)/(10+t) reaches D the average spans about the last tenth of the steps
    taken (TensorFlow's ExponentialMovingAverage with num_updates does the same).
    """
    return min(config.ema_decay, (1 + step) / (10 + step))


def eval_interval(config: TrainConfig) -> float:
    """Seconds between evaluations at most: a quarter of a time budget (at least 30 s), at most 5 min,
    so that a short run shows its progress and a sample before it ends."""
    return min(300.0, max(30.0, config.time_budget / 4)) if config.time_budget else 300.0


def evaluation_due(step: int, eval_every: int, steps_per_epoch: int) -> bool:
    """Whether to evaluate after `step`: every eval_every steps and at least once a pass over the
    training text; a pass shorter than eval_every is also evaluated at its quarter and half, the first
    time. A tiny corpus is overfit within a few passes, and best.pt can only keep what was evaluated."""
    early = step < steps_per_epoch < eval_every and step in (steps_per_epoch // 4, steps_per_epoch // 2)
    return step % min(eval_every, steps_per_epoch) == 0 or early


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


class Clock:
    """The run's wall time (the budget counts evaluations too) and the speed of training alone."""

    def __init__(self, elapsed: float = 0.0):
        self.elapsed = elapsed
        self._last = self._window_start = time.perf_counter()
        self._window_chars = 0

    def tick(self) -> None:
        now = time.perf_counter()
        self.elapsed += now - self._last
        self._last = now

    def step(self, chars: int) -> None:
        self.tick()
        self._window_chars += chars

    def chars_per_sec(self) -> float:
        return self._window_chars / max(1e-9, self._last - self._window_start)

    def new_window(self) -> None:
        """Start measuring speed afresh (after an evaluation, which is not training)."""
        self.tick()
        self._window_start, self._window_chars = self._last, 0


def format_seconds(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


class Trainer:
    """The loop and the run's state, so that saving and resuming see one consistent picture."""

    def __init__(self, config: TrainConfig, model: CharRNN, optimizer: torch.optim.Optimizer, batches,
                 val_tokens: np.ndarray, vocab: Vocab, run: RunDir, *, device: torch.device | str = "cpu",
                 amp: torch.dtype | None = None, world: distributed.World = distributed.World(),
                 checkpoint_info: dict | None = None):
        self.config, self.model, self.optimizer, self.batches = config, model, optimizer, batches
        self.val_tokens, self.vocab, self.run_dir = val_tokens, vocab, run
        self.device, self.amp, self.world = torch.device(device), amp, world
        self.checkpoint_info = checkpoint_info or {}  # corpus, lineage: saved in every checkpoint
        self.step, self.elapsed, self.best_val = 0, 0.0, math.inf
        self.state = None
        self.chars_last_step = 0
        self.logs: dict[str, list[dict]] = {"metrics.jsonl": [], "samples.jsonl": []}
        self.callbacks: list[Callable[[Trainer], None]] = []  # called after every step
        distributed.same_weights(world, model)
        # the moving average of the weights (--ema-decay): evaluated, sampled and saved as the model
        self.averaged = copy.deepcopy(model).eval().requires_grad_(False) if config.ema_decay else None

    # -- stopping and schedule ------------------------------------------------------------------
    def progress(self) -> float:
        """Fraction of the run done by the first stopping rule to be reached (0 if none is known)."""
        c = self.config
        fractions = [self.step / c.max_steps if c.max_steps else 0.0,
                     self.elapsed / c.time_budget if c.time_budget else 0.0,
                     self.step / (c.max_epochs * self.batches.steps_per_epoch) if c.max_epochs else 0.0]
        return max(fractions)

    def finished(self) -> bool:
        return self.progress() >= 1.0

    # -- one step -------------------------------------------------------------------------------
    def train_step(self) -> float:
        x, y, new_stream, labels = next(self.batches)
        if new_stream:
            self.state = None  # a new pass over the text, or new items: nothing to remember
        if self.device.type == "cuda":  # pinned pages let the copy overlap with the GPU's work
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        labels = None if labels is None else labels.to(self.device)
        lr = learning_rate(self.config, self.step, self.progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            log_probs, state = self.model(x, self.state, labels)
        loss = F.nll_loss(log_probs.flatten(0, 1), y.flatten())  # the padding after items is ignored
        # characters trained on, padding not counted (every rank's, as if they had as many as this one)
        self.chars_last_step = int((y != IGNORE).sum()) * self.world.size
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.world, self.model.parameters())
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        if self.averaged is not None:
            with torch.no_grad():  # averaged <- averaged + (1 - decay) (model - averaged)
                torch._foreach_lerp_(list(self.averaged.parameters()), list(self.model.parameters()),
                                     1 - ema_decay(self.config, self.step))
        # Keep the state's values for the next window but not its graph: backprop is truncated here.
        self.state = detach_state(state)
        self.step += 1
        return loss.item()

    @property
    def final_model(self) -> CharRNN:
        """The model a run produces: the averaged weights with --ema-decay, else the trained ones."""
        return self.model if self.averaged is None else self.averaged

    # -- saving and restoring -------------------------------------------------------------------
    def payload(self) -> dict:
        """The checkpoint. Its "model" is the final model, which every reader loads; with averaged
        weights, the trained ones, which the optimizer's state belongs to, are kept as "raw_model"."""
        raw = {} if self.averaged is None else {"raw_model": self.model.state_dict()}
        return {
            **self.checkpoint_info,
            "vocab": self.vocab.to_list(),
            "model_config": asdict(self.model.config),
            "model": self.final_model.state_dict(),
            **raw,
            "optimizer": self.optimizer.state_dict(),
            "train_config": asdict(self.config),
            "progress": {"step": self.step, "epoch": self.batches.epoch, "elapsed": self.elapsed,
                         "best_val_loss": self.best_val},
            "data": self.batches.state_dict(),
            "hidden": [distributed.gather_rows(self.world, t) for t in state_to_list(self.state)],
            "rng": rng.capture(),
            "metrics": self.logs["metrics.jsonl"],
            "samples": self.logs["samples.jsonl"],
        }

    def restore(self, ckpt: dict) -> None:
        """Continue from a checkpoint this trainer's config and corpus match (launch.py checks)."""
        if self.averaged is None:
            self.model.load_state_dict(ckpt["model"])
        else:
            self.model.load_state_dict(ckpt["raw_model"])
            self.averaged.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        progress = ckpt["progress"]
        self.step, self.elapsed, self.best_val = progress["step"], progress["elapsed"], progress["best_val_loss"]
        self.batches.load_state_dict(ckpt["data"])
        self.state = self._my_rows(state_from_list(ckpt["hidden"], self.device))
        self.logs = {"metrics.jsonl": list(ckpt["metrics"]), "samples.jsonl": list(ckpt.get("samples", []))}
        rng.restore(ckpt["rng"])
        if self.world.rank:  # the checkpoint holds rank 0's generators; the others start afresh
            torch.manual_seed(self.config.seed + self.world.rank + self.world.size * self.step)

    def _my_rows(self, state):
        """This rank's rows of a saved global-batch state; None if the number of rows has changed."""
        b = self.config.batch_size
        if state is None or state[0].shape[1] != b * self.world.size:
            return None
        return tuple(t[:, self.world.rank * b:(self.world.rank + 1) * b].contiguous() for t in state)

    def save(self, *names: str) -> None:
        """Every rank takes part (the state is gathered); rank 0 writes."""
        self.run_dir.save(self.payload(), *names)

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate_and_save(self, train_loss: float, chars_per_sec: float, quick: bool = False) -> dict:
        """Validate, log, sample and save. A `quick` evaluation (one of the extra ones a short pass
        gets) only writes best.pt when it improves: on a tiny corpus there is one every few steps."""
        val = evaluate(self.final_model, self.val_tokens, self.device, self.amp, world=self.world)
        if not math.isfinite(val):  # the last update broke the weights: keep the checkpoints as they are
            raise CharRNNError(f"the validation loss became {val} at step {self.step}; the checkpoints in "
                               f"{self.run_dir.path} are kept; lower --learning-rate or --grad-clip")
        row = {"step": self.step, "epoch": round(self.step / self.batches.steps_per_epoch, 4),
               "elapsed": round(self.elapsed, 2), "train_loss": round(train_loss, 5),
               "val_loss": round(val, 5), "val_bpc": round(val / math.log(2), 5),
               "lr": learning_rate(self.config, self.step, self.progress()),
               "chars_per_sec": round(chars_per_sec)}
        self.logs["metrics.jsonl"].append(row)
        if self.config.sample_length and self.world.is_main and not quick:
            self.logs["samples.jsonl"].append({"step": self.step, "val_loss": row["val_loss"],
                                               "prime": self.config.sample_prime, "text": self.sample()})
        improved = val < self.best_val
        self.best_val = min(self.best_val, val)
        names = ["best.pt"] * improved + ["last.pt"] * (not quick)
        if names:
            payload = self.payload()
            self.run_dir.save(payload, *names)
        if not quick:
            self.run_dir.keep_history(payload, self.step, self.config.keep_checkpoints)
            self.run_dir.write_logs(self.logs)
        return row

    def sample(self) -> str:
        """A short sample with a fixed seed; it draws from its own generator, not the run's. For
        items: a few, one per line, each of the first labels in turn."""
        config = SampleConfig(length=self.config.sample_length, temperature=0.8, seed=SAMPLE_SEED)
        model, prime = self.final_model, self.config.sample_prime
        if self.vocab.items:
            names = self.checkpoint_info["items"]["labels"][:SAMPLE_ITEMS]
            each = -(-SAMPLE_ITEMS // max(1, len(names)))
            text = "\n".join(f"{names[label] + ': ' if names else ''}{item}" for label in range(len(names)) or [None]
                             for item in generate_items(model, self.vocab, config, prime, num_samples=each,
                                                        label=label, skip_unknown=True).texts)
        else:
            text = prime + generate(model, self.vocab, config, prime, skip_unknown=True)[0][0]
        self.model.train()  # sampling puts the model it draws from in eval mode
        return text

    # -- the loop -------------------------------------------------------------------------------
    def run(self, progress_bar: bool = True) -> dict:
        """Train until a stopping rule or a signal; returns a summary of the run."""
        main, c = self.world.is_main, self.config
        if self.finished():
            if main:
                print(f"nothing to train: the run already reached its stopping rule at step {self.step} "
                      f"({format_seconds(self.elapsed)}); raise --max-steps, --max-epochs or --time-budget to go on")
            return self.summary(interrupted=False)
        train_loss, stopping = math.nan, False
        clock, last_eval = Clock(self.elapsed), self.elapsed
        bar = tqdm(total=c.max_steps, initial=self.step, unit="step", dynamic_ncols=True, leave=False,
                   disable=not (main and progress_bar and sys.stdout.isatty()))
        say = bar.write if main else (lambda text: None)
        with StopFlag() as stop, bar:
            while True:
                loss = self.train_step()
                clock.step(self.chars_last_step)
                # one small all-reduce per step: every rank stops, and schedules, by rank 0's clock
                bad, stopping, self.elapsed = distributed.agree(
                    self.world, not math.isfinite(loss), stop.signal is not None, clock.elapsed, self.device)
                clock.elapsed = self.elapsed
                if bad:
                    what = loss if not math.isfinite(loss) else "non-finite on another rank"
                    raise CharRNNError(f"the loss became {what} at step {self.step}; the checkpoints in "
                                       f"{self.run_dir.path} are kept; lower --learning-rate or --grad-clip")
                train_loss = loss if math.isnan(train_loss) else 0.95 * train_loss + 0.05 * loss
                cps = clock.chars_per_sec()  # training speed, evaluations excluded
                bar.update(1)
                bar.set_postfix_str(self._postfix(train_loss, cps), refresh=False)
                for callback in self.callbacks:
                    callback(self)
                if self.step % c.log_every == 0:
                    self.logs["metrics.jsonl"].append({"step": self.step, "train_loss": round(train_loss, 5),
                                                       "elapsed": round(self.elapsed, 2)})
                done = self.finished()
                regular = done or self.step % c.eval_every == 0 or self.elapsed - last_eval >= eval_interval(c)
                saved = False
                if regular or evaluation_due(self.step, c.eval_every, self.batches.steps_per_epoch):
                    row = self.evaluate_and_save(train_loss, cps, quick=not regular)
                    saved = regular
                    if regular:
                        say(self._report(row))
                    clock.new_window()
                    _, _, self.elapsed = distributed.agree(self.world, False, False, clock.elapsed, self.device)
                    clock.elapsed = last_eval = self.elapsed
                    done = self.finished()  # the evaluation's time counts towards the budget
                if done or stopping:
                    break
        interrupted = stopping and not done
        if not saved:  # stopped by a signal, or by the time a quick evaluation took: last.pt is behind
            self.save("last.pt")
            self.run_dir.write_logs(self.logs)
        if main and self.run_dir.writes:
            plot_metrics(self.logs["metrics.jsonl"], self.run_dir.path / "loss_curve.png")
        return self.summary(interrupted)

    def summary(self, interrupted: bool) -> dict:
        return {"step": self.step, "best_val_loss": self.best_val, "checkpoint_dir": str(self.run_dir.path),
                "interrupted": interrupted, "is_main": self.world.is_main}

    def _postfix(self, train_loss: float, cps: float) -> str:
        val = f"{self.best_val:.3f}" if math.isfinite(self.best_val) else "-"
        text = f"loss {train_loss:.3f} best val {val} {cps:,.0f} char/s"
        if self.config.time_budget and not self.config.max_steps:
            text += f" left {format_seconds(self.config.time_budget - self.elapsed)}"
        return text

    def _report(self, row: dict) -> str:
        line = (f"step {row['step']:>6} | epoch {row['epoch']:.2f} | train {row['train_loss']:.4f} | "
                f"val {row['val_loss']:.4f} nats/char ({row['val_bpc']:.3f} bits) | "
                f"{row['chars_per_sec']:,} chars/s | {format_seconds(row['elapsed'])}")
        samples = self.logs["samples.jsonl"]
        if samples and samples[-1]["step"] == row["step"]:
            line += "\n" + "\n".join("    " + text for text in samples[-1]["text"].splitlines()[:8])
        return line
