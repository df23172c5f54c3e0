"""Continuous batching for the server: every request in flight moves on one character per step.

One worker thread owns the numpy streams. A request joins at the next character and leaves when
it is done; between steps the thread takes in new requests and drops finished ones.

    step t:    A A A A B B C        rows of one NumpyStep stream (A asked for 4 samples)
    step t+1:  A A A A C D          B finished, D joined: the stream is rebuilt from its state

How a seed stays exact. `charrnn.load(p).generate(prime, seed=s)` primes with the torch forward,
then draws each character with `sample.draw` from its own `np.random.default_rng(s)` on the logits
of a stream of its own rows. Here each request keeps its own Generator and draws on its own rows
only, with the same calls, so it consumes the same random numbers whatever runs beside it; its
prime is the same torch forward, alone. What can differ is the logits: BLAS rounds a 32-row
product differently in the last bits from a 1-row one (and from 4 rows up an LSTM's or GRU's
stream multiplies W x, not x W). A draw can change only where two characters' scores lie within
that rounding of each other (bench/RESULTS.md counts how often that was seen).
`exact=True` removes even that: each request gets a stream of its own rows, so every operation is
the one `generate` makes, bit for bit, at about one stream's speed in total.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from charrnn.config import SampleConfig
from charrnn.device import ThreadGovernor
from charrnn.model import NumpyStep, NumpyState, state_to_list
from charrnn.sample import END, draw, seen_prime, start_indices

if TYPE_CHECKING:
    from charrnn.api import Model

EVENT_INTERVAL = 0.05   # seconds between a stream's events after the first, which goes at once
NOISE_BLOCK = 64         # steps of Gumbel noise a one-sample job draws at a time
PRIMES_KEPT = 256        # prime forward passes kept: many clients start from the same prime,
PRIME_KEPT_CHARS = 1000  # and one no longer than this takes little memory


class Job:
    """One request's samples: how to draw them, what was drawn, and where the news goes.

    `emit(new, final)` is called from the worker thread with each sample's characters since the
    last call; `final` is True once, at the end. `cancelled` is set when the client leaves.
    """

    def __init__(self, config: SampleConfig, prime: str, num_samples: int,
                 emit: Callable[[list[str], bool], None], stream: bool = False, skip_unknown: bool = False,
                 label: int | None = None, num_labels: int = 0):
        self.config, self.prime, self.num_samples = config, prime, num_samples
        self.emit, self.stream, self.skip_unknown = emit, stream, skip_unknown
        self.generator = np.random.default_rng(config.seed)
        # a model with labels: each sample's, or a random one each, drawn first as generate_items draws them
        self.labels = (None if not num_labels else np.full(num_samples, label) if label is not None
                       else self.generator.integers(num_labels, size=num_samples))
        self.texts: list[list[str]] = [[] for _ in range(num_samples)]
        self.done = [False] * num_samples
        self.chars: list[str] = []  # the vocabulary, set by begin
        self.items = False          # whether a sample can end at an item's end, set by begin
        self.tails = [""] * num_samples
        self.steps, self.sent, self.sent_at, self.cancelled, self.finished = 0, 0, 0.0, False, False
        self._noise, self._noise_at = np.zeros((0, 0)), 0
        self.error: str | None = None  # why the sampler could not finish this job

    def begin(self, chars: list[str], shown_prime: str) -> None:
        """Set the vocabulary, and where a stop string may begin: in the prime, as the model reads it."""
        self.chars, stop = chars, self.config.stop or ""
        self.items = END in chars
        self.tails = [shown_prime[-(len(stop) - 1):] if len(stop) > 1 else ""] * self.num_samples

    @property
    def gumbel(self) -> bool:
        """Whether each draw is sample.draw's Gumbel-max over one row: one sample, a temperature,
        no top-k or top-p. Such jobs draw their noise in blocks and are picked together (Lane)."""
        c = self.config
        return self.num_samples == 1 and c.temperature > 0 and c.top_k is None and c.top_p is None

    @property
    def counted(self) -> bool:
        """A Gumbel job that ends only at its length (no stop string, no items): its steps need no
        look one by one, so Lane records them in bulk."""
        return self.gumbel and not self.config.stop and not self.items

    def noise_block(self, vocab_size: int) -> np.ndarray:
        """The next NOISE_BLOCK steps' Gumbel noise (NOISE_BLOCK, V): numpy's Generator gives a
        (K, V) block the same numbers, in the same order, as K draws of V."""
        return self.generator.gumbel(0.0, self.config.temperature, (NOISE_BLOCK, vocab_size))

    def noise(self, vocab_size: int) -> np.ndarray:
        """The next step's Gumbel noise (V,), from the current block."""
        if self._noise_at == len(self._noise):
            self._noise, self._noise_at = self.noise_block(vocab_size), 0
        self._noise_at += 1
        return self._noise[self._noise_at - 1]

    def next(self, logits: np.ndarray) -> np.ndarray:
        """Draw the next character of each sample from logits (rows, V); returns their indices."""
        if self.gumbel:  # sample.draw's one-row case, from the noise blocks
            drawn = (logits[0] + self.noise(logits.shape[1])).argmax(keepdims=True)
        else:
            drawn = draw(logits, self.config, self.generator)
        self.take([self.chars[c] for c in drawn.tolist()])
        return drawn

    def take(self, chars: list[str]) -> None:
        """Record one step's characters. The one place that decides a sample is finished: by its
        stop string, or at the end of an item."""
        stop = self.config.stop
        for i, char in enumerate(chars):
            if self.done[i]:
                continue
            if char == END:
                self.done[i] = True
                continue
            self.texts[i].append(char)
            if stop:  # the last len(stop) characters, prime included
                self.tails[i] = (self.tails[i] + char)[-len(stop):]
                self.done[i] = self.tails[i] == stop
        self.steps += 1
        self.report()

    def extend(self, picks: np.ndarray, report: bool = True) -> None:
        """Record several steps' characters of a counted job at once (Lane's bulk path)."""
        self.texts[0].extend(map(self.chars.__getitem__, picks.tolist()))
        self.steps += len(picks)
        if report:
            self.report()

    def report(self) -> None:
        """Decide whether the job is finished, and send the news when it is or an event is due."""
        self.finished = self.steps >= self.config.length or all(self.done)
        now = time.perf_counter() if self.stream else 0.0
        if self.finished or (self.stream and (self.sent == 0 or now - self.sent_at >= EVENT_INTERVAL)):
            self.emit(["".join(t[self.sent:]) for t in self.texts], self.finished)
            self.sent, self.sent_at = self.steps, now

    def fail(self, error: str) -> None:
        self.error, self.finished = error, True
        self.emit([""] * self.num_samples, True)

    @property
    def active(self) -> bool:
        return not (self.finished or self.cancelled)


@dataclass
class Member:
    """A job in a lane: its state, each (L, rows, H), and the characters drawn last, not yet read."""
    job: Job
    state: NumpyState
    drawn: np.ndarray


class Lane:
    """Jobs sharing one NumpyStep stream, their rows one after another.

    Most requests are one sample at a temperature (Job.gumbel). Their draws are made together, one
    argmax over their rows, each row with its own job's noise; those that end only at their length
    (Job.counted) are recorded as a (steps, jobs) array, read out only when a job has news to send.
    Every other job draws and takes its characters itself.
    """

    HISTORY = 256  # steps recorded before the counted jobs are caught up

    def __init__(self, step: NumpyStep, members: list[Member]):
        self.members, self.jobs = members, [m.job for m in members]
        labels = None if members[0].job.labels is None else np.concatenate([m.job.labels for m in members])
        self.stream = step.stream(tuple(np.concatenate(part, axis=1) for part in zip(*(m.state for m in members))),
                                  labels)
        self.drawn = np.concatenate([m.drawn for m in members])  # (rows,)
        bounds = np.cumsum([0] + [m.job.num_samples for m in members]).tolist()
        self.slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        self.rows, self.ended = bounds[-1], False
        self.others = [(job, rows) for job, rows in zip(self.jobs, self.slices) if not job.gumbel]
        gumbel = [(job, rows.start) for job, rows in zip(self.jobs, self.slices) if job.gumbel]
        self.gumbel = [job for job, _ in gumbel]
        self.gumbel_rows, self.gumbel_index = as_index([row for _, row in gumbel]), np.arange(len(gumbel))
        vocab_size = len(self.jobs[0].chars)
        self.noise = np.zeros((len(gumbel), NOISE_BLOCK, vocab_size))  # each Gumbel job's block, and where it is
        self.noise_at = np.full(len(gumbel), NOISE_BLOCK)
        for g, job in enumerate(self.gumbel):
            if job._noise_at < len(job._noise):
                self.noise[g], self.noise_at[g] = job._noise, job._noise_at
        self.fresh_for = 0  # steps till a block runs out: numpy calls per step cost microseconds
        self.taking = [(job, g) for g, job in enumerate(self.gumbel) if not job.counted]
        self.counted = [job for job in self.gumbel if job.counted]
        self.counted_at = as_index([g for g, job in enumerate(self.gumbel) if job.counted])
        self.history = np.zeros((self.HISTORY, len(self.counted)), np.intp)
        self.recorded, self.read = 0, np.zeros(len(self.counted), np.intp)  # steps recorded; read by each
        self.steps = 0  # since the lane was made; the counted jobs end at these, or send news at these times:
        self.ends = np.array([job.config.length - job.steps for job in self.counted])
        self.due = np.array([job.sent_at + EVENT_INTERVAL if job.stream else np.inf for job in self.counted])
        self.next_end, self.next_due = min(self.ends, default=0), min(self.due, default=0.0)

    def advance(self) -> None:
        """Move the stream on by the characters drawn last, then draw each job's next ones. A
        job that leaves (finished or cancelled) moves on unseen till the rebuild."""
        logits = self.stream(self.drawn)
        if self.gumbel:
            if not self.fresh_for:
                self.refill()
            # the same sums as Job.next's, row by row
            picks = (logits[self.gumbel_rows] + self.noise[self.gumbel_index, self.noise_at]).argmax(1)
            self.noise_at += 1
            self.fresh_for -= 1
            self.drawn[self.gumbel_rows] = picks
            if self.counted:
                self.record(picks[self.counted_at])
            for job, g in self.taking:
                if job.active:
                    job.take([job.chars[picks[g]]])
                    self.ended |= job.finished
        for job, rows in self.others:
            if job.active:
                self.drawn[rows] = job.next(logits[rows])
                self.ended |= job.finished

    def refill(self) -> None:
        """A new noise block for each Gumbel job that has used its own up, as Job.noise draws it."""
        for g in np.flatnonzero(self.noise_at == NOISE_BLOCK).tolist():
            self.noise[g], self.noise_at[g] = self.gumbel[g].noise_block(self.noise.shape[2]), 0
        self.fresh_for = NOISE_BLOCK - int(self.noise_at.max())

    def record(self, picks: np.ndarray) -> None:
        """The counted jobs' characters of this step; a job reads them out when it has news."""
        self.history[self.recorded] = picks
        self.recorded += 1
        self.steps += 1
        now = time.perf_counter()
        if self.steps >= self.next_end or now >= self.next_due:
            self.report(now)
        if self.recorded == self.HISTORY:
            self.catch_up()

    def report(self, now: float) -> None:
        """Each counted job that has ended or has an event due reads out its steps and sends them."""
        for k in np.flatnonzero((self.ends <= self.steps) | (self.due <= now)).tolist():
            job = self.counted[k]
            if job.active:
                job.extend(self.history[self.read[k]:self.recorded, k])
                self.ended |= job.finished
            self.read[k] = self.recorded
            if job.active:
                self.due[k] = job.sent_at + EVENT_INTERVAL if job.stream else np.inf
            else:  # gone: the rebuild drops it
                self.ends[k], self.due[k] = np.iinfo(self.ends.dtype).max, np.inf
        self.next_end, self.next_due = self.ends.min(), self.due.min()

    def catch_up(self) -> None:
        """Give every counted job the steps it has not read, without news, and empty the record."""
        for k, job in enumerate(self.counted):
            job.extend(self.history[self.read[k]:self.recorded, k], report=False)
        self.recorded, self.read[:] = 0, 0

    def remaining(self) -> list[Member]:
        """The jobs still running, each with its state, noise and last characters (copies)."""
        self.catch_up()
        for g, job in enumerate(self.gumbel):
            job._noise, job._noise_at = self.noise[g].copy(), int(self.noise_at[g])
        state = self.stream.state()
        return [Member(m.job, tuple(s[:, rows] for s in state), self.drawn[rows].copy())
                for m, rows in zip(self.members, self.slices) if m.job.active]


def as_index(positions: list[int]) -> slice | np.ndarray:
    """Positions as an index: a slice where they are 0, 1, 2, ... (a view, cheaper to read)."""
    return slice(0, len(positions)) if positions == list(range(len(positions))) else np.array(positions, np.intp)


class Batcher:
    """Steps every submitted Job in one worker thread until it is finished or cancelled."""

    def __init__(self, model: Model, exact: bool = False):
        self.net, self.vocab, self.exact = model.net, model.vocab, exact
        self.step = NumpyStep(model.net)
        self.incoming: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.lanes: list[Lane] = []
        self.thread = threading.Thread(target=self._run, name="charrnn-batcher", daemon=True)
        self.error: str | None = None
        self.cancels = False  # whether a job was cancelled since the last look
        self.primed: OrderedDict[tuple, tuple] = OrderedDict()  # (prime, skip, rows) -> (logits, state)

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        if self.error:
            job.fail(self.error)
        else:
            self.incoming.put(job)

    def cancel(self, job: Job) -> None:
        """The client left (or was answered): the job's rows leave the batch at the next step."""
        job.cancelled, self.cancels = True, True

    def stop(self) -> None:
        """End the worker after its current step; jobs still running hear no more."""
        self.incoming.put(None)
        self.thread.join(timeout=5)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # noqa: BLE001  every request in flight hears why, none waits forever
            self.error = f"the sampler failed: {type(e).__name__}: {e}"
            for job in [m.job for lane in self.lanes for m in lane.members] + self._drain():
                job.fail(self.error)
            raise

    def _drain(self) -> list[Job]:
        """The jobs submitted but not yet taken in."""
        jobs = []
        while not self.incoming.empty():
            jobs.append(self.incoming.get())
        return [job for job in jobs if job is not None]

    def _loop(self) -> None:
        # BLAS threads: one for a few rows; for a batch, the cores other processes leave free, as
        # sample_steps does. 32 clients on a quiet machine: 25,200 chars/s with two threads, 19,000
        # with one; beside a busy process 8,700 with two, 21,900 with one (bench/RESULTS.md).
        def blas_threads(n: int) -> None:
            threadpool_limits(limits=n, user_api="blas")

        governor, batch = ThreadGovernor(os.cpu_count() or 1, interval=0.5, apply=blas_threads), False
        with threadpool_limits(limits=1, user_api="blas"):  # restores the process's own on the way out
            while self._admit(block=not self.lanes):
                wide = sum(lane.rows for lane in self.lanes) >= NumpyStep.WIDE_ROWS
                if wide != batch:  # a few rows: one thread; a batch: the governor's last choice
                    batch = wide
                    if wide:  # its first look, soon, covers this batch, not the idle time before
                        governor.restart(look_after=0.1)  # it (when a client may have used the cores)
                    blas_threads(governor.threads if wide else 1)
                if wide:
                    governor()
                for lane in self.lanes:
                    lane.advance()
                if self.cancels or any(lane.ended for lane in self.lanes):
                    self.cancels = False  # before the look: a cancel from now on is seen next step
                    self.lanes = self._leave()

    def _admit(self, block: bool) -> bool:
        """Take in the jobs submitted since the last step (waiting for one when idle); False: stop."""
        joining = []
        while (block and not joining) or not self.incoming.empty():  # one reader: get() will not wait
            job = self.incoming.get()
            if job is None:
                return False
            if job.cancelled:
                continue
            try:
                joining.append(self._prime(job))
            except Exception as e:  # noqa: BLE001  one request's failure (memory, say) is its own
                job.fail(f"the prime failed: {type(e).__name__}: {e}")
        joining = [m for m in joining if m.job.active]
        if joining and self.exact:
            self.lanes += [Lane(self.step, [m]) for m in joining]
        elif joining:
            staying = self.lanes[0].remaining() if self.lanes else []
            self.lanes = [Lane(self.step, staying + joining)]
        return True

    def _prime(self, job: Job) -> Member:
        """The job after its prime (the torch forward, alone, as sample_steps makes it) and its
        first characters, drawn and sent at once rather than after the other joiners' primes."""
        job.begin(self.vocab.chars + [END] * self.vocab.items, seen_prime(self.vocab, job.prime, job.skip_unknown))
        logits, state = self._forward(job)
        return Member(job, state, job.next(logits))

    def _forward(self, job: Job) -> tuple[np.ndarray, NumpyState]:
        """The last logits (rows, V) and state of the prime's forward pass. The same prime and rows
        give the same bits every time, so a kept result is exact; it is never written to."""
        key = (job.prime, job.skip_unknown, job.num_samples, None if job.labels is None else tuple(job.labels))
        if key in self.primed:
            self.primed.move_to_end(key)
            return self.primed[key]
        idx = torch.tensor(start_indices(self.vocab, job.prime, job.skip_unknown))
        self.net.eval()
        with torch.no_grad():
            labels = None if job.labels is None else torch.from_numpy(job.labels)
            log_probs, state = self.net(idx.expand(job.num_samples, -1), None, labels)
        primed = (log_probs[:, -1].cpu().numpy(), tuple(s.float().numpy() for s in state_to_list(state)))
        if len(job.prime) <= PRIME_KEPT_CHARS:
            self.primed[key] = primed
            if len(self.primed) > PRIMES_KEPT:
                self.primed.popitem(last=False)
        return primed

    def _leave(self) -> list[Lane]:
        """Drop finished and cancelled jobs; rebuild a lane only when its set of jobs changed."""
        kept = []
        for lane in self.lanes:
            if all(m.job.active for m in lane.members):
                kept.append(lane)
            elif staying := lane.remaining():
                kept.append(Lane(self.step, staying))
        return kept
