"""Character vocabulary: Unicode text <-> index sequences <-> one-hot vectors.

One entry per distinct code point, sorted, so the same text always gives the same indices.
Encoding works on whole arrays of code points (numpy), which keeps a 1 GB corpus fast.
A vocabulary for items (a list of names, titles, ...) has one more index after the characters:
the item marker, which starts and ends every item. It is no character, so no text can hold it.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from charrnn.errors import CharRNNError


class UnknownCharacterError(CharRNNError, ValueError):
    """Text holds characters that are not in the vocabulary."""


def code_points(text: str) -> np.ndarray:
    """The code points of `text` as a uint32 array, without a Python loop."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def describe_chars(chars: Iterable[str], limit: int = 5) -> str:
    """'é' (U+00E9), '\\x00' (U+0000): a readable list of characters for error messages."""
    chars = list(chars)
    shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


MARKER = "<item>"  # how the item marker is written where symbols are listed: longer than any character


class Vocab:
    """A sorted list of characters and the index of each; with `items`, the item marker after them."""

    def __init__(self, chars: Sequence[str], items: bool = False):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise CharRNNError("a vocabulary must be distinct single characters")
        if not chars:
            raise CharRNNError("a vocabulary needs at least one character")
        self.chars = sorted(chars)
        self.items = items
        self._points = np.array([ord(c) for c in self.chars], dtype=np.uint32)  # sorted too

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls.from_code_points(np.unique(code_points(text)))

    @classmethod
    def from_code_points(cls, points: np.ndarray, items: bool = False) -> Vocab:
        return cls([chr(p) for p in np.unique(points)], items)

    @property
    def marker(self) -> int | None:
        """The item marker's index (the last one), or None for a vocabulary of running text."""
        return len(self.chars) if self.items else None

    @property
    def symbols(self) -> list[str]:
        """What each index stands for: the characters, then MARKER for items."""
        return self.chars + [MARKER] * self.items

    def __len__(self) -> int:
        return len(self.chars) + self.items

    def __contains__(self, char: str) -> bool:
        return char in self.chars

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars and self.items == other.items

    @property
    def index_dtype(self) -> np.dtype:
        """The smallest unsigned integer type that holds every index."""
        for dtype in (np.uint8, np.uint16, np.uint32):
            if len(self) - 1 <= np.iinfo(dtype).max:
                return np.dtype(dtype)
        raise AssertionError("unreachable: Unicode has fewer than 2**32 code points")

    def encode_points(self, points: np.ndarray, skip_unknown: bool = False) -> np.ndarray:
        """Map code points to indices (in `index_dtype`)."""
        idx = np.searchsorted(self._points, points).clip(max=len(self.chars) - 1)
        known = self._points[idx] == points
        if not known.all():
            if not skip_unknown:
                unknown = [chr(p) for p in dict.fromkeys(points[~known].tolist())]
                raise UnknownCharacterError(
                    f"{describe_chars(unknown)} {'is' if len(unknown) == 1 else 'are'} not in this "
                    f"model's vocabulary; remove {'it' if len(unknown) == 1 else 'them'} "
                    "or pass --skip-unknown to drop unknown characters")
            idx = idx[known]
        return idx.astype(self.index_dtype)

    def encode(self, text: str, skip_unknown: bool = False) -> list[int]:
        """Text -> list of indices. Unknown characters raise, or are dropped with `skip_unknown`."""
        return self.encode_points(code_points(text), skip_unknown).tolist()

    def decode(self, indices: Iterable[int]) -> str:
        """Indices -> text; the item marker, being no character, is left out."""
        chars = self.chars
        return "".join(chars[i] for i in indices if i < len(chars))

    def one_hot(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Indices (...) -> float one-hot vectors (..., V)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return torch.nn.functional.one_hot(idx, len(self)).float()

    def to_list(self) -> list[str]:
        """Plain, JSON-able form stored in checkpoints."""
        return list(self.chars)
