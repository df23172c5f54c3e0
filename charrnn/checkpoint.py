"""Self-contained checkpoints: plain tensors and JSON-able values, written atomically.

A checkpoint holds everything needed to sample (vocabulary, model config, weights) and to resume
exactly (optimizer, step, data position, carried state, RNG states). It is loaded with
`weights_only=True`, so a file from a stranger can never run code.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

from charrnn.errors import CharRNNError
from charrnn.model import CharRNN, ModelConfig
from charrnn.vocab import Vocab

FORMAT = "charrnn"
VERSION = 1
CHECKPOINTS_DIR = Path(__file__).resolve().parent.parent / "checkpoints"


def save(payload: dict, path: Path) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: a crash leaves the old file."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a checkpoint is meant to be shared
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CharRNNError(f"could not write checkpoint {path}: {e.strerror or e}; "
                               "free some space or choose another --checkpoint-dir") from None
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: Path | str, map_location: str | torch.device = "cpu") -> dict:
    """Load and check a charrnn checkpoint; anything else is a one-line CharRNNError."""
    path = Path(path)
    if not path.is_file():
        raise CharRNNError(f"checkpoint {path} does not exist; train one with python train.py")
    try:
        with warnings.catch_warnings():  # e.g. torch's note on an unusual pickle protocol: not for users
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):  # not written by torch.save at all: random or damaged bytes
            raise CharRNNError(f"checkpoint {path} is corrupt or not a checkpoint at all; "
                               "use another checkpoint, e.g. best.pt or last.pt") from None
        raise CharRNNError(f"checkpoint {path} holds objects that are not plain data (code?); "
                           "refused to load it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CharRNNError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}); "
                           "use another checkpoint, e.g. best.pt or last.pt") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CharRNNError(f"{path} is not a charrnn checkpoint; give one written by python train.py")
    if not isinstance(ckpt.get("version"), int) or ckpt["version"] > VERSION:
        raise CharRNNError(f"checkpoint {path} has format version {ckpt.get('version')}, newer than "
                           f"this charrnn reads ({VERSION}); upgrade charrnn")
    return ckpt


def resolve(spec: str | Path | None, prefer: str = "best.pt") -> Path:
    """A .pt file, a directory (its `prefer` file), or None: the run under checkpoints/ written last."""
    if spec is None:
        found = sorted(CHECKPOINTS_DIR.glob("**/*.pt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise CharRNNError("no checkpoint found under checkpoints/; run python train.py first")
        spec = found[-1].parent
    path = Path(spec).expanduser()
    if path.is_dir():
        for name in (prefer, "last.pt", "best.pt"):
            if (path / name).is_file():
                return path / name
        raise CharRNNError(f"no checkpoint in {path}; run python train.py first")
    return path


def build_model(ckpt: dict, device: torch.device | str = "cpu") -> tuple[CharRNN, Vocab]:
    """The model and vocabulary a checkpoint describes, with its weights, in eval mode."""
    try:
        vocab = Vocab(ckpt["vocab"])
        model = CharRNN(ModelConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, RuntimeError, CharRNNError) as e:
        raise CharRNNError(f"checkpoint does not describe a usable model ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:120]}); retrain or use another file") from None
    return model.to(device).eval(), vocab
