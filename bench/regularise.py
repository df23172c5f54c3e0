"""Two training configurations side by side on one corpus: which one's best checkpoint reads the
validation split better, and how late in the run it came.

Both run `train.py --time-budget B --threads 1`, each pinned to its own core (they share the
machine's memory bandwidth and any noise alike), with the same seed. Afterwards each run's best.pt
scores the whole validation split as one stream (`generate.py --score`). The corpus is
tinyshakespeare, or the Python standard library's docstrings cut to --docstrings characters (a
small corpus every machine with this Python has):

    python bench/regularise.py --b "--ema-decay 0.999"                                 # 10m each
    python bench/regularise.py --docstrings 500000 --b "--weight-drop 0.3 --ema-decay 0.999"
    git worktree add --detach ../before HEAD~1                                         # a code change
    python bench/regularise.py --docstrings 500000 --a-checkout ../before
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from charrnn.config import parse_duration
from common import REPO, SHAKESPEARE, cpu_name
from quality import finish_children, start_child, validation_file


def docstrings(limit: int) -> str:
    """The standard library's module, class and function docstrings, in file order, cut to `limit` characters."""
    parts, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    parts.append(doc + "\n\n")
                    size += len(parts[-1])
                    if size >= limit:
                        return "".join(parts)[:limit]
    return "".join(parts)


def summary(run: Path, validation: Path) -> dict:
    """The run's shape, steps, best.pt's step and its one-stream score of the validation split."""
    score = subprocess.run([sys.executable, str(REPO / "generate.py"), "--checkpoint", str(run / "best.pt"),
                            "--score", str(validation)], capture_output=True, text=True)
    match = re.search(r": ([\d.]+) nats/char", score.stdout)
    if not match:
        sys.exit(f"generate.py --score failed: {score.stderr.strip()}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if "val_loss" in row]
    best = min(evals, key=lambda row: row["val_loss"])
    model = json.loads((run / "config.json").read_text())["model"]
    return {"model": f"{model['model']} {model['num_layers']}x{model['rnn_size']} dropout {model['dropout']}",
            "steps": rows[-1]["step"], "best_step": best["step"], "best_at": best["step"] / rows[-1]["step"],
            "evaluations": len(evals), "one_stream": float(match.group(1))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", default="", help="train.py flags of the first configuration (default: the defaults)")
    p.add_argument("--b", default="", help="train.py flags of the second")
    p.add_argument("--time-budget", type=parse_duration, default=600.0, help="each side's budget (default 10m)")
    p.add_argument("--docstrings", type=int, help="train on this many characters of the stdlib's docstrings "
                   "instead of tinyshakespeare")
    p.add_argument("--a-checkout", type=Path, default=REPO, help="run the first configuration's train.py from "
                   "this checkout, e.g. a git worktree of the commit before a change (default: this one)")
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corpus_path = SHAKESPEARE
        if args.docstrings:
            corpus_path = folder / f"docstrings-{args.docstrings}.txt"
            corpus_path.write_text(docstrings(args.docstrings), encoding="utf-8")
        validation = validation_file(folder, corpus_path)
        checkouts = {"a": args.a_checkout.resolve(), "b": REPO}
        commands = {name: [sys.executable, str(checkouts[name] / "train.py"), "--corpus", str(corpus_path),
                           "--time-budget", f"{args.time_budget:.0f}s", "--threads", "1", "--seed", str(args.seed),
                           "--checkpoint-dir", str(folder / name), *shlex.split(flags)]
                    for name, flags in (("a", args.a), ("b", args.b))}
        finish_children({name: start_child(cmd, name, core) for (name, cmd), core in zip(commands.items(), (0, 1))})
        results = {name: summary(folder / name, validation) for name in commands}
    print(f"\n{corpus_path.name}, {args.time_budget / 60:g} minutes each, side by side, one core each; CPU {cpu_name()}")
    print("| configuration | model | steps | best.pt at step (share of the run) | whole validation split, one stream |")
    print("| --- | --- | --- | --- | --- |")
    for name, flags in (("a", args.a), ("b", args.b)):
        r, where = results[name], "" if checkouts[name] == REPO else f" at {checkouts[name]}"
        print(f"| {flags or 'defaults'}{where} | {r['model']} | {r['steps']:,} | {r['best_step']:,} "
              f"({r['best_at']:.0%}) | {r['one_stream']:.4f} |")
    print(json.dumps({"a": args.a, "b": args.b, **results}))


if __name__ == "__main__":
    main()
