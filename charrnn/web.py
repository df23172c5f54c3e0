"""Export a checkpoint as a static web page that runs the model in the browser, with no server.

The folder holds index.html, app.js, kernel.js (the WebAssembly step) and style.css (copied from
charrnn/web/) and model.js, which sets `window.CHARRNN_MODEL`. The model comes as a script because
browsers refuse fetch() between file:// URLs, so a page opened straight from disk could not read a
separate data file.

Weights in model.js: every tensor of the state dict, in order, as one little-endian array of the
export's dtype, byte-plane shuffled (all first bytes, then all second bytes, ...), compressed
with raw deflate and written as base85 text. Why: the sign-and-exponent bytes of weights repeat
a lot while the mantissa bytes are noise; grouped, deflate shrinks the default 2x256 LSTM's
3.5 MB of float32 to 2.8-3.0 MB (random or trained weights; unshuffled: 3.2 MB), and base85
(5 characters per 4 bytes) makes that 3.5-3.7 MB of text, where base64 would make 3.8-4.0 MB.
The browser inflates it with its built-in DecompressionStream("deflate-raw").

float16, the default, halves all of it and scores within 0.001 bits/char of float32. int8 keeps
a quarter: each row of a matrix (each value of a vector) is stored as whole numbers from -127 to
127 times one float32 scale, its largest magnitude / 127; the scales are packed the same way.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import zlib
from pathlib import Path

import numpy as np

from charrnn.errors import CharRNNError
from charrnn.files import atomic_write

TEMPLATE_DIR = Path(__file__).resolve().parent / "web"
PAGE_FILES = ("index.html", "app.js", "kernel.js", "style.css")
MODEL_FILE = "model.js"
MARKER = "// charrnn web export"  # first line of model.js: marks a folder we may overwrite
DTYPES = {"float32": "<f4", "float16": "<f2", "int8": "i1"}
INT8_LEVELS = 127  # symmetric: -127..127, so a row's largest magnitude is exact
BASE85_GROUP = 4  # bytes per 5 base85 characters


def export_web(ckpt: dict, out_dir: str | Path, *, dtype: str = "float16") -> Path:
    """Write the page for checkpoint `ckpt` into `out_dir` (new, empty or an earlier export).

    Returns the path of index.html, which works opened straight from disk.
    """
    from charrnn.checkpoint import build_model  # lazy: the only part that needs torch

    if dtype not in DTYPES:
        raise CharRNNError(f"web export dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    out = Path(out_dir).expanduser()
    _check_folder(out)
    model, vocab = build_model(ckpt)  # checks that the checkpoint describes a usable model
    tensors = {name: tensor.detach().float().cpu().numpy() for name, tensor in model.state_dict().items()}
    for name, array in tensors.items():
        if not np.isfinite(array).all():
            raise CharRNNError(f"the checkpoint's {name} holds NaN or infinite values; use another checkpoint")
    if dtype == "int8":
        values, scales = _quantize(list(tensors.values()))
        packed = {**_pack(values), "scales": {**_pack(scales), "count": len(scales)}}
    else:
        values = np.concatenate([array.ravel() for array in tensors.values()]).astype(DTYPES[dtype])
        if not np.isfinite(values).all():  # beyond float16's range (65504)
            raise CharRNNError("the checkpoint holds weights too large for float16; use --export-dtype float32")
        packed = _pack(values)
    spec = {
        "format": "charrnn-web", "version": 1,
        "config": dataclasses.asdict(model.config), "vocab": vocab.chars,
        "summary": _summary(ckpt, values.size),
        "dtype": dtype, "encoding": "little-endian, byte planes, deflate-raw, base85",
        "tensors": [{"name": name, "shape": list(array.shape)} for name, array in tensors.items()],
        **packed,
    }
    if vocab.items:
        spec["items"] = _items(ckpt["items"])
    # ensure_ascii: any vocabulary character is written as an escape, so the file is plain ASCII
    text = f"{MARKER} (charrnn.web.export_web); see app.js for how it is read.\n" \
           f"window.CHARRNN_MODEL = {json.dumps(spec, ensure_ascii=True)};\n"
    # model.js first: its marker is what lets a rerun overwrite a folder an interrupted export left
    atomic_write(out / MODEL_FILE, lambda f: f.write(text.encode("ascii")))
    for name in PAGE_FILES:
        page = (TEMPLATE_DIR / name).read_bytes()
        atomic_write(out / name, lambda f, page=page: f.write(page))
    return out / "index.html"


def _check_folder(out: Path) -> None:
    """Refuse to write into anything but a new folder, an empty one, or an earlier export."""
    if out.exists() and not out.is_dir():
        raise CharRNNError(f"{out} exists and is not a folder; give a new folder for the web export")
    if not out.exists() or not any(out.iterdir()):
        return
    names = {p.name for p in out.iterdir() if not p.name.endswith(".tmp")}
    model_js = out / MODEL_FILE
    if not (names <= {*PAGE_FILES, MODEL_FILE} and model_js.is_file() and _starts_with_marker(model_js)):
        raise CharRNNError(f"{out} is not empty and not an earlier web export; give a new or empty folder")


def _starts_with_marker(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(len(MARKER)) == MARKER.encode()


def _items(info: dict) -> dict:
    """What the items view needs: the labels, and the training list's fingerprints cut to their
    first 32 bits (the page checks a new item against them; the list itself is not shipped)."""
    prefixes = np.unique((info["fingerprints"].numpy() >> 32).astype(np.uint32))  # sorted
    data = prefixes.astype("<u4").tobytes()
    return {"labels": list(info["labels"]), "separator": info["separator"], "known_count": len(prefixes),
            "known": base64.b85encode(data + bytes(-len(data) % BASE85_GROUP)).decode("ascii")}


def _quantize(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """float32 tensors -> int8 values and a float32 scale per row, in order (see the module docstring)."""
    values, scales = [], []
    for array in arrays:
        rows = array.reshape(len(array), -1) if array.ndim == 2 else array.reshape(-1, 1)
        scale = np.abs(rows).max(axis=1, keepdims=True) / INT8_LEVELS
        scale[scale == 0] = 1  # an all-zero row: any scale gives zeros
        values.append(np.rint(rows / scale).astype(np.int8).ravel())
        scales.append(scale.astype("<f4").ravel())
    return np.concatenate(values), np.concatenate(scales)


def _pack(values: np.ndarray) -> dict:
    """Little-endian values -> byte planes -> raw deflate -> base85 text (see the module docstring)."""
    planes = values.view(np.uint8).reshape(-1, values.itemsize).T.tobytes()
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)  # wbits -15: raw deflate, no zlib header
    deflated = packer.compress(planes) + packer.flush()
    padded = deflated + bytes(-len(deflated) % BASE85_GROUP)  # whole groups: 5 characters each
    return {"bytes": len(deflated), "data": base64.b85encode(padded).decode("ascii")}


def _summary(ckpt: dict, parameters: int) -> dict:
    """What the page shows about the model; the optional checkpoint fields may be missing."""
    cfg = ckpt["model_config"]
    summary = {"cell": cfg["model"], "layers": cfg["num_layers"], "rnn_size": cfg["rnn_size"],
               "embedding_size": cfg["embedding_size"], "parameters": int(parameters)}
    corpus, progress = ckpt.get("corpus") or {}, ckpt.get("progress") or {}
    if "name" in corpus:
        summary["corpus"] = str(corpus["name"])
    if "length" in corpus:
        summary["corpus_length"] = int(corpus["length"])
    if "step" in progress:
        summary["steps"] = int(progress["step"])
    best = progress.get("best_val_loss")
    if isinstance(best, (int, float)) and np.isfinite(best):
        summary["val_loss"] = float(best)
    return summary
