"""Speed on a quiet and on a busy machine: training, evaluation and sampling, by thread setting.

One busy neighbour is `python -c "while True: pass"` at normal priority. For each load (quiet,
loaded) and thread setting (--threads 1, --threads 2, the default) it measures, through the real
command lines of one or two checkouts (--repo, e.g. a `git worktree` of the commit before):

    training     train.py --time-budget S on tinyshakespeare: characters per second of training
    evaluation   generate.py --score on 100,000 characters: characters scored per second
    32 samples   generate.py --num-samples 32: characters per second, all samples together
    one stream   generate.py --length N: characters per second

Sampling and scoring subtract the same command's time with a tiny length (start-up, imports,
checkpoint load), so they time the work alone. Example:

    git worktree add /tmp/before 79e55f0
    python bench/contention.py --repo /tmp/before --repo .
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from common import SHAKESPEARE

SETTINGS = {"1 thread": ["--threads", "1"], "2 threads": ["--threads", "2"], "default": []}


@contextmanager
def load(busy: bool):
    """A CPU-bound neighbour process while inside, if `busy`."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        time.sleep(0.5 if busy else 0)
        yield
    finally:
        if proc:
            proc.kill()
            proc.wait()


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def train_speed(repo: Path, extra: list[str], seconds: float, tmp: Path) -> float:
    run = tmp / f"run-{time.monotonic_ns()}"
    subprocess.run([sys.executable, "train.py", "--corpus", str(SHAKESPEARE), "--time-budget", f"{seconds}s",
                    "--checkpoint-dir", str(run), "--eval-every", "100000", "--dtype", "float32", *extra],
                   cwd=repo, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_loss" in r][-1]["chars_per_sec"]


def sample_speed(repo: Path, extra: list[str], ckpt: Path, streams: int, length: int) -> float:
    base = [sys.executable, "generate.py", "--checkpoint", str(ckpt), "--seed", "0", *extra,
            "--num-samples", str(streams)]
    work = timed(base + ["--length", str(length)], repo)
    startup = timed(base + ["--length", "1"], repo)
    return streams * length / max(1e-6, work - startup)


def score_speed(repo: Path, extra: list[str], ckpt: Path, text: Path, short: Path) -> float:
    base = [sys.executable, "generate.py", "--checkpoint", str(ckpt), *extra, "--score"]
    work, startup = timed(base + [str(text)], repo), timed(base + [str(short)], repo)
    return (len(text.read_text()) - 1) / max(1e-6, work - startup)


def measure(repo: Path, ckpt: Path, texts: tuple[Path, Path], args, tmp: Path) -> dict:
    rows = {}
    for busy in (False, True):
        for name, extra in SETTINGS.items():
            jobs = {"training": lambda: train_speed(repo, extra, args.train_seconds, tmp),
                    "evaluation": lambda: score_speed(repo, extra, ckpt, *texts),
                    "32 samples": lambda: sample_speed(repo, extra, ckpt, 32, args.length // 8),
                    "one stream": lambda: sample_speed(repo, extra, ckpt, 1, args.length)}
            with load(busy):
                row = {what: job() for what, job in jobs.items() if what in args.what}
            rows[f"{'loaded' if busy else 'quiet'}, {name}"] = row
            print(f"{repo.name or repo}: {'loaded' if busy else 'quiet'}, {name}: "
                  + ", ".join(f"{k} {v:,.0f}" for k, v in row.items()), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", action="append", type=Path, help="a checkout to measure (repeatable; default .)")
    p.add_argument("--train-seconds", type=float, default=30.0)
    p.add_argument("--length", type=int, default=40_000, help="characters of the one-stream sample "
                   "(32 samples make an eighth of it each)")
    p.add_argument("--what", default="training,evaluation,32 samples,one stream", type=lambda s: s.split(","),
                   help="which measurements, comma-separated")
    args = p.parse_args()
    repos = [r.resolve() for r in (args.repo or [Path(".")])]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "model"  # the default model after one step: speed does not depend on the weights
        subprocess.run([sys.executable, "train.py", "--corpus", str(SHAKESPEARE), "--max-steps", "1",
                        "--checkpoint-dir", str(ckpt)], cwd=repos[-1], check=True, stdout=subprocess.DEVNULL)
        text, short = tmp / "score.txt", tmp / "short.txt"
        shakespeare = SHAKESPEARE.read_text()
        text.write_text(shakespeare[-100_000:])
        short.write_text(shakespeare[-100:])
        results = {str(repo): measure(repo, ckpt / "last.pt", (text, short), args, tmp) for repo in repos}
    for repo, rows in results.items():
        quiet = rows["quiet, default"]
        print(f"\n{repo}\n| | " + " | ".join(rows) + " |\n| --- |" + " --- |" * len(rows))
        for what in quiet:
            cells = [f"{r[what]:,.0f}" + (f" ({100 * r[what] / quiet[what]:.0f}%)" if "loaded" in k else "")
                     for k, r in rows.items()]
            print(f"| {what} chars/s | " + " | ".join(cells) + " |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
