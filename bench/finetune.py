"""Fine-tuning against training from scratch, on a small corpus, for the same time.

A base model trains on the benchmark corpus (--base-time), or is given (--base). Then, on a small
second corpus (default: the licence texts every Debian machine has in /usr/share/common-licenses),
two runs get the same --time-budget: one starts from the base model (train.py --init-from), one
from scratch. Both hold out the same last 10% of the small corpus and report the validation loss
of their evaluations. Example:

    python bench/finetune.py --base-time 5m --time-budget 2m
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, SHAKESPEARE


def train(args: list[str], run: Path) -> list[dict]:
    subprocess.run([sys.executable, str(REPO / "train.py"), *args, "--checkpoint-dir", str(run)], check=True,
                   stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_loss" in r]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, help="a trained checkpoint to start from (default: train one)")
    p.add_argument("--base-time", default="5m", help="how long the base model trains (default 5m)")
    p.add_argument("--corpus", default="/usr/share/common-licenses", help="the small second corpus")
    p.add_argument("--time-budget", default="2m", help="each run on the small corpus (default 2m)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = args.base
        if base is None:
            base = tmp / "base"
            # the default shape, fixed: a from-scratch run on a small corpus gets it too, so the two compare
            rows = train(["--corpus", str(SHAKESPEARE), "--time-budget", args.base_time, "--sample-length", "0",
                          "--rnn-size", "256"], base)
            print(f"base: {SHAKESPEARE.name}, {args.base_time}, val {rows[-1]['val_loss']:.3f} nats/char", flush=True)
        common = ["--corpus", args.corpus, "--time-budget", args.time_budget, "--eval-every", "100",
                  "--sample-length", "0"]
        results = {"fine-tuned": train(["--init-from", str(base), *common], tmp / "tuned"),
                   "from scratch": train(common, tmp / "scratch")}
    print(f"\n| {args.time_budget} on {args.corpus} | validation loss, nats/char (bits) | best | steps |\n"
          "| --- | --- | --- | --- |")
    for name, rows in results.items():
        curve = ", ".join(f"{r['val_loss']:.3f} at {r['elapsed']:.0f} s" for r in rows[:: max(1, len(rows) // 4)])
        best = min(r["val_loss"] for r in rows)
        print(f"| {name} | {curve} | {best:.3f} ({best / 0.6931471805599453:.3f}) | {rows[-1]['step']:,} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
