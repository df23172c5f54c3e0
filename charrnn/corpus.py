"""Where text comes from, and its encoding into a memory-mapped array of indices.

A corpus is a file, a directory of files, a name (`corpora/NAME.txt`, downloaded on first use for
the known ones) or, by default, the Python standard library's own source read from the running
interpreter, which every machine has. Text is streamed in chunks twice (vocabulary, then indices)
into a cache file, so a corpus larger than memory trains with flat memory use.
"""
from __future__ import annotations

import codecs
import hashlib
import http.client
import json
import os
import re
import stat
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.errors import CharRNNError
from charrnn.files import atomic_write, cache_dir, corpora_dir
from charrnn.vocab import Vocab, code_points

DEFAULT_CORPUS = "stdlib"
CACHE_FORMAT = 2  # 2: byte-order marks are dropped, UTF-16/32 files with one are read as such
# A byte-order mark says how a file is encoded; read_chunks trusts it over a Unicode --encoding.
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
CHUNK_BYTES = 1 << 22  # 4 MiB of text at a time keeps memory flat whatever the corpus size


@dataclass(frozen=True)
class Download:
    url: str
    sha256: str


DOWNLOADS = {
    "tinyshakespeare": Download(
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
}


@dataclass(frozen=True)
class Source:
    """The files of a corpus, in reading order, and how to decode them; for a folder, also the
    files left out, each with why ("empty", "binary", "not valid utf-8")."""
    name: str
    files: tuple[Path, ...]
    encoding: str = "utf-8"
    skipped: tuple[tuple[Path, str], ...] = ()


class NotText(CharRNNError):
    """A file that is not text in its encoding; `reason` says so in a few words."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Corpus:
    name: str
    vocab: Vocab
    tokens: np.ndarray  # (N,) memory-mapped indices in vocab.index_dtype


def stdlib_files() -> tuple[Path, ...]:
    """The top-level modules of the running Python's standard library: real text, always here."""
    return tuple(sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")))


def check_encoding(encoding: str) -> str:
    """The encoding, if Python has a text codec of that name."""
    try:
        "".encode(encoding)  # unlike codecs.lookup, rejects bytes-to-bytes codecs such as hex or zlib
    except LookupError:
        raise CharRNNError(f"unknown --encoding {encoding!r}; try utf-8, latin-1 or utf-16") from None
    return encoding


def resolve(spec: str | None, encoding: str = "utf-8") -> Source:
    """Turn a --corpus value (path, directory, name or None) into a Source."""
    check_encoding(encoding)
    if spec is not None and not spec.strip():
        raise CharRNNError("--corpus is empty; give a text file, a directory or a corpus name")
    if spec is None or spec == DEFAULT_CORPUS:
        return Source(DEFAULT_CORPUS, stdlib_files(), encoding)
    path = Path(spec).expanduser()
    if path.is_dir():
        files, skipped = _text_files_below(path, encoding)
        return Source(path.resolve().name, files, encoding, skipped)
    if path.exists():
        if not stat.S_ISREG(path.stat().st_mode):
            raise CharRNNError(f"corpus {spec} is not a regular file (a FIFO or device?); give a text file")
        return Source(path.stem, (path,), encoding)
    if re.fullmatch(r"[\w.-]+", spec):
        named = corpora_dir() / f"{spec}.txt"
        if not named.exists() and spec in DOWNLOADS:
            download(DOWNLOADS[spec], named)
        if named.exists():
            return Source(spec, (named,), encoding)
    known = ", ".join(sorted({*DOWNLOADS, *(p.stem for p in corpora_dir().glob("*.txt"))}))
    raise CharRNNError(f"corpus {spec!r} not found: give a text file, a directory, or a name of "
                       f"corpora/NAME.txt (known: {known})")


def _text_files_below(root: Path, encoding: str) -> tuple[tuple[Path, ...], tuple[tuple[Path, str], ...]]:
    """The non-hidden regular files below root in sorted order: those that are whole text in the
    encoding, and the others with why. Each file is decoded once here, so that one bad file among
    thousands is left out instead of stopping the run later (115 MB of /usr/include: 0.2 s warm)."""
    files, skipped = [], []
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts) or not path.is_file():
            continue
        reason = _why_not_text(path, encoding)
        if reason:
            skipped.append((path, reason))
        else:
            files.append(path)
    if not files:
        left_out = f"; {skipped_summary(Source(root.name, (), encoding, tuple(skipped)))}" if skipped else ""
        raise CharRNNError(f"directory {root} has no text files (hidden files are skipped{left_out}); "
                           "add some text files to it")
    return tuple(files), tuple(skipped)


def _why_not_text(path: Path, encoding: str) -> str | None:
    """None for a file that decodes whole, else why not: "empty", "binary", "not valid ENCODING"..."""
    empty = True
    try:
        for _ in read_file(path, encoding):
            empty = False
    except NotText as e:
        return e.reason
    return "empty" if empty else None


def skipped_summary(source: Source, names: int = 3) -> str:
    """One line: how many files were left out and why, the first few of each, and what reads them."""
    top = Path(os.path.commonpath([*source.files, *(p for p, _ in source.skipped)]))
    top = top if top.is_dir() else top.parent
    reasons: dict[str, list[Path]] = {}
    for path, reason in source.skipped:
        reasons.setdefault(reason, []).append(path)
    parts = []
    for reason, paths in reasons.items():
        shown = ", ".join(p.relative_to(top).as_posix() for p in paths[:names])
        more = ", ..." if len(paths) > names else ""
        # latin-1 decodes any bytes, but wide text read as latin-1 is full of NULs: binary
        latin1_reads = reason.startswith("not valid") and not _wide(source.encoding)
        hint = "; --encoding latin-1 reads them" if latin1_reads else ""
        parts.append(f"{len(paths):,} {reason} ({shown}{more}{hint})")
    return f"skipped {len(source.skipped):,} files of {source.name}: " + ", ".join(parts)


def file_encoding(head: bytes, encoding: str) -> str:
    """The encoding to read a file with: a Unicode encoding gives way to the file's byte-order mark."""
    if codecs.lookup(encoding).name.startswith(("utf-8", "utf-16", "utf-32")):
        for bom, name in BOMS:
            if head.startswith(bom):
                return name
    return encoding


def _wide(encoding: str) -> bool:
    return codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))


def _nul_offset(head: bytes, encoding: str) -> int | None:
    """Where a NUL byte marks the file as binary (UTF-16 and UTF-32 text is full of them: never)."""
    if _wide(encoding):
        return None
    at = head.find(b"\0")
    return None if at < 0 else at


def download(item: Download, dest: Path) -> None:
    """Fetch item.url to dest, verifying its sha256; the file appears only if the checksum matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {dest.name} from {item.url}", file=sys.stderr)
    try:
        with urllib.request.urlopen(item.url, timeout=60) as response:
            data = response.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise CharRNNError(f"could not download {item.url} ({reason}); with no network, "
                           f"save that file as {dest}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != item.sha256:
        raise CharRNNError(f"download of {dest.name} has sha256 {digest[:12]}..., expected "
                           f"{item.sha256[:12]}...; save the right file as {dest}")
    atomic_write(dest, lambda f: f.write(data))


def read_chunks(source: Source) -> Iterator[str]:
    """Decoded text of every file, a few MiB at a time; a binary file or a decode error says where."""
    for path in source.files:
        yield from read_file(path, source.encoding)


def read_file(path: Path, encoding: str) -> Iterator[str]:
    """Decoded text of one file, a few MiB at a time; raises NotText saying where it is not text."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CharRNNError(f"cannot read corpus file {path}: {e.strerror}") from None
    with f:
        raw = f.read(CHUNK_BYTES)
        encoding = file_encoding(raw, encoding)
        at = _nul_offset(raw, encoding)  # binary before encoding: no --encoding makes it text
        if at is not None:
            raise NotText(f"{path} looks binary (NUL byte at offset {at}); give a text file", "binary")
        yield from _decode(f, raw, path, encoding)


def _decode(f, raw: bytes, path: Path, encoding: str) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    while True:
        start = offset - len(decoder.getstate()[0])  # file offset of the bytes decoded next
        try:
            text = decoder.decode(raw, final=not raw)
        except UnicodeError as e:  # UnicodeDecodeError, or UTF-16/32 without a byte-order mark
            if isinstance(e, UnicodeDecodeError):
                where, reason = f"byte offset {start + e.start}", f"not valid {encoding}"
            else:
                where, reason = "no byte-order mark", f"{encoding} without a byte-order mark"
            raise NotText(f"{path} is not valid {encoding} ({where}); pass --encoding (e.g. --encoding "
                          "latin-1) or fix the file", reason) from None
        if "\0" in text:
            at = start + len(text[:text.index("\0")].encode(encoding))
            raise NotText(f"{path} looks binary (NUL byte at offset {at}); give a text file", "binary")
        offset += len(raw)
        if text:
            yield text
        if not raw:
            break
        raw = f.read(CHUNK_BYTES)


def load(source: Source) -> Corpus:
    """Encode a source (or reuse its cache) and return it memory-mapped."""
    folder = cache_dir()
    key = _cache_key(source)
    meta_path, tokens_path = folder / f"{key}.json", folder / f"{key}.tokens"
    if not meta_path.exists():
        start = time.perf_counter()
        try:
            _build_cache(source, meta_path, tokens_path)
        except OSError as e:
            raise CharRNNError(f"cannot write the corpus cache in {folder} ({e.strerror or e}); "
                               "free some space or set CHARRNN_CACHE_DIR to a writable folder") from None
        print(f"encoded {source.name} in {time.perf_counter() - start:.1f}s (cached in {folder})",
              file=sys.stderr)
    meta = json.loads(meta_path.read_text())
    vocab = Vocab(meta["chars"])
    tokens = np.memmap(tokens_path, dtype=vocab.index_dtype, mode="r", shape=(meta["length"],))
    return Corpus(source.name, vocab, tokens)


def _cache_key(source: Source) -> str:
    """Changes whenever a file is edited, renamed, added or removed, or the files left out change."""
    stamp = [CACHE_FORMAT, source.encoding]
    for path in source.files:
        try:
            st = path.stat()
        except OSError as e:
            raise CharRNNError(f"cannot read corpus file {path}: {e.strerror}") from None
        stamp.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    if source.skipped:  # only when there are some, so that the keys of earlier caches stay valid
        stamp.append({"skipped": [[str(path.resolve()), reason] for path, reason in source.skipped]})
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:24]


def _build_cache(source: Source, meta_path: Path, tokens_path: Path) -> None:
    points, length = np.zeros(0, dtype=np.uint32), 0
    for text in read_chunks(source):  # pass 1: vocabulary and length
        chunk = code_points(text)
        points = np.union1d(points, np.unique(chunk))
        length += len(chunk)
    if length == 0:
        what = f"file {source.files[0]}" if len(source.files) == 1 else f"{source.name}"
        raise CharRNNError(f"corpus {what} holds no text; give a file with some text")
    vocab = Vocab.from_code_points(points)
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tokens_path.with_name(f".{tokens_path.name}.{os.getpid()}")
    try:
        # pass 2: indices, appended to a plain file (a writable map would keep its dirty pages in RSS)
        with open(tmp, "wb") as f:
            for text in read_chunks(source):
                f.write(vocab.encode_points(code_points(text)).tobytes())
        os.replace(tmp, tokens_path)
    finally:
        tmp.unlink(missing_ok=True)
    meta = {"name": source.name, "chars": vocab.to_list(), "length": length,
            "files": [str(p) for p in source.files], "encoding": source.encoding,
            "skipped": [[str(p), reason] for p, reason in source.skipped]}
    atomic_write(meta_path, lambda f: f.write(json.dumps(meta).encode()))  # last: marks the cache complete
