"""Fault injection: SIGKILL `train.py` at random instants and check that nothing saved is ever lost.

    python bench/kill_loop.py                  # 20 kills, a few minutes on 2 cores
    python bench/kill_loop.py --kills 50 --seed 3 --eval-every 3

A tiny LSTM trains on a small generated text in a temporary folder, saving every `--eval-every`
steps. Each round starts `train.py` (fresh the first time, `--resume DIR` once a last.pt exists)
and kills it with SIGKILL at a random instant, chosen by one of three modes:

    startup     a random delay after the process starts (imports, corpus, model, or training)
    after-save  a random delay after a new last.pt appears: inside steps, evaluations, and the
                writes of best.pt, last.pt and metrics.jsonl
    mid-write   once a last.pt exists, 0-2 ms after a checkpoint's temporary file appears, or
                the moment it holds bytes: during torch.save or fsync

The table's "torn write" column says whether a kill left a checkpoint's temporary file unfinished
(in any mode), and how many bytes of it had been written.

After every kill, last.pt and best.pt (where present) must load with charrnn.checkpoint.load and
build with checkpoint.build_model; the step in last.pt must never go backwards, must be at least
the step the trainer last reported saved before the kill, and the steps lost (the steps the killed
process had finished minus the step in last.pt) must be at most eval_every. The next round must
resume at exactly that step. At the end, the run is resumed to a final step and compared, tensor
for tensor, with an uninterrupted run to the same step (the learning rate is held constant, so
changing --max-steps on resume does not change the schedule).

To know how many steps a killed process had finished, the trainer runs as
`python bench/kill_loop.py --child PROBE -- ARGS`: train.py's own flags (ARGS), trained by the
library with one per-step callback that appends the step to PROBE. The final resume and the
reference run are plain `python train.py`.

Prints a table, a summary and one final JSON line; exits 1 on any failure.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common import make_text

REPO = Path(__file__).resolve().parent.parent
MODES = ("startup", "after-save", "mid-write")
# Tiny and fast; --min-lr-frac 1 holds the learning rate constant after warm-up, so the final
# resume may change --max-steps without changing the trajectory (see the exact check).
TRAIN_FLAGS = ["--model", "lstm", "--rnn-size", "16", "--num-layers", "1", "--embedding-size", "8",
               "--seq-length", "16", "--batch-size", "4", "--learning-rate", "0.01", "--warmup-steps", "5",
               "--min-lr-frac", "1", "--val-frac", "0.1", "--seed", "7", "--threads", "1", "--device", "cpu"]
MAX_STEPS = 10**6  # never reached during the kills
WAIT_LIMIT = 60.0  # seconds to wait for any one event before calling it a failure


class Failure(Exception):
    """One check that did not hold; the loop records it and carries on where it can."""


# -- setting up ----------------------------------------------------------------------------------
def make_corpus(path: Path, n_chars: int = 20_000) -> Path:
    """A deterministic English-like text: several epochs fit in a run, so epoch ends are crossed."""
    path.write_text(make_text(n_chars), encoding="utf-8")
    return path


@dataclass
class Setup:
    workdir: Path
    corpus: Path
    ckpt_dir: Path
    eval_every: int
    env: dict

    @classmethod
    def create(cls, workdir: Path, eval_every: int) -> Setup:
        workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, CHARRNN_CACHE_DIR=str(workdir / "cache"), PYTHONUNBUFFERED="1",
                   OMP_NUM_THREADS="1")
        return cls(workdir, make_corpus(workdir / "corpus.txt"), workdir / "run", eval_every, env)

    def fresh_args(self, max_steps: int = MAX_STEPS, ckpt_dir: Path | None = None) -> list[str]:
        return ["--corpus", str(self.corpus), *TRAIN_FLAGS, "--eval-every", str(self.eval_every),
                "--max-steps", str(max_steps), "--checkpoint-dir", str(ckpt_dir or self.ckpt_dir)]

    def resume_args(self, max_steps: int | None = None) -> list[str]:
        extra = ["--max-steps", str(max_steps)] if max_steps else []
        return ["--resume", str(self.ckpt_dir), *extra]


def child_command(probe: Path, train_args: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", str(probe), "--", *train_args]


def child_main(probe: str, train_args: list[str]) -> None:
    """Train as train.py would from `train_args`, appending the step to `probe` after every step."""
    sys.path.insert(0, str(REPO))
    import train as cli
    from charrnn import flags, launch
    from charrnn.config import TrainConfig

    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    options = flags.given(cli.build_parser().parse_args(train_args))
    resume = options.pop("resume", None)

    def after_step(trainer) -> None:
        os.write(fd, f"{trainer.step}\n".encode())  # one small append: the step is finished

    def run() -> int:
        launch.train(TrainConfig.from_options(**options), resume=resume, overrides=options, callbacks=[after_step])
        return 0

    flags.run_main(run)


# -- watching a run ------------------------------------------------------------------------------
def file_signature(path: Path) -> tuple[int, int] | None:
    """(inode, mtime): changes whenever a checkpoint is replaced by a rename."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def temp_files(directory: Path) -> set[str]:
    """Unfinished checkpoint writes: charrnn.files.atomic_write's temporaries of best.pt and last.pt."""
    from charrnn.files import temporaries
    return {p.name for p in temporaries(directory) if p.name.startswith((".last.pt.", ".best.pt."))}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def probe_step(probe: Path) -> int | None:
    """The last step the killed process finished, or None if it finished none."""
    try:
        lines = probe.read_text().split("\n")
    except FileNotFoundError:
        return None
    complete = [line for line in lines[:-1] if line.strip()]  # a torn last line is not yet written
    return int(complete[-1]) if complete else None


def reported_steps(stdout: str) -> tuple[int | None, int | None]:
    """(step resumed from, last step the trainer reported evaluated and saved) from its output."""
    resumed = re.search(r"^resuming .* at step (\d+)", stdout, re.M)
    saved = re.findall(r"^step\s+(\d+) \|", stdout, re.M)
    return (int(resumed.group(1)) if resumed else None), (int(saved[-1]) if saved else None)


def verify_checkpoint(path: Path) -> int:
    """Load and build a checkpoint, run the model on a few characters; returns its step."""
    import torch

    from charrnn import checkpoint
    from charrnn.errors import CharRNNError
    try:
        ckpt = checkpoint.load(path)
        model, vocab = checkpoint.build_model(ckpt)
    except CharRNNError as e:
        raise Failure(f"{path.name} does not load: {e}") from None
    with torch.no_grad():
        log_probs, _ = model(torch.zeros(1, 4, dtype=torch.long))
    if not torch.isfinite(log_probs).all():
        raise Failure(f"{path.name} gives non-finite log-probabilities")
    step = ckpt["progress"]["step"]
    if not isinstance(step, int) or step < 0:
        raise Failure(f"{path.name} holds step {step!r}")
    return step


def wait_for(condition, proc: subprocess.Popen, what: str, poll: float) -> None:
    """Poll until condition() holds; the process leaving first, or a minute passing, is a failure."""
    deadline = time.monotonic() + WAIT_LIMIT
    while not condition():
        if proc.poll() is not None:
            raise Failure(f"train.py exited by itself (rc {proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise Failure(f"no {what} within {WAIT_LIMIT:.0f}s")
        time.sleep(poll)


def sleep_alive(proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failure(f"train.py exited by itself (rc {proc.returncode}) before the kill")
        time.sleep(min(0.002, max(0.0, deadline - time.monotonic())))


# -- one kill ------------------------------------------------------------------------------------
@dataclass
class Kill:
    n: int
    mode: str
    start: str = "fresh"                # "fresh" or "resume@STEP"
    delay: float = 0.0                  # seconds from the trigger (start, save, temp file) to the kill
    pre_step: int | None = None         # step in last.pt just before the kill (read, or as reported)
    real_step: int | None = None        # steps the killed process had finished
    saved_step: int | None = None       # step in last.pt after the kill
    best_step: int | None = None
    lost: int | None = None
    mid_write: bool = False             # a new checkpoint temp file was still there after the kill
    torn_bytes: int = 0                 # bytes in that unfinished temp file
    stale_temp: int = 0                 # temp files left in the directory after this kill
    verified: int = 0                   # checkpoints that loaded and built
    failures: list[str] = field(default_factory=list)


@dataclass
class Loop:
    setup: Setup
    rng: random.Random
    startup: float = 3.0                # seconds from a start to its first save; measured on the way
    last_saved: int | None = None       # step in last.pt after the previous kill
    _stale: set = field(default_factory=set)  # temp files already there when this round began

    def run_one(self, n: int, mode: str) -> Kill:
        s = self.setup
        last = s.ckpt_dir / "last.pt"
        had_last = last.is_file()
        kill = Kill(n, mode, start=f"resume@{self.last_saved}" if had_last else "fresh")
        probe = s.workdir / f"probe{n}.txt"
        out, err = s.workdir / f"out{n}.txt", s.workdir / f"err{n}.txt"
        args = s.resume_args() if had_last else s.fresh_args()
        with open(out, "wb") as fo, open(err, "wb") as fe:
            started = time.monotonic()
            proc = subprocess.Popen(child_command(probe, args), cwd=REPO, env=s.env, stdout=fo, stderr=fe,
                                    stdin=subprocess.DEVNULL)
            try:
                kill.delay, kill.pre_step = self._trigger(proc, mode, last, started)
                if mode != "startup" and probe_step(probe) is not None:
                    self.startup = 0.5 * self.startup + 0.5 * (time.monotonic() - started)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                torn = temp_files(s.ckpt_dir) - self._stale
                kill.mid_write = bool(torn)  # in any mode: after-save kills land in writes too
                kill.torn_bytes = sum((s.ckpt_dir / name).stat().st_size for name in torn)
            except Failure as e:
                kill.failures.append(str(e))
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
        if proc.returncode != -signal.SIGKILL:
            tail = " | ".join(stderr.strip().splitlines()[-3:])
            kill.failures.append(f"train.py ended with rc {proc.returncode}, not by the kill: {tail}")
        elif "Traceback" in stderr:
            kill.failures.append("a traceback on stderr before the kill: " + stderr.strip().splitlines()[-1])
        self._check(kill, had_last, probe, stdout)
        return kill

    def _trigger(self, proc, mode: str, last: Path, started: float) -> tuple[float, int | None]:
        """Wait for this mode's instant; returns (delay, step in last.pt just before the kill)."""
        self._stale = temp_files(self.setup.ckpt_dir)
        if mode == "startup":
            delay = self.rng.uniform(0, self.startup + 1.0)
            sleep_alive(proc, delay - (time.monotonic() - started))
            return delay, self._read_last(last)
        if mode == "after-save":
            before = file_signature(last)
            wait_for(lambda: file_signature(last) not in (None, before), proc, "new last.pt", 0.002)
            delay = self.rng.uniform(0, 0.25)
            sleep_alive(proc, delay)
            return delay, self._read_last(last)
        # mid-write: this tiny checkpoint's save takes about 4 ms: 1.5 ms of pickling into memory
        # (the temporary file is empty), 0.3 ms of writes, then fsync and rename. Half the time,
        # kill 0-2 ms after the temporary file appears; otherwise as soon as it holds bytes.
        d = self.setup.ckpt_dir
        wait_for(lambda: last.is_file(), proc, "a first last.pt", 0.002)  # so every mode but startup
        self._stale = temp_files(d)                                        # leaves a last.pt to check
        if self.rng.random() < 0.5:
            wait_for(lambda: bool(temp_files(d) - self._stale), proc, "checkpoint write", 0.0002)
            delay = self.rng.uniform(0, 0.002)
        else:
            wait_for(lambda: any(_size(d / name) for name in temp_files(d) - self._stale), proc,
                     "checkpoint bytes", 0.0001)
            delay = 0.0
        sleep_alive(proc, delay)
        return delay, None  # reading last.pt now would let the write finish; use the reported step

    @staticmethod
    def _read_last(last: Path) -> int | None:
        from charrnn import checkpoint
        from charrnn.errors import CharRNNError
        try:
            return checkpoint.load(last)["progress"]["step"] if last.is_file() else None
        except CharRNNError as e:  # the process is alive and saves by rename: this must never happen
            raise Failure(f"last.pt unreadable while training ran: {e}") from None

    def _check(self, kill: Kill, had_last: bool, probe: Path, stdout: str) -> None:
        s = self.setup
        resumed, reported = reported_steps(stdout)
        if had_last and resumed is not None and resumed != self.last_saved:
            kill.failures.append(f"resumed at step {resumed}, but last.pt held step {self.last_saved}")
        start_step = self.last_saved if had_last else 0
        kill.pre_step = max((x for x in (kill.pre_step, reported, start_step if had_last else None)
                             if x is not None), default=None)
        real = probe_step(probe)
        kill.real_step = real if real is not None else start_step
        for name in ("last.pt", "best.pt"):
            path = s.ckpt_dir / name
            if not path.is_file():
                continue
            try:
                step = verify_checkpoint(path)
            except Failure as e:
                kill.failures.append(str(e))
                continue
            kill.verified += 1
            if name == "last.pt":
                kill.saved_step = step
            else:
                kill.best_step = step
        if had_last and kill.saved_step is None and not any("last.pt" in f for f in kill.failures):
            kill.failures.append("last.pt existed before the kill and is gone after it")
        saved = kill.saved_step if kill.saved_step is not None else 0
        if self.last_saved is not None and saved < self.last_saved:
            kill.failures.append(f"last.pt went backwards: step {saved} after {self.last_saved}")
        if kill.pre_step is not None and saved < kill.pre_step:
            kill.failures.append(f"last.pt holds step {saved} after the kill, {kill.pre_step} before it")
        kill.lost = kill.real_step - saved
        if not 0 <= kill.lost <= s.eval_every:
            kill.failures.append(f"{kill.lost} steps lost (finished {kill.real_step}, saved {saved}); "
                                 f"at most --eval-every {s.eval_every} may be")
        kill.stale_temp = len(temp_files(s.ckpt_dir))
        if kill.saved_step is not None:
            self.last_saved = kill.saved_step


# -- the end: resume once more, and compare with a run never interrupted -------------------------
def exact_check(setup: Setup, final_step: int) -> list[str]:
    """Resume to final_step with plain train.py, then compare with an uninterrupted run."""
    import torch

    from charrnn import checkpoint
    failures = []
    runs = {"resumed": setup.resume_args(final_step),
            "uninterrupted": setup.fresh_args(final_step, setup.workdir / "reference")}
    for name, args in runs.items():
        result = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=setup.env,
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
        if result.returncode != 0 or "Traceback" in result.stderr:
            tail = " | ".join(result.stderr.strip().splitlines()[-3:])
            return [f"the {name} run to step {final_step} failed (rc {result.returncode}): {tail}"]
    a = checkpoint.load(setup.ckpt_dir / "last.pt")
    b = checkpoint.load(setup.workdir / "reference" / "last.pt")
    if a["progress"]["step"] != final_step or b["progress"]["step"] != final_step:
        return [f"final steps {a['progress']['step']} and {b['progress']['step']}, expected {final_step}"]
    for key in ("model", "optimizer", "hidden", "data", "rng"):
        if not _same(a[key], b[key], torch):
            failures.append(f"after the kills, {key} differs from an uninterrupted run at step {final_step}")
    rows_a = [(m["step"], m["val_loss"]) for m in a["metrics"]]
    rows_b = [(m["step"], m["val_loss"]) for m in b["metrics"]]
    if rows_a != rows_b:
        failures.append("the metrics (step, val_loss) differ from an uninterrupted run's: evaluations "
                        "were lost, repeated or changed")
    return failures


def _same(a, b, torch) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], torch) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, torch) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# -- the loop ------------------------------------------------------------------------------------
def run_loop(kills: int = 20, seed: int = 0, workdir: Path | None = None, eval_every: int = 5,
             modes: tuple[str, ...] = MODES, exact: bool = True, log=None) -> dict:
    """Kill `kills` times; returns the summary (with every kill's record and every failure)."""
    started = time.monotonic()
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="kill_loop.")) if own_dir else Path(workdir)
    try:
        setup = Setup.create(workdir, eval_every)
        rng = random.Random(seed)
        order = [modes[i % len(modes)] for i in range(kills)]
        rng.shuffle(order)
        loop = Loop(setup, rng)
        records = []
        for n, mode in enumerate(order, 1):
            records.append(loop.run_one(n, mode))
            if log:
                log(format_row(records[-1]))
        failures = [f"kill {k.n} ({k.mode}): {f}" for k in records for f in k.failures]
        final = None
        if exact and not failures:
            final = (loop.last_saved or 0) + 2 * eval_every
            failures += [f"exact check: {f}" for f in exact_check(setup, final)]
        stale = sorted(temp_files(setup.ckpt_dir))
        stale_bytes = sum((setup.ckpt_dir / name).stat().st_size for name in stale)
        return {
            "kills": len(records), "seed": seed, "eval_every": eval_every,
            "checkpoints_verified": sum(k.verified for k in records),
            "max_steps_lost": max((k.lost for k in records if k.lost is not None), default=0),
            "killed_mid_write": sum(k.mid_write for k in records),
            "resumes": sum(k.start != "fresh" for k in records),
            "final_step": loop.last_saved,
            "exact_resume_step": final if exact else None,
            "stale_temp_files": len(stale), "stale_temp_bytes": stale_bytes,
            "failures": failures, "ok": not failures,
            "seconds": round(time.monotonic() - started, 1),
            "records": [asdict(k) for k in records],
        }
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


HEADER = (f"{'kill':>4}  {'mode':<10}  {'start':<11} {'delay':>7}  {'before':>6}  {'real':>5}  "
          f"{'saved':>5}  {'lost':>4}  {'best':>5}  {'torn write':<14}  {'tmp':>3}  result")


def format_row(k: Kill) -> str:
    def num(x):
        return "-" if x is None else str(x)
    return (f"{k.n:>4}  {k.mode:<10}  {k.start:<11} {k.delay:>6.3f}s  {num(k.pre_step):>6}  "
            f"{num(k.real_step):>5}  {num(k.saved_step):>5}  {num(k.lost):>4}  {num(k.best_step):>5}  "
            f"{f'yes ({k.torn_bytes:,} B)' if k.mid_write else 'no':<14}  {k.stale_temp:>3}  "
            f"{'ok' if not k.failures else 'FAIL: ' + '; '.join(k.failures)}")


def print_summary(s: dict) -> None:
    exact = ("skipped" if s["exact_resume_step"] is None else
             f"resumed to step {s['exact_resume_step']}: "
             + ("identical to an uninterrupted run (weights, optimizer, state, RNG, metrics)"
                if not any(f.startswith("exact") for f in s["failures"]) else "DIFFERS"))
    rows = [("kills", s["kills"]), ("resumes", s["resumes"]),
            ("checkpoints verified", f"{s['checkpoints_verified']} (load + build_model + forward)"),
            ("max steps lost", f"{s['max_steps_lost']} (bound: eval_every {s['eval_every']})"),
            ("killed mid-write", f"{s['killed_mid_write']} (a temporary checkpoint file left unfinished)"),
            ("stale temp files", f"{s['stale_temp_files']} ({s['stale_temp_bytes']:,} bytes)"),
            ("exact resume", exact),
            ("failures", len(s["failures"]) or "none"),
            ("wall time", f"{s['seconds']} s")]
    print()
    for name, value in rows:
        print(f"{name:<22}{value}")
    for f in s["failures"]:
        print(f"FAILURE: {f}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # the trainer, as started by the loop (see the module docstring)
        child_main(argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs to send (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed for the modes and instants (default 0)")
    p.add_argument("--eval-every", type=int, default=5, help="train.py --eval-every (default 5)")
    p.add_argument("--no-exact", action="store_true", help="skip the comparison with an uninterrupted run")
    p.add_argument("--workdir", type=Path, help="keep everything here instead of a temporary folder")
    args = p.parse_args(argv)
    if args.kills < 1 or args.eval_every < 1:
        p.error("--kills and --eval-every must be >= 1")
    print(HEADER, flush=True)
    summary = run_loop(args.kills, args.seed, args.workdir, args.eval_every, exact=not args.no_exact,
                       log=lambda row: print(row, flush=True))
    print_summary(summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "records"}))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
