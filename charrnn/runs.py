"""A run folder: one training run's checkpoints, logs and config, never mixed with another run's.

    checkpoints/<corpus name>/
        best.pt  last.pt  step_001500.pt ...   checkpoints (the step files with --keep-checkpoints)
        metrics.jsonl  samples.jsonl  config.json  loss_curve.png

A new run never writes into a folder that holds an earlier run: the default folder moves on to
`<name>-2`, `<name>-3`, ...; a folder named with --checkpoint-dir is refused unless --overwrite
deletes the earlier run first. Only --resume continues a run in its own folder.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from charrnn import checkpoint
from charrnn.errors import CharRNNError
from charrnn.files import checkpoints_dir, temporaries, write_text

LOGS = ("metrics.jsonl", "samples.jsonl")
STEP_FILE = re.compile(r"step_\d+\.pt")


def run_files(folder: Path) -> list[Path]:
    """The files of a run in `folder` (other files are left alone)."""
    if not folder.is_dir():
        return []
    names = {"best.pt", "last.pt", "config.json", "loss_curve.png", *LOGS}
    return sorted(p for p in folder.iterdir() if p.name in names or STEP_FILE.fullmatch(p.name))


def holds_run(folder: Path) -> bool:
    """Whether `folder` holds a run worth keeping: one that saved a checkpoint."""
    return any(p.suffix == ".pt" for p in run_files(folder))


def new_run_dir(checkpoint_dir: str | None, corpus_name: str, overwrite: bool = False) -> Path:
    """The folder for a new run: never one that holds an earlier run, unless `overwrite` clears it.

    The files of a run that was stopped before its first checkpoint are cleared, so that no two
    runs' files are ever mixed."""
    if checkpoint_dir is None:
        base = checkpoints_dir() / corpus_name
        folder, n = base, 1
        while holds_run(folder) and not overwrite:
            n += 1
            folder = base.with_name(f"{base.name}-{n}")
        if folder != base:
            print(f"{base} holds an earlier run; this run goes to {folder} "
                  f"(--overwrite replaces it, --resume {base} continues it)", file=sys.stderr)
    else:
        folder = Path(checkpoint_dir).expanduser()
        if folder.exists() and not folder.is_dir():
            raise CharRNNError(f"--checkpoint-dir {folder} is a file, not a folder; choose another path")
        if holds_run(folder) and not overwrite:
            raise CharRNNError(f"{folder} already holds a run; continue it with --resume {folder}, "
                               "replace it with --overwrite, or choose another --checkpoint-dir")
    for path in run_files(folder):
        path.unlink()
    return folder


class RunDir:
    """Writes a run's files; only the main process of a distributed run writes anything."""

    def __init__(self, path: Path, writes: bool = True):
        self.path, self.writes = path, writes

    def start(self, config: dict) -> None:
        if self.writes:
            for tmp in temporaries(self.path) if self.path.is_dir() else []:
                tmp.unlink(missing_ok=True)  # left by a write that a kill cut short; targets are intact
            write_text(self.path / "config.json", json.dumps(config, indent=2) + "\n")

    def save(self, payload: dict, *names: str) -> None:
        if self.writes:
            for name in names:
                checkpoint.save(payload, self.path / name)

    def write_logs(self, logs: dict[str, list[dict]]) -> None:
        """Rewrite each log whole (atomically), so that it always matches last.pt after a resume."""
        if self.writes:
            for name, rows in logs.items():
                write_text(self.path / name, "".join(json.dumps(row) + "\n" for row in rows))

    def keep_history(self, payload: dict, step: int, keep: int) -> None:
        """Save step_NNNNNN.pt and delete the oldest beyond the last `keep`."""
        if not (self.writes and keep):
            return
        self.save(payload, f"step_{step:06d}.pt")
        history = sorted(p for p in self.path.iterdir() if STEP_FILE.fullmatch(p.name))
        for old in history[:-keep]:
            old.unlink()
