"""Self-contained checkpoints: plain tensors and JSON-able values, written atomically.

A checkpoint holds everything needed to sample (vocabulary, model config, weights) and to resume
exactly (optimizer, step, data position, carried state, RNG states). It is loaded with
`weights_only=True`, so a file from a stranger can never run code. A run with averaged weights
(--ema-decay) saves the average as "model", the weights every reader loads, and the weights it
trains as "raw_model", for --resume.
"""
from __future__ import annotations

import pickle
import stat
import warnings
import zipfile
from pathlib import Path

import torch

from charrnn.config import ModelConfig
from charrnn.errors import CharRNNError
from charrnn.files import atomic_write, checkpoints_dir
from charrnn.model import COPY_MATCH, CharRNN, weight_shapes
from charrnn.vocab import Vocab

FORMAT = "charrnn"
VERSION = 1


def save(payload: dict, path: Path) -> None:
    """Save a checkpoint atomically, stamped with the format and version."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **payload}, f))


def load(path: Path | str, map_location: str | torch.device = "cpu") -> dict:
    """Load and check a charrnn checkpoint; anything else is a one-line CharRNNError."""
    path = Path(path)
    if not path.exists():
        raise CharRNNError(f"checkpoint {path} does not exist; train one with python train.py")
    if not stat.S_ISREG(path.stat().st_mode):
        raise CharRNNError(f"checkpoint {path} is not a regular file; give a .pt file or a run directory")
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
    except Exception:  # torch's readers fail in many ways on damaged bytes; none runs code
        raise CharRNNError(f"checkpoint {path} is corrupt or truncated; "
                           "use another checkpoint, e.g. best.pt or last.pt") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CharRNNError(f"{path} is not a charrnn checkpoint; give one written by python train.py")
    if not isinstance(ckpt.get("version"), int) or ckpt["version"] > VERSION:
        raise CharRNNError(f"checkpoint {path} has format version {ckpt.get('version')}, newer than "
                           f"this charrnn reads ({VERSION}); upgrade charrnn")
    _add_copy_scores(ckpt)
    return ckpt


def _add_copy_scores(ckpt: dict) -> None:
    """A copy attention saved before its gain and match scores (CharRNN.copy_gain, copy_match) is
    the same model with both at zero; a run resumed from it learns them from there (fresh Adam state)."""
    config, weights, optimizer = ckpt.get("model_config"), ckpt.get("model"), ckpt.get("optimizer")
    if not isinstance(config, dict) or not config.get("copy_memory") or not isinstance(weights, dict) \
            or "copy_gain" in weights or "copy_sink" not in weights:
        return
    # an optimizer numbers the parameters in their state dict's order: the two new ones follow copy_sink
    at = list(weights).index("copy_sink") + 1
    for key in ("model", "raw_model"):
        if isinstance(ckpt.get(key), dict):
            ckpt[key].update(copy_gain=torch.zeros(1), copy_match=torch.zeros(COPY_MATCH + 1))
    if isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict) and optimizer.get("param_groups"):
        def renumber(i):
            return i + 2 if isinstance(i, int) and i >= at else i

        optimizer["state"] = {renumber(i): value for i, value in optimizer["state"].items()}
        params = [renumber(i) for i in optimizer["param_groups"][0].get("params", [])]
        optimizer["param_groups"][0]["params"] = params[:at] + [at, at + 1] + params[at:]  # matched by position


def resolve(spec: str | Path | None, prefer: str = "best.pt") -> Path:
    """A .pt file, a directory (its `prefer` file), or None: the run under checkpoints/ written last."""
    if spec is None:
        found = sorted(checkpoints_dir().glob("**/*.pt"), key=lambda p: p.stat().st_mtime)
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
        vocab = Vocab(ckpt["vocab"], items="items" in ckpt)  # a model of items says so (items.py)
        config = ModelConfig(**ckpt["model_config"])
        _check_sizes(config, ckpt["model"])
        model = CharRNN(config)
        model.load_state_dict(ckpt["model"])  # strict: every name and shape must match
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, CharRNNError) as e:
        raise CharRNNError(f"checkpoint does not describe a usable model ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:120]}); retrain or use another file") from None
    return model.to(device).eval(), vocab


def _check_sizes(config: ModelConfig, weights: dict) -> None:
    """The config's sizes must be those of the file's tensors: a 1 KB file must not allocate gigabytes.

    (Checked by hand: building the model on the meta device first costs 2 s of lazy imports.)
    """
    for name, shape in weight_shapes(config).items():
        if tuple(weights[name].shape) != shape:
            raise RuntimeError("its weights do not match its model config")
