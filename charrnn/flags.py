"""Command-line plumbing shared by train.py and generate.py: checked flag types, one-line errors."""
from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable

import torch

from charrnn.errors import CharRNNError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, naming the flag and pointing to --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind: type, low: float, high: float = math.inf, low_open: bool = False, what: str = ""):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
            raise argparse.ArgumentTypeError(f"{text} is out of range; expected {what}")
        return value
    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _number(int, 1, 10**9, what="an integer >= 1")
nonnegative_int = _number(int, 0, 10**9, what="an integer >= 0")
positive_float = _number(float, 0, 1e6, low_open=True, what="a number > 0")
nonnegative_float = _number(float, 0, 1e6, what="a number >= 0")
fraction = _number(float, 0, 0.9, what="a fraction from 0 to 0.9")
unit_interval = _number(float, 0, 1, what="a number from 0 to 1")
probability = _number(float, 0, 1, low_open=True, what="a probability in (0, 1]")
threads = _number(int, 1, 1024, what="an integer from 1 to 1024")
seed = _number(int, 0, 2**63 - 1, what="an integer from 0 to 2**63-1")


def duration(text: str) -> float:
    """'90s', '10m', '1.5h' or plain seconds -> seconds, more than 0 and at most a year."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 10m or 1.5h")
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if not 0 < seconds <= 366 * 86400:
        raise argparse.ArgumentTypeError(f"{text} is out of range; expected more than 0s and at most a year")
    return seconds


def run_main(main: Callable[[], int | None]) -> None:
    """Run a script's main: CharRNNError becomes `error: ...` and exit 1; Ctrl-C exits 130 quietly."""
    try:
        sys.exit(main())
    except CharRNNError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except (MemoryError, torch.OutOfMemoryError) as e:
        print(f"error: out of memory ({str(e).splitlines()[0][:80] if str(e) else 'MemoryError'}); use a smaller "
              "--rnn-size, --batch-size or --num-samples", file=sys.stderr)
        sys.exit(1)
    except RuntimeError as e:
        if "can't allocate memory" not in str(e) and "out of memory" not in str(e):
            raise
        print("error: out of memory; use a smaller --rnn-size, --batch-size or --num-samples", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # e.g. `python generate.py | head`: the reader left, nothing to report
        sys.stderr.close()
        sys.exit(0)
