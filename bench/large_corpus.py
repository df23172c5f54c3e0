"""Cost on large corpora: the first encoding, 20 training steps with evaluations, and peak memory.

Builds a realistic corpus of each --sizes (MB) in a temporary folder by shuffling the lines of a
real text (the benchmark corpus if present, else the Python standard library's source), encodes
it with the library (timed: the first run's encoding), then runs `train.py` for --steps steps of
the default model with an evaluation every --eval-every steps in a child process (timed, with the
child's peak RSS). Evaluation scores a bounded part of the validation split (--eval-chars), so
its cost does not grow with the corpus. Example:

    python bench/large_corpus.py --sizes 1,100,400
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charrnn.corpus import load, resolve, stdlib_files
from common import REPO, SHAKESPEARE


def source_lines() -> list[str]:
    if SHAKESPEARE.exists():
        return SHAKESPEARE.read_text(encoding="utf-8").splitlines(keepends=True)
    return [line for f in stdlib_files() for line in f.read_text(encoding="utf-8").splitlines(keepends=True)]


def build_corpus(path: Path, size_mb: int, seed: int) -> int:
    """Write shuffled copies of the source lines until the file holds size_mb megabytes."""
    lines, rng, written = source_lines(), random.Random(seed), 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size_mb * 1_000_000:
            rng.shuffle(lines)
            block = "".join(lines)
            f.write(block)
            written += len(block.encode("utf-8"))
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1,100,400", help="corpus sizes in MB, comma-separated")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--repo", type=Path, default=REPO, help="the checkout whose train.py runs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = []
    for size_mb in map(int, args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            corpus = Path(tmp) / "large.txt"
            size = build_corpus(corpus, size_mb, args.seed)
            os.environ["CHARRNN_CACHE_DIR"] = str(Path(tmp) / "cache")
            start = time.perf_counter()
            load(resolve(str(corpus)))  # the first run's encoding, cached for train.py
            encode = time.perf_counter() - start
            encode_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            cmd = [sys.executable, "train.py", "--corpus", str(corpus), "--max-steps", str(args.steps),
                   "--eval-every", str(args.eval_every), "--checkpoint-dir", str(Path(tmp) / "run")]
            start = time.perf_counter()
            subprocess.run(cmd, cwd=args.repo, check=True, stdout=subprocess.DEVNULL)
            train = time.perf_counter() - start
            peak = max(encode_rss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
        rows.append({"corpus_mb": round(size / 1e6), "encode_s": round(encode, 1), "train_s": round(train, 1),
                     "total_s": round(encode + train, 1), "peak_rss_mb": round(peak)})
        r = rows[-1]
        print(f"| {r['corpus_mb']} MB | {r['encode_s']} s | {r['train_s']} s | {r['total_s']} s | "
              f"{r['peak_rss_mb']} MB |", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
