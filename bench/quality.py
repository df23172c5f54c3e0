"""Validation loss per CPU-minute: charrnn's defaults against the plain PyTorch LSTM, same budget.

Runs `train.py --time-budget B` (the default configuration) and then bench/baseline.py with the
same budget, one after the other, each in a child process. Prints validation loss on
tinyshakespeare at 1, 3, 5 and 10 minutes (60 too with --long), training characters per second
and each child's peak RSS, as a table and a final JSON line. charrnn's figure at a mark is its
last evaluation by then (it evaluates every --eval-every steps, and its budget counts the time
spent evaluating); the baseline stops its clock to evaluate exactly at each mark. Example:

    python bench/quality.py            # about 21 minutes
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, SHAKESPEARE


def run_child(cmd: list[str]) -> tuple[str, float]:
    """Run cmd, echoing its output; return the output and the child's peak RSS in MB."""
    print("$ " + shlex.join(cmd), flush=True)
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in child.stdout:
        print("  " + line, end="", flush=True)
        lines.append(line)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[1]} failed")
    return "".join(lines), usage.ru_maxrss / 1024


def at_marks(curve: list[dict], marks: list[float]) -> list[dict | None]:
    """For each mark, the last evaluation by then (2% slack for the step that crosses the budget)."""
    return [max((row for row in curve if row["elapsed"] <= mark * 1.02), key=lambda r: r["elapsed"], default=None)
            for mark in marks]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--long", action="store_true", help="a 60-minute budget instead of 10 (about 2 hours)")
    p.add_argument("--charrnn-args", default="", help="extra train.py flags, to try a configuration")
    p.add_argument("--skip-baseline", action="store_true", help="run charrnn only")
    args = p.parse_args()
    if not SHAKESPEARE.exists():
        sys.exit(f"the benchmark corpus {SHAKESPEARE} is missing")
    marks = [60.0, 180.0, 300.0, 600.0] + ([3600.0] if args.long else [])
    budget = f"{marks[-1]:.0f}s"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out, rss = run_child([sys.executable, str(REPO / "train.py"), "--corpus", str(SHAKESPEARE),
                              "--time-budget", budget, "--checkpoint-dir", tmp, *shlex.split(args.charrnn_args)])
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        rows = [row for row in rows if "val_loss" in row]  # evaluations, not the training-loss log
        last = rows[-1]
        results["charrnn"] = {"curve": at_marks(rows, marks), "steps": last["step"], "peak_rss_mb": round(rss),
                              "chars_per_sec": round(statistics.mean(r["chars_per_sec"] for r in rows if r["chars_per_sec"])),
                              "wall_s": round(time.perf_counter() - start)}
    if not args.skip_baseline:
        start = time.perf_counter()
        out, rss = run_child([sys.executable, str(REPO / "bench" / "baseline.py"), "--corpus", str(SHAKESPEARE),
                              "--time-budget", budget, "--marks", ",".join(f"{m:.0f}s" for m in marks)])
        summary = json.loads(out.splitlines()[-1])
        results["baseline"] = {"curve": at_marks(summary["curve"], marks), "steps": summary["steps"],
                               "peak_rss_mb": round(rss), "chars_per_sec": summary["chars_per_sec"],
                               "wall_s": round(time.perf_counter() - start)}
    names = list(results)
    print("\n| validation loss (nats/char) | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for i, mark in enumerate(marks):
        cells = []
        for name in names:
            row = results[name]["curve"][i]
            cells.append("-" if row is None else f"{row['val_loss']:.3f} (at {row['elapsed']:.0f} s)")
        print(f"| {mark / 60:.0f} min | " + " | ".join(cells) + " |")
    print("| train chars/s | " + " | ".join(f"{results[n]['chars_per_sec']:,}" for n in names) + " |")
    print("| steps | " + " | ".join(f"{results[n]['steps']:,}" for n in names) + " |")
    print("| peak RSS | " + " | ".join(f"{results[n]['peak_rss_mb']} MB" for n in names) + " |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
