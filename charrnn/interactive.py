"""The interactive sampling prompt: type a beginning, watch the model continue it.

Each line is fed to the model after what came before (`:reset` forgets it); an empty line
continues the last output. Commands start with ':'. When stdin is not a terminal, the prompt can
be scripted: every input line gets exactly one output line, with no prompt decoration. Text gets
its answer; a command gets `ok: ...` (:info and :help their text); a line that cannot be done gets
`error: ...`. Backslashes, newlines and carriage returns in any output line are written as
\\\\, \\n and \\r.

With a model of items each line is the start of a new item (an empty line: the next item, from
--prime), and `:label X` picks the label.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from typing import TextIO

import numpy as np
import torch

from charrnn.config import SampleConfig
from charrnn.errors import CharRNNError
from charrnn.items import label_index
from charrnn.model import CharRNN, NumpyStep, State
from charrnn.sample import Streamer, generate, generate_items
from charrnn.vocab import Vocab

HELP = """Type text and press Enter: the model continues it. An empty line continues the last output.
  :temp X    temperature (0 = greedy)      :topk N   keep the N likeliest characters (0 = off)
  :topp P    nucleus sampling (1 = off)    :len N    characters per answer
  :seed N    reseed the sampler            :reset    forget the text so far
  :info      model and settings            :help     this text
  :quit      leave (or Ctrl-D; Ctrl-C stops a generation, and leaves at the prompt)"""
ITEMS_HELP = """Type the start of an item and press Enter: the model finishes it. An empty line makes the next item.
  :label X   items of label X (:label alone: a random label each time)
  :temp X    temperature (0 = greedy)      :topk N   keep the N likeliest characters (0 = off)
  :topp P    nucleus sampling (1 = off)    :len N    the most characters an item may take
  :seed N    reseed the sampler            :info     model and settings
  :help      this text                     :quit     leave (or Ctrl-D)"""


class Session:
    """The text so far (as a model state) and the sampling settings."""

    def __init__(self, model: CharRNN, vocab: Vocab, config: SampleConfig, info: str, out: TextIO,
                 skip_unknown: bool = False, prime: str = "", labels: list[str] = ()):
        self.model, self.vocab, self.config, self.info, self.out = model, vocab, config, info, out
        self.skip_unknown, self.labels, self.label = skip_unknown, list(labels), None
        self.generator = np.random.default_rng(config.seed)
        self.step = NumpyStep(model)
        self.state: State | None = None
        self.pending = ""  # the last character shown but not yet fed to the model
        self.one_line = False  # escape line breaks so that each output is one line (for scripts)
        self.prime = prime  # items: the start of an item asked for with an empty line
        if prime and not vocab.items:
            self.feed(prime)

    @torch.no_grad()
    def feed(self, text: str) -> None:
        """Make `text` the start of the text so far, without answering it (--prime)."""
        seen = self.vocab.encode(text, self.skip_unknown)
        if seen[:-1]:
            self.model.eval()
            device = next(self.model.parameters()).device
            _, self.state = self.model(torch.tensor([seen[:-1]], device=device), self.state)
        self.pending = self.vocab.chars[seen[-1]] if seen else self.pending

    def handle(self, line: str) -> bool:
        """Act on one input line; False means quit."""
        if line.startswith(":"):
            return self.command(line)
        if self.vocab.items:
            return self.item(line or self.prime)
        self.vocab.encode(line, self.skip_unknown)  # check the whole line before touching the state
        prime = self.pending + line  # empty at the start: generate() begins a fresh text
        stream = Streamer(self.out)
        on_text = (lambda text: stream(escape_line_breaks(text))) if self.one_line else stream
        try:
            with stream:  # shows what it holds, on Ctrl-C too
                texts, state = generate(self.model, self.vocab, self.config, prime, state=self.state,
                                        generator=self.generator, on_text=on_text, skip_unknown=self.skip_unknown,
                                        step=self.step)
        except KeyboardInterrupt:  # stop this answer, keep the text from before it
            self.out.write("\n(stopped)\n")
            self.out.flush()
            return True
        self.state, self.pending = state, texts[0][-1]
        self.out.write("\n")
        self.out.flush()
        return True

    def item(self, prime: str) -> bool:
        """Show one whole item that begins with `prime`."""
        draw = generate_items(self.model, self.vocab, self.config, prime, label=self.label,
                              generator=self.generator, skip_unknown=self.skip_unknown, step=self.step)
        self.say(draw.texts[0] + ("" if draw.whole[0] else f" [cut at :len {self.config.length}]"))
        return True

    def command(self, line: str) -> bool:
        name, _, arg = line[1:].strip().partition(" ")
        arg = arg.strip()
        if name in ("quit", "q", "exit"):
            return False
        if name == "help":
            self.say(ITEMS_HELP if self.vocab.items else HELP)
        elif name == "label":
            self.label = label_index(self.labels, arg or None)
            self.say(f"ok: label {arg or 'random'}")
        elif name == "info":
            c = self.config
            self.say(f"{self.info}\nsettings: temperature {c.temperature}, top-k {c.top_k or 'off'}, "
                     f"top-p {c.top_p or 'off'}, length {c.length}")
        elif name == "reset":
            self.state, self.pending = None, ""
            self.say("ok: state forgotten")
        elif name in SETTINGS:
            field, kind, off = SETTINGS[name]
            value = parse_number(kind, name, arg)
            self.config = replace(self.config, **{field: None if value == off else value})
            if field == "seed":
                self.generator = np.random.default_rng(value)
            value = getattr(self.config, field)
            self.say(f"ok: {field.replace('_', '-')} {'off' if value is None else value}")
        else:
            raise CharRNNError(f"unknown command :{name}; type :help for the list")
        return True

    def say(self, text: str) -> None:
        self.out.write((escape_line_breaks(text) if self.one_line else text) + "\n")
        self.out.flush()


# command -> (SampleConfig field, type, the value that switches the filter off)
SETTINGS = {"temp": ("temperature", float, None), "topk": ("top_k", int, 0),
            "topp": ("top_p", float, 1.0), "len": ("length", int, None), "seed": ("seed", int, None)}


def escape_line_breaks(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def parse_number(kind: type, name: str, text: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise CharRNNError(f":{name} needs {'an integer' if kind is int else 'a number'}, "
                           f"not {text!r}") from None


def run(session: Session, stdin: TextIO | None = None) -> None:
    """Read lines (from sys.stdin by default) until :quit, Ctrl-D, or Ctrl-C at the prompt."""
    stdin = stdin or sys.stdin
    tty = stdin.isatty() and session.out.isatty()
    session.one_line = not tty
    if tty:
        import readline  # noqa: F401  (line editing and history for input())
        session.say(f"{session.info}\n:help for commands, Ctrl-D to leave")
    while True:
        try:
            line = input("> ") if tty else stdin.readline()
        except (EOFError, KeyboardInterrupt):
            break
        if not tty and not line:
            break
        try:
            if not session.handle(line.rstrip("\r\n") if not tty else line):
                break
        except CharRNNError as e:
            session.say(f"error: {e}")
    if tty:
        session.say("")
