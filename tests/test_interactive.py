"""The interactive prompt: the Session in this process, then generate.py --interactive through a
pipe and through a pseudo-terminal (prompt, streaming, Ctrl-C, Ctrl-D)."""
import io
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charrnn import checkpoint
from charrnn.interactive import HELP, Session, run
import numpy as np

from charrnn.config import SampleConfig
from charrnn.sample import generate

REPO = Path(__file__).resolve().parent.parent
GENERATE = REPO / "generate.py"


pytestmark = pytest.mark.usefixtures("one_thread")


def new_session(trained, seed=0, out=None, **config) -> Session:
    model, vocab = trained
    config = SampleConfig(**{"length": 20, "temperature": 1.0, "seed": seed, **config})
    return Session(model, vocab, config, "INFO LINE", out or io.StringIO())


def piped(session: Session, text: str) -> list[str]:
    """Feed text to the prompt as a pipe would; the output lines."""
    run(session, io.StringIO(text))
    return session.out.getvalue().splitlines()


def unescape(line: str) -> str:
    """An answer as the model wrote it (piped answers escape \\, newline and carriage return)."""
    return line.encode().decode("unicode_escape")


def greedy(trained, prime: str, length: int) -> str:
    model, vocab = trained
    return generate(model, vocab, SampleConfig(length=length, temperature=0.0), prime)[0][0]


# ---------------------------------------------------------------- the Session, in this process


def test_piped_lines_are_answered_with_one_line_each(trained):
    lines = piped(new_session(trained, length=60), "the\nand\n\n")
    assert len(lines) == 3
    assert all(len(unescape(line)) == 60 for line in lines)
    assert not any(line.startswith(">") for line in lines)


def test_piped_answers_escape_line_breaks(trained):
    model, vocab = trained
    config = SampleConfig(length=600, temperature=1.0)
    expected = generate(model, vocab, config, "the", generator=np.random.default_rng(0))[0][0]
    assert "\n" in expected  # the corpus has a newline every 11 words
    lines = piped(new_session(trained, seed=0, length=600), "the\n")
    assert lines == [expected.replace("\\", "\\\\").replace("\n", "\\n")]


def test_empty_line_continues_the_last_output(trained):
    session = new_session(trained, temperature=0.0, length=15)
    session.handle("ab")
    session.handle("")
    whole = greedy(trained, "ab", 30)
    assert session.out.getvalue() == whole[:15] + "\n" + whole[15:] + "\n"


@pytest.mark.parametrize("run", ["tiny_checkpoint", "copy_checkpoint"])
def test_each_line_is_fed_after_the_text_so_far(run, request):
    trained = checkpoint.build_model(checkpoint.load(request.getfixturevalue(run)))
    session = new_session(trained, temperature=0.0, length=30)
    session.handle("ab")
    first = session.out.getvalue()[:-1]
    session.handle(" the")  # with the copy attention, its memory of 48 steps goes round
    assert session.out.getvalue() == f"{first}\n{greedy(trained, 'ab' + first + ' the', 30)}\n"


def test_reset_forgets_the_text_so_far(trained):
    lines = piped(new_session(trained, temperature=0.0, length=15), "ab\n:reset\nthe\n")
    assert lines[1:] == ["ok: state forgotten", greedy(trained, "the", 15).replace("\n", "\\n")]


@pytest.mark.parametrize("line, field, value, said", [
    (":temp 0.5", "temperature", 0.5, "ok: temperature 0.5"), (":temp 0", "temperature", 0.0, "ok: temperature 0.0"),
    (":topk 5", "top_k", 5, "ok: top-k 5"), (":topk 0", "top_k", None, "ok: top-k off"),
    (":topp 0.9", "top_p", 0.9, "ok: top-p 0.9"), (":topp 1", "top_p", None, "ok: top-p off"),
    (":len 12", "length", 12, "ok: length 12"), (":seed 3", "seed", 3, "ok: seed 3")])
def test_settings_commands_change_the_config_and_say_so_in_one_line(trained, line, field, value, said):
    """Issue 11 item 7: every command answers one line, so a script can pair inputs and outputs."""
    session = new_session(trained, top_k=3, top_p=0.5)
    assert session.handle(line) is True
    assert getattr(session.config, field) == value
    assert session.out.getvalue() == said + "\n"


def test_len_changes_the_answer_length(trained):
    lines = piped(new_session(trained), ":len 7\nthe\n:len 23\n\n")
    assert lines[0] == "ok: length 7" and lines[2] == "ok: length 23"
    assert [len(unescape(line)) for line in lines[1::2]] == [7, 23]


def test_seed_makes_the_next_answers_repeatable(trained):
    lines = piped(new_session(trained, length=40), "".join(f":seed {seed}\n:reset\nthe\n" for seed in (3, 3, 4)))
    answers = [line for line in lines if not line.startswith("ok: ")]
    assert len(answers) == 3
    assert answers[0] == answers[1] != answers[2]


@pytest.mark.parametrize("line", [
    ":temp -1", ":temp nan", ":temp inf", ":temp abc", ":temp", ":topk -2", ":topk 2.5", ":topp 0",
    ":topp 1.5", ":topp x", ":len 0", ":len -3", ":len abc", ":seed -1", ":seed abc",
    ":seed 99999999999999999999999", ":bogus", ":"])
def test_bad_values_and_unknown_commands_print_one_error_line_and_continue(trained, line):
    session = new_session(trained)
    config = session.config
    lines = piped(session, f"{line}\nthe\n")
    assert len(lines) == 2
    assert lines[0].startswith("error: ")
    assert len(unescape(lines[1])) == 20  # the session went on and answered the next line
    assert session.config == config


def test_unknown_character_is_an_error_and_leaves_the_text_alone(trained):
    lines = piped(new_session(trained, temperature=0.0), "thé\nthe\n")
    assert lines[0].startswith("error: ") and "'é'" in lines[0]
    assert unescape(lines[1]) == greedy(trained, "the", 20)


def test_info_and_help_are_one_line_each_when_piped(trained):
    """Issue 11 item 7: multi-line outputs are escaped into one line, like answers."""
    lines = piped(new_session(trained, top_k=5), ":info\n:help\n")
    assert [unescape(line) for line in lines] == [
        "INFO LINE\nsettings: temperature 1.0, top-k 5, top-p off, length 20", HELP]


@pytest.mark.parametrize("line", [":quit", ":q", ":exit"])
def test_quit_ends_the_session(trained, line):
    assert piped(new_session(trained), f"{line}\nthe\n") == []


class InterruptedOut(io.StringIO):
    """Output where the first write while `armed` raises KeyboardInterrupt (a Ctrl-C): the answer's
    first character, which the streamer shows at once, mid-answer."""
    armed = False

    def write(self, text):
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_during_an_answer_stops_it_and_keeps_the_text_from_before(trained):
    session = new_session(trained, out=InterruptedOut(), temperature=0.0, length=30)
    session.handle("ab")
    session.out.armed = True
    assert session.handle(" the") is True
    assert session.out.getvalue().endswith("\n(stopped)\n")
    session.handle(" the")  # as if the interrupted line had never been typed
    reference = new_session(trained, temperature=0.0, length=30)
    reference.handle("ab")
    reference.handle(" the")
    assert session.out.getvalue().splitlines()[-1] == reference.out.getvalue().splitlines()[-1]


# ---------------------------------------------------------------- generate.py --interactive, a pipe


def test_generate_interactive_through_a_pipe(tiny_checkpoint):
    script = "the\n:len 5\nand\n:bogus\n\n:temp 0\n:quit\nnever answered\n"
    result = subprocess.run(
        [sys.executable, str(GENERATE), "--checkpoint", str(tiny_checkpoint), "--threads", "1",
         "--interactive", "--length", "40", "--seed", "1"],
        input=script, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 6, lines  # one output line per input line, up to :quit
    assert [len(unescape(line)) for line in (lines[0], lines[2], lines[4])] == [40, 5, 5]
    assert lines[1] == "ok: length 5" and lines[5] == "ok: temperature 0.0"
    assert lines[3].startswith("error: unknown command :bogus")


# ---------------------------------------------------------------- generate.py --interactive, a terminal

# Make the pseudo-terminal the child's controlling terminal (so that Ctrl-C there sends SIGINT),
# with SIGINT at its default so that Python installs its handler, then run generate.py.
CONTROLLING_TTY = ("import fcntl, os, signal, sys, termios; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                   "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")


class Terminal:
    """generate.py --interactive on a pseudo-terminal; every read has a deadline."""

    def __init__(self, *args: str):
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CONTROLLING_TTY, str(GENERATE), "--interactive", "--threads", "1", *args],
            stdin=slave, stdout=slave, stderr=slave, cwd=REPO, start_new_session=True,
            env={**os.environ, "TERM": "dumb"})
        os.close(slave)
        self.unread = b""

    def _read(self, deadline: float, waiting_for: str) -> None:
        ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
        try:
            chunk = os.read(self.master, 65536) if ready else b""
        except OSError:  # EIO: the child has closed the terminal
            chunk = b""
        if not chunk:
            raise AssertionError(f"{waiting_for} did not come; the terminal showed {self.unread[-300:]!r}")
        self.unread += chunk

    def read_until(self, marker: bytes, timeout: float = 60) -> bytes:
        """The output up to `marker`, which is consumed with it."""
        deadline = time.monotonic() + timeout
        while marker not in self.unread:
            self._read(deadline, repr(marker))
        before, _, self.unread = self.unread.partition(marker)
        return before

    def read_at_least(self, n: int, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.unread) < n:
            self._read(deadline, f"{n} bytes")
        data, self.unread = self.unread, b""
        return data

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def exit_code(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:  # keep draining so that the child never blocks on a full terminal
                self._read(min(deadline, time.monotonic() + 0.2), "")
            except AssertionError:
                pass
        return self.proc.wait(timeout=1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminal():
    opened = []

    def start(*args: str) -> Terminal:
        opened.append(Terminal(*args))
        return opened[-1]
    yield start
    for t in opened:
        t.close()


def test_terminal_prompt_answers_and_ctrl_d_leaves(tiny_checkpoint, terminal):
    t = terminal("--checkpoint", str(tiny_checkpoint), "--length", "30", "--seed", "1")
    assert b":help for commands" in t.read_until(b"> ")
    t.write(b"the\r")
    answer = t.read_until(b"> ")
    assert answer.startswith(b"the")  # the echo of the typed line
    assert len(answer.replace(b"\r", b"").split(b"\n", 1)[1].strip(b"\n")) >= 30 - 5  # up to 5 newlines
    t.write(b"\x04")  # Ctrl-D at the empty prompt
    assert t.exit_code() == 0


def test_terminal_ctrl_c_stops_a_long_generation_and_returns_to_the_prompt(tiny_checkpoint, terminal):
    t = terminal("--checkpoint", str(tiny_checkpoint), "--seed", "1")
    t.read_until(b"> ")
    t.write(b":len 1000000\r")
    t.read_until(b"> ")
    t.write(b"the\r")
    t.read_until(b"the")
    t.read_at_least(500)  # the answer streams: its first characters come long before its end
    t.write(b"\x03")  # Ctrl-C
    t.read_until(b"(stopped)", timeout=30)
    t.read_until(b"> ", timeout=30)
    t.write(b":len 5\r")
    t.read_until(b"> ")
    t.write(b"and\r")
    assert t.read_until(b"> ").startswith(b"and")  # the session goes on
    t.write(b"\x04")
    assert t.exit_code() == 0


def test_a_stop_string_that_begins_in_the_typed_line_stops_the_answer(trained):
    """Issue 11 item 3, in the prompt: the line typed and the answer form the text the stop is found in."""
    first = greedy(trained, "the", 1)
    session = new_session(trained, temperature=0.0, length=30, stop="e" + first)
    session.handle("the")
    assert session.out.getvalue() == first + "\n"
