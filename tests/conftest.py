"""Shared fixtures: every test gets its own corpus cache, and a small text built here."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHAKESPEARE = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Corpus caches go to a temporary folder, never into the checkout."""
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def make_text(n_chars: int = 20_000) -> str:
    """A repetitive but not trivial English-like text, built deterministically."""
    words = ("the quick brown fox jumps over the lazy dog and then it rests in the warm sun "
             "while a small bird sings a song of summer days").split()
    out, i, size = [], 0, 0
    while size < n_chars:
        out.append(words[(i * 7 + i // 3) % len(words)] + (".\n" if i % 11 == 10 else " "))
        size, i = size + len(out[-1]), i + 1
    return "".join(out)[:n_chars]


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "toy.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path
