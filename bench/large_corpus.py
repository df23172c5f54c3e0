"""Large-corpus benchmark: first-run encoding speed and peak memory of training on ~500 MB of text.

Builds a realistic corpus in a temporary folder by shuffling the lines of a real text (the
benchmark corpus if present, else the Python standard library's source) until it reaches
--size-mb, then runs `train.py` on it for --steps steps in a child process and reports the time
of the first run's encoding (MB/s) and the child's peak RSS. Example:

    python bench/large_corpus.py --size-mb 500 --steps 50
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charrnn.corpus import stdlib_files
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
    p.add_argument("--size-mb", type=int, default=500)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "large.txt"
        size = build_corpus(corpus, args.size_mb, args.seed)
        cmd = [sys.executable, str(REPO / "train.py"), "--corpus", str(corpus), "--max-steps", str(args.steps),
               "--eval-every", str(args.steps), "--val-frac", "0.0005", "--checkpoint-dir", str(Path(tmp) / "ckpt")]
        env_cache = {"CHARRNN_CACHE_DIR": str(Path(tmp) / "cache")}
        start = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env_cache})
        total = time.perf_counter() - start
        if run.returncode != 0:
            sys.exit(f"train.py failed:\n{run.stderr[-2000:]}")
        encode = float(re.search(r"encoded \S+ in ([\d.]+)s", run.stderr).group(1))
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {"corpus_mb": round(size / 1e6, 1), "steps": args.steps, "encode_s": encode,
              "encode_mb_per_s": round(size / 1e6 / encode, 1), "total_s": round(total, 1),
              "peak_rss_mb": round(peak_mb)}
    print(f"corpus {result['corpus_mb']} MB | first-run encoding {encode:.1f} s ({result['encode_mb_per_s']} MB/s) | "
          f"{args.steps} steps, whole run {total:.0f} s | peak RSS {result['peak_rss_mb']} MB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
