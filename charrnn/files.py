"""Where charrnn keeps files, and the one way it writes them (atomically).

`checkpoints/` and `corpora/` are resolved from the working directory, as char-rnn's `cv/` and
nanoGPT's `out/` are, so an installed charrnn writes where its user works; CHARRNN_CHECKPOINTS_DIR
and CHARRNN_CORPORA_DIR override them.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from charrnn.errors import CharRNNError

TEMP_SUFFIX = ".tmp"  # atomic_write's temporaries are `.NAME.<random>.tmp` beside NAME


def checkpoints_dir() -> Path:
    return Path(os.environ.get("CHARRNN_CHECKPOINTS_DIR", "checkpoints"))


def corpora_dir() -> Path:
    return Path(os.environ.get("CHARRNN_CORPORA_DIR", "corpora"))


def cache_dir() -> Path:
    """Encoded corpora, memory-mapped."""
    return Path(os.environ.get("CHARRNN_CACHE_DIR", corpora_dir() / ".cache"))


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through `write` to a temporary file beside `path`, fsync, then rename over `path`.

    A crash at any instant leaves either the old file or the new one, never a torn one; a failure
    (a full disk, say) is a one-line CharRNNError and leaves the old file as it was.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o644)  # mkstemp makes it private; these files are meant to be shared
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CharRNNError(f"could not write {path}: {e.strerror or e}; free some space or "
                               "choose another folder (--checkpoint-dir)") from None
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def temporaries(directory: Path) -> list[Path]:
    """What writes cut short by a kill left behind in `directory` (their targets are intact)."""
    return sorted(directory.glob(f".*{TEMP_SUFFIX}"))


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
