"""Command-line plumbing shared by train.py and generate.py: flags derived from the config
dataclasses, checked as they are parsed, and one-line errors. No torch import: --help is instant."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any

from charrnn import config as cfg
from charrnn.errors import CharRNNError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, naming the flag and pointing to --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def checked(kind: type, check: cfg.Range | None = None, duration: bool = False) -> Callable[[str], Any]:
    """An argparse type: convert the text, then apply the same range check as the config."""
    def parse(text: str):
        try:
            value = cfg.parse_duration(text) if duration else kind(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(
                str(e) if duration else f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if check is not None and value not in check:
            raise argparse.ArgumentTypeError(f"{text} is out of range; expected {check.words}")
        return value
    parse.__name__ = check.words if check else kind.__name__  # argparse names the type in some messages
    return parse


def add_options(parser: argparse._ActionsContainer, cls: type, names: Iterable[str]) -> None:
    """Add the flags of `cls`'s fields `names`, typed, checked and with their defaults in the help.

    Every flag defaults to None, so that only the flags a user gives override a config.
    """
    by_name = {f.name: f for f in fields(cls)}
    for name in names:
        f, meta = by_name[name], by_name[name].metadata
        kind = cfg.value_type(f)
        if kind is bool:  # a switch: given or not
            parser.add_argument("--" + name.replace("_", "-"), action="store_true", default=None, help=meta["help"])
            continue
        help_text = meta["help"] + (f" (default {f.default})" if f.default is not None else "")
        parser.add_argument("--" + name.replace("_", "-"), help=help_text, choices=meta["choices"],
                            type=None if kind is str else checked(kind, meta["check"], meta["duration"]))


def given(args: argparse.Namespace) -> dict:
    """The flags the user actually passed."""
    return {k: v for k, v in vars(args).items() if v is not None}


def run_main(main: Callable[[], int | None]) -> None:
    """Run a script's main: CharRNNError becomes `error: ...` and exit 1; Ctrl-C exits 130 quietly."""
    try:
        sys.exit(main())
    except CharRNNError as e:
        fail(str(e))
    except MemoryError as e:
        fail(f"out of memory ({str(e).splitlines()[0][:80] if str(e) else 'MemoryError'}); use a smaller "
             "--rnn-size, --batch-size or --num-samples")
    except RuntimeError as e:  # torch.OutOfMemoryError is one, and so are oneDNN's allocation failures
        if "can't allocate memory" not in str(e) and "out of memory" not in str(e):
            raise
        fail("out of memory; use a smaller --rnn-size, --batch-size or --num-samples")
    except UnicodeEncodeError as e:  # e.g. PYTHONIOENCODING=ascii and a Chinese prime
        sys.stdout = open(sys.stdout.fileno(), "w", encoding="utf-8", errors="replace", closefd=False)  # so exit's flush can't fail again
        fail(f"the output's encoding ({e.encoding}) cannot write {e.object[e.start:e.end]!r}; "
             "set PYTHONIOENCODING=utf-8 or use a UTF-8 terminal")
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # e.g. `python generate.py | head`: the reader left, nothing to report
        sys.stderr.close()
        sys.exit(0)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)
