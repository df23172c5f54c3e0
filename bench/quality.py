"""Validation loss per CPU-minute: charrnn's defaults against the plain PyTorch LSTM, same budget.

Runs `train.py --time-budget B` (the default configuration) and bench/baseline.py with the same
budget, each in a child process: one after the other with every core each, or with --side-by-side
both at once, each pinned to one core with one thread (half the wall time; the two share the
machine's memory bandwidth and any noise alike). Prints validation loss on tinyshakespeare at 1,
3, 5 and 10 minutes and at the end of the budget, the final score of the whole split read as one stream
(charrnn's by `generate.py --score` on its last checkpoint), training characters per second and
each child's peak RSS, as a table and a final JSON line. charrnn's figure at a mark is its last
evaluation by then (its budget counts the time spent evaluating); the baseline stops its clock
to evaluate exactly at each mark. Example:

    python bench/quality.py                                    # about 21 minutes
    python bench/quality.py --time-budget 60m --side-by-side   # about 62 minutes
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from charrnn import corpus, data
from charrnn.config import parse_duration
from common import REPO, SHAKESPEARE


def start_child(cmd: list[str], name: str, core: int | None) -> tuple[subprocess.Popen, list[str], threading.Thread]:
    """Start cmd (pinned to `core` with one thread, if given); a thread echoes and keeps its output."""
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    print(f"$ {shlex.join(cmd)}", flush=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if core is not None else {})}
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []

    def pump():
        for line in child.stdout:
            print(f"  {name}: {line}", end="", flush=True)
            lines.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return child, lines, reader


def finish_children(started: dict[str, tuple[subprocess.Popen, list[str], threading.Thread]]) -> dict:
    """Wait for the children: {name: (output, peak RSS in MB)}; if one fails, stop the others and exit."""
    results = {}
    for name, (child, lines, reader) in started.items():
        _, status, usage = os.wait4(child.pid, 0)
        reader.join()
        if os.waitstatus_to_exitcode(status) != 0:
            for other, *_ in started.values():
                other.kill()
            sys.exit(f"{name} failed")
        results[name] = "".join(lines), usage.ru_maxrss / 1024
    return results


def at_marks(curve: list[dict], marks: list[float]) -> list[dict | None]:
    """For each mark, the last evaluation by then (2% slack for the step that crosses the budget)."""
    return [max((row for row in curve if row["elapsed"] <= mark * 1.02), key=lambda r: r["elapsed"], default=None)
            for mark in marks]


def validation_file(folder: Path, corpus_path: Path = SHAKESPEARE) -> Path:
    """The split train.py validates on (the last 10%), written out for generate.py --score."""
    text = corpus.load(corpus.resolve(str(corpus_path)))
    _, val, _ = data.split(text.tokens, 0.1)
    path = folder / "validation.txt"
    path.write_text(text.vocab.decode(val), encoding="utf-8")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--time-budget", type=parse_duration, default=600.0, help="each side's budget (default 10m)")
    p.add_argument("--run-dir", help="keep charrnn's run in this new folder (default: a temporary one)")
    p.add_argument("--side-by-side", action="store_true", help="run both at once, one core and one thread each")
    p.add_argument("--charrnn-args", default="", help="extra train.py flags, to try a configuration")
    p.add_argument("--skip-baseline", action="store_true", help="run charrnn only")
    args = p.parse_args()
    if not SHAKESPEARE.exists():
        sys.exit(f"the benchmark corpus {SHAKESPEARE} is missing")
    marks = [m for m in (60.0, 180.0, 300.0, 600.0) if m < args.time_budget] + [args.time_budget]
    budget = f"{args.time_budget:.0f}s"
    threads = ["--threads", "1"] if args.side_by_side else []
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run_dir or Path(tmp) / "run")
        commands = {"charrnn": [sys.executable, str(REPO / "train.py"), "--corpus", str(SHAKESPEARE),
                                "--time-budget", budget, "--checkpoint-dir", str(run), *threads,
                                *shlex.split(args.charrnn_args)]}
        if not args.skip_baseline:
            commands["baseline"] = [sys.executable, str(REPO / "bench" / "baseline.py"), "--corpus", str(SHAKESPEARE),
                                    "--time-budget", budget, "--marks", ",".join(f"{m:.0f}s" for m in marks)]
        outputs = {}
        if args.side_by_side:
            outputs = finish_children({name: start_child(cmd, name, core)
                                       for (name, cmd), core in zip(commands.items(), (0, 1))})
        else:
            for name, cmd in commands.items():
                outputs.update(finish_children({name: start_child(cmd, name, None)}))
        score = subprocess.run([sys.executable, str(REPO / "generate.py"), "--checkpoint", str(run / "last.pt"),
                                "--score", str(validation_file(Path(tmp)))], capture_output=True, text=True)
        match = re.search(r": ([\d.]+) nats/char", score.stdout)
        if not match:
            sys.exit(f"generate.py --score failed: {score.stderr.strip()}")
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        rows = [row for row in rows if "val_loss" in row]  # evaluations, not the training-loss log
        model = json.loads((run / "config.json").read_text())["model"]
    results = {"charrnn": {"curve": at_marks(rows, marks), "steps": rows[-1]["step"],
                           "model": f"{model['num_layers']}x{model['rnn_size']} dropout {model['dropout']}",
                           "one_stream": float(match.group(1)), "peak_rss_mb": round(outputs["charrnn"][1]),
                           "chars_per_sec": round(statistics.mean(r["chars_per_sec"] for r in rows
                                                                  if r["chars_per_sec"]))}}
    if "baseline" in outputs:
        summary = json.loads(outputs["baseline"][0].splitlines()[-1])
        results["baseline"] = {"curve": at_marks(summary["curve"], marks), "steps": summary["steps"],
                               "model": summary["model"], "one_stream": summary["one_stream"],
                               "peak_rss_mb": round(outputs["baseline"][1]), "chars_per_sec": summary["chars_per_sec"]}
    print_table(results, marks)


def print_table(results: dict, marks: list[float]) -> None:
    names = list(results)
    print("\n| validation loss (nats/char; each side's own evaluations, charrnn's under its training dtype) | "
          + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for i, mark in enumerate(marks):
        cells = []
        for name in names:
            row = results[name]["curve"][i]
            cells.append("-" if row is None else f"{row['val_loss']:.3f} (at {row['elapsed']:.0f} s)")
        print(f"| {mark / 60:g} min | " + " | ".join(cells) + " |")
    for label, key in (("whole split, one stream, at the end", "one_stream"), ("model", "model"),
                       ("train chars/s", "chars_per_sec"), ("steps", "steps"), ("peak RSS MB", "peak_rss_mb")):
        print(f"| {label} | " + " | ".join(f"{results[n][key]:,}" if isinstance(results[n][key], int)
                                           else str(results[n][key]) for n in names) + " |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
