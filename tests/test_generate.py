"""generate.py as a user runs it.

A subprocess costs ~1.5 s of importing torch, so the few checks that need a real process (output
and exit codes end to end, signals) run one; the many flag and checkpoint cases call the script's
main() in this process through flags.run_main, which is what `python generate.py` runs.
"""
import io
import json
import math
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import charrnn
from charrnn import checkpoint
from charrnn.config import ADAPT_LR, ADAPT_SEGMENT
from charrnn.errors import CharRNNError

REPO = Path(__file__).resolve().parent.parent
GENERATE = REPO / "generate.py"
# The child resets SIGINT to its default first, so Python installs its Ctrl-C handler even where
# the test runner was started with SIGINT ignored (a background job).
RESET_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")



def command(checkpoint_path, *args) -> list[str]:
    return [sys.executable, "-c", RESET_SIGINT, str(GENERATE), "--checkpoint", str(checkpoint_path),
            "--threads", "1", *args]


def run(checkpoint_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(command(checkpoint_path, *args), cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def assert_one_line_error(code: int, out: str, err: str, expected_code: int = 1) -> None:
    assert code == expected_code
    assert out == ""
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert "error:" in err


# ---------------------------------------------------------------- sampling, end to end


def test_output_is_the_prime_then_length_characters_and_seed_repeats_it(tiny_checkpoint):
    first = run(tiny_checkpoint, "--prime", "the ", "--length", "120", "--seed", "5")
    assert first.returncode == 0 and first.stderr == ""
    assert first.stdout.startswith("the ")
    assert len(first.stdout) == len("the ") + 120 + 1 and first.stdout.endswith("\n")
    assert run(tiny_checkpoint, "--prime", "the ", "--length", "120", "--seed", "5").stdout == first.stdout


def test_different_seeds_give_different_text(tiny_checkpoint, cli):
    outputs = {cli("--checkpoint", tiny_checkpoint, "--length", 60, "--seed", seed)[1] for seed in (1, 2)}
    assert len(outputs) == 2


def test_temperature_zero_repeats_without_a_seed(tiny_checkpoint, cli):
    args = ("--prime", "a ", "--length", "80", "--temperature", "0")
    separate = run(tiny_checkpoint, *args)
    code, out, _ = cli("--checkpoint", tiny_checkpoint, *args)
    assert separate.returncode == code == 0
    assert separate.stdout == out and len(out) == 2 + 80 + 1


def test_num_samples_prints_each_sample_with_the_prime(tiny_checkpoint, cli):
    code, out, _ = cli("--checkpoint", tiny_checkpoint, "--prime", "the ", "--length", 25, "--num-samples", 3,
                       "--seed", 1)
    assert code == 0
    parts = out.split("--- sample ")[1:]
    assert [part.split(" ---\n")[0] for part in parts] == ["1", "2", "3"]
    bodies = [part.split(" ---\n", 1)[1] for part in parts]
    assert all(body.startswith("the ") and len(body) == len("the ") + 25 + 1 for body in bodies)
    assert len(set(bodies)) > 1


def test_info_describes_the_checkpoint(tiny_checkpoint, cli):
    ckpt = checkpoint.load(tiny_checkpoint)
    model, vocab = checkpoint.build_model(ckpt)
    code, out, _ = cli("--checkpoint", tiny_checkpoint, "--info")
    assert code == 0
    assert f"corpus {ckpt['corpus']['name']} ({ckpt['corpus']['length']:,} chars)" in out
    assert f"vocabulary {len(vocab)}" in out
    assert f"{model.num_parameters():,} parameters" in out
    assert f"trained {ckpt['progress']['step']:,} steps" in out
    assert f"best validation loss {ckpt['progress']['best_val_loss']:.4f}" in out


def test_a_model_with_the_copy_attention_says_so_and_samples_repeatably(copy_checkpoint, cli):
    assert "copy attention over 48 characters" in cli("--checkpoint", copy_checkpoint, "--info")[1]
    args = ("--checkpoint", copy_checkpoint, "--prime", "the ", "--length", 200, "--num-samples", 3, "--seed", 4)
    code, out, _ = cli(*args)
    assert code == 0 and out == cli(*args)[1] and out.count("--- sample ") == 3


def test_score_prints_nats_and_bits_per_character(tiny_checkpoint, cli, tmp_path):
    text = "the quick brown fox jumps over the lazy dog.\n" * 30
    path = tmp_path / "some.txt"
    path.write_text(text)
    code, out, _ = cli("--checkpoint", tiny_checkpoint, "--score", path)
    assert code == 0
    nats = float(out.split(" nats/char")[0].split()[-1])
    bits = float(out.split(" bits/char")[0].split()[-1])
    assert bits == pytest.approx(nats / math.log(2), abs=1e-3)
    model, vocab = checkpoint.build_model(checkpoint.load(tiny_checkpoint))
    idx = torch.tensor([vocab.encode(text)])
    with torch.no_grad():
        log_probs, _ = model(idx[:, :-1])
    expected = -log_probs[0].gather(-1, idx[0, 1:, None]).mean().item()
    assert nats == pytest.approx(expected, abs=1e-3)
    assert f"over {len(text) - 1:,} characters" in out


def test_adapt_scores_before_each_step_learns_and_leaves_the_model_alone(tiny_checkpoint, cli, tmp_path):
    """Dynamic evaluation: the first segment is scored as without it, a text met again reads better, and the
    model the caller holds keeps its weights."""
    model = charrnn.load(tiny_checkpoint)
    weights = {name: w.clone() for name, w in model.net.state_dict().items()}
    first = "the lazy dog jumps over the quick brown fox.\n"
    assert len(first) < ADAPT_SEGMENT
    assert model.score(first, adapt=0.5).nats == pytest.approx(model.score(first).nats, abs=1e-6)
    text = "".join(random.Random(0).choice("abcdefghij .\n") for _ in range(300)) * 6  # to be learnt
    assert model.score(text, adapt=0.5).nats < model.score(text).nats - 0.2
    assert all(torch.equal(w, weights[name]) for name, w in model.net.state_dict().items())
    (tmp_path / "t.txt").write_text(text)
    code, out, _ = cli("--checkpoint", tiny_checkpoint, "--score", tmp_path / "t.txt", "--adapt")  # its default
    assert code == 0 and f"{model.score(text, adapt=ADAPT_LR).nats:.4f} nats/char" in out
    assert f"--adapt {ADAPT_LR:g}" in out


@pytest.mark.parametrize("content", ["", "a"], ids=["empty", "one char"])
def test_score_of_a_file_too_short_to_score_is_a_one_line_error(tiny_checkpoint, cli, tmp_path, content):
    path = tmp_path / "short.txt"
    path.write_text(content)
    code, out, err = cli("--checkpoint", tiny_checkpoint, "--score", path)
    assert_one_line_error(code, out, err)
    assert "fewer than 2" in err


def test_score_of_a_missing_file_is_a_one_line_error(tiny_checkpoint, cli, tmp_path):
    code, out, err = cli("--checkpoint", tiny_checkpoint, "--score", tmp_path / "nope.txt")
    assert_one_line_error(code, out, err)
    assert "nope.txt does not exist" in err


def test_tiny_temperature_is_greedy_not_an_error(tiny_checkpoint, cli):
    greedy = cli("--checkpoint", tiny_checkpoint, "--temperature", 0, "--length", 40)
    assert greedy[0] == 0
    assert cli("--checkpoint", tiny_checkpoint, "--temperature", "1e-320", "--length", 40) == greedy


# ---------------------------------------------------------------- bad input: one line, no traceback


def test_bad_flag_value_exits_2_with_one_stderr_line(tiny_checkpoint):
    result = run(tiny_checkpoint, "--top-k", "0")
    assert_one_line_error(result.returncode, result.stdout, result.stderr, expected_code=2)
    assert "--top-k" in result.stderr


@pytest.mark.parametrize("flag, value", [
    ("--temperature", "-1"), ("--temperature", "nan"), ("--temperature", "abc"), ("--top-k", "0"),
    ("--top-p", "0"), ("--top-p", "1.5"), ("--length", "0"), ("--length", "-5"), ("--num-samples", "0"),
    ("--seed", "-1")])
def test_every_bad_flag_value_exits_2_with_one_stderr_line(tiny_checkpoint, cli, flag, value):
    code, out, err = cli("--checkpoint", tiny_checkpoint, flag, value)
    assert_one_line_error(code, out, err, expected_code=2)
    assert flag in err


def test_missing_checkpoint_is_a_one_line_error(cli, tmp_path):
    code, out, err = cli("--checkpoint", tmp_path / "nope.pt")
    assert_one_line_error(code, out, err)
    assert "does not exist" in err


def test_corrupt_checkpoint_is_a_one_line_error_end_to_end(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    result = run(path)
    assert_one_line_error(result.returncode, result.stdout, result.stderr)


def test_truncated_checkpoint_is_a_one_line_error(tiny_checkpoint, cli, tmp_path):
    data = tiny_checkpoint.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[:len(data) // 2])
    assert_one_line_error(*cli("--checkpoint", path))


def test_checkpoint_directory_without_checkpoints_is_a_one_line_error(cli, tmp_path):
    assert_one_line_error(*cli("--checkpoint", tmp_path))


def test_no_checkpoint_at_all_is_a_one_line_error(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_CHECKPOINTS_DIR", str(tmp_path))
    with pytest.raises(CharRNNError, match="no checkpoint found"):
        checkpoint.resolve(None)
    code, out, err = cli()
    assert_one_line_error(code, out, err)
    assert "no checkpoint found" in err


def test_default_checkpoint_is_the_run_written_last(tiny_checkpoint, cli, tmp_path, monkeypatch):
    for i, run_name in enumerate(["older", "newer"]):
        (tmp_path / run_name).mkdir()
        (tmp_path / run_name / "best.pt").write_bytes(tiny_checkpoint.read_bytes())
        os.utime(tmp_path / run_name / "best.pt", (1e9 + i, 1e9 + i))
    monkeypatch.setenv("CHARRNN_CHECKPOINTS_DIR", str(tmp_path))
    code, out, err = cli("--length", 10)
    assert code == 0 and len(out) == 10 + 1
    assert err == f"using {tmp_path / 'newer' / 'best.pt'}\n"


def test_unknown_prime_character_exits_1_naming_it_before_any_output(tiny_checkpoint):
    result = run(tiny_checkpoint, "--prime", "thé ")
    assert_one_line_error(result.returncode, result.stdout, result.stderr)
    assert "'é'" in result.stderr


def test_skip_unknown_drops_unknown_prime_characters_and_prints_what_the_model_saw(tiny_checkpoint, cli):
    """Issue 11 item 4: the echoed prime is the one the model read, without the unknown characters."""
    code, skipped, _ = cli("--checkpoint", tiny_checkpoint, "--prime", "thé ", "--skip-unknown",
                           "--temperature", 0, "--length", 40)
    _, plain, _ = cli("--checkpoint", tiny_checkpoint, "--prime", "th ", "--temperature", 0, "--length", 40)
    assert code == 0
    assert skipped == plain and skipped.startswith("th ")


# ---------------------------------------------------------------- signals


def read_some(fd: int, timeout: float) -> bytes:
    """The first bytes that arrive on fd, or b'' if none come within timeout seconds."""
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 65536) if ready else b""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_a_long_generation_stops_it_with_exit_130(tiny_checkpoint, signum):
    proc = subprocess.Popen(command(tiny_checkpoint, "--length", "10000000"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = read_some(proc.stdout.fileno(), timeout=60)
        assert first, "no output within 60 s"
        sent = time.monotonic()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert time.monotonic() - sent < 10
    assert b"Traceback" not in err and err.strip() == b""
    assert len(first) + len(out) < 10_000_000


# ---------------------------------------------------------------- issue 11: generation defects


def test_prime_starts_the_prompts_text_and_num_samples_is_refused_there(tiny_checkpoint, cli, monkeypatch):
    """Issue 11 item 2: --prime is fed before the first line; a flag that cannot apply is an error."""
    answers = {}
    for prime in ("", "the lazy "):
        monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
        args = ("--prime", prime) if prime else ()
        code, out, _ = cli("--checkpoint", tiny_checkpoint, "--interactive", "--temperature", 0, "--length", 30, *args)
        assert code == 0
        answers[prime] = out.strip()
    _, plain, _ = cli("--checkpoint", tiny_checkpoint, "--prime", "the lazy ", "--temperature", 0, "--length", 31)
    assert answers["the lazy "] != answers[""]
    # the prompt continues the prime (its answer is stripped: so is the slice compared with it)
    assert answers["the lazy "] == plain.strip()[len("the lazy "):][:30].strip()
    code, out, err = cli("--checkpoint", tiny_checkpoint, "--interactive", "--num-samples", 2)
    assert_one_line_error(code, out, err)
    assert "--num-samples does not apply to --interactive" in err


def test_a_stop_string_that_begins_in_the_prime_stops_generation(tiny_checkpoint, cli):
    """Issue 11 item 3: the first generated character may complete the stop string."""
    _, greedy, _ = cli("--checkpoint", tiny_checkpoint, "--prime", "the", "--temperature", 0, "--length", 5)
    first = greedy[len("the")]
    code, out, _ = cli("--checkpoint", tiny_checkpoint, "--prime", "the", "--temperature", 0, "--length", 5,
                       "--stop", "e" + first)
    assert code == 0 and out == "the" + first + "\n"


def test_score_reads_the_training_encoding_and_accepts_encoding(tiny_checkpoint, cli, tmp_path):
    """Issue 11 item 5: --encoding exists for --score; a directory is refused."""
    ckpt = checkpoint.load(tiny_checkpoint)
    ckpt["vocab"] = sorted("é" if c == "a" else c for c in ckpt["vocab"])
    ckpt["train_config"] = {**ckpt["train_config"], "encoding": "latin-1"}
    latin_model = tmp_path / "latin.pt"
    checkpoint.save(ckpt, latin_model)
    path = tmp_path / "latin.txt"
    path.write_bytes("thé dog.\n".encode("latin-1") * 5)
    code, out, err = cli("--checkpoint", latin_model, "--score", path)  # the training corpus's encoding
    assert code == 0 and "over 44 characters" in out, err
    wide = tmp_path / "wide.txt"
    wide.write_bytes(("the dog.\n" * 5).encode("utf-16-le"))
    code, out, err = cli("--checkpoint", tiny_checkpoint, "--score", wide, "--encoding", "utf-16-le")
    assert code == 0 and "over 44 characters" in out, err
    code, out, err = cli("--checkpoint", tiny_checkpoint, "--score", tmp_path)
    assert_one_line_error(code, out, err)
    assert "is a directory" in err


def test_an_output_that_cannot_show_the_text_is_a_one_line_error(tiny_checkpoint, tmp_path):
    """Issue 11 item 6: PYTHONIOENCODING=ascii and a non-ASCII prime is one line, not a traceback."""
    ckpt = checkpoint.load(tiny_checkpoint)
    ckpt["vocab"] = ["中" if c == "a" else c for c in ckpt["vocab"]]
    ckpt["vocab"] = sorted(ckpt["vocab"])  # a vocabulary with a character ASCII cannot write
    ckpt["model_config"] = dict(ckpt["model_config"])
    path = tmp_path / "cjk.pt"
    checkpoint.save(ckpt, path)
    done = subprocess.run(command(path, "--prime", "中", "--length", "5"), cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert_one_line_error(done.returncode, "", done.stderr)
    assert "PYTHONIOENCODING=utf-8" in done.stderr


@pytest.mark.parametrize("missing", ["progress", "corpus"])
def test_info_and_prompt_on_a_checkpoint_without_optional_fields(tiny_checkpoint, cli, tmp_path, monkeypatch,
                                                                  missing):
    """Issue 11 item 8: a checkpoint that build_model accepts never gives a KeyError."""
    ckpt = checkpoint.load(tiny_checkpoint)
    del ckpt[missing]
    path = tmp_path / "lean.pt"
    checkpoint.save(ckpt, path)
    code, out, err = cli("--checkpoint", path, "--info")
    assert code == 0 and "Traceback" not in err and "vocabulary" in out
    monkeypatch.setattr(sys, "stdin", io.StringIO("the\n"))
    code, out, err = cli("--checkpoint", path, "--interactive", "--length", 5)
    assert code == 0 and len(out.rstrip("\n").encode().decode("unicode_escape")) == 5  # one answer, escaped


# ---------------------------------------------------------------- issue 14: samples to a file


def test_output_writes_samples_to_a_file_and_jsonl_records_settings_and_seed(tiny_checkpoint, cli, tmp_path):
    jsonl = tmp_path / "samples.jsonl"
    code, _, _ = cli("--checkpoint", tiny_checkpoint, "--prime", "the ", "--length", 20, "--num-samples", 3,
                     "--output", jsonl, "--format", "jsonl")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert code == 0 and len(rows) == 3
    assert all(r["prime"] == "the " and r["length"] == 20 and isinstance(r["seed"], int) for r in rows)
    again = tmp_path / "again.jsonl"  # the recorded seed makes the same samples
    cli("--checkpoint", tiny_checkpoint, "--prime", "the ", "--length", 20, "--num-samples", 3,
        "--output", again, "--format", "jsonl", "--seed", rows[0]["seed"])
    assert [json.loads(line)["text"] for line in again.read_text().splitlines()] == [r["text"] for r in rows]
    out_file = tmp_path / "samples.txt"  # plain text: the samples one after another
    code, out, err = cli("--checkpoint", tiny_checkpoint, "--prime", "the ", "--length", 20, "--num-samples", 3,
                         "--seed", rows[0]["seed"], "--output", out_file)
    assert code == 0 and out == "" and "wrote 3 samples" in err
    assert out_file.read_text() == "".join(r["text"] + "\n" for r in rows)
    code, out, err = cli("--checkpoint", tiny_checkpoint, "--format", "jsonl")
    assert_one_line_error(code, out, err)
