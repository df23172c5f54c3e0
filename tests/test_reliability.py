"""Reliability and security: signals, SIGKILL at random instants, a full disk, an unwritable
checkpoint folder, hostile checkpoints, corpora, flags and prompt commands.

The rule everywhere: a failure is exit 1 (2 for a bad flag) with exactly one line on stderr and
never a traceback, a checkpoint from a stranger never runs code, and nothing saved is ever lost.
Most command-line cases run `main()` in this process (a subprocess costs 2-3 s of torch import
on 2 cores); a few representative ones run the real scripts, and those are marked slow.
"""
from __future__ import annotations

import errno
import functools
import importlib.util
import io
import os
import pickle
import random
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from charrnn import checkpoint, files, flags, launch
from charrnn import trainer as train_module
from charrnn.errors import CharRNNError
from charrnn.interactive import Session
from charrnn.model import CharRNN, ModelConfig
from charrnn.config import SampleConfig
from charrnn.sample import generate
from charrnn.config import TrainConfig
from charrnn.vocab import Vocab
from conftest import build_trainer, make_text

REPO = Path(__file__).resolve().parent.parent
TINY = ["--model", "lstm", "--rnn-size", "16", "--num-layers", "1", "--embedding-size", "8",
        "--seq-length", "16", "--batch-size", "2", "--threads", "1", "--device", "cpu"]


# -- helpers --------------------------------------------------------------------------------------
@functools.cache
def load_file(relative: str):
    """A script or bench file of the repository as a module (they are not in a package)."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(f"reliability_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@dataclass
class Result:
    code: int
    out: str
    err: str


def assert_one_line_error(result: Result, code: int = 1, prefix: str = "error:", notes: bool = False) -> str:
    """Exit `code`, exactly one stderr line, starting with `prefix`, and no traceback.

    With notes=True, progress notes may come before it (e.g. 'encoded NAME in 0.1s' when a corpus
    is encoded before the error is found), but the error is still one line, and the last.
    """
    assert "Traceback" not in result.err, result.err
    lines = result.err.splitlines()
    assert result.code == code, (result.code, result.err)
    if notes:
        assert [line for line in lines if line.startswith(prefix)] == lines[-1:], result.err
    else:
        assert len(lines) == 1, result.err
    assert lines[-1].startswith(prefix), lines[-1]
    return lines[-1]


@pytest.fixture(autouse=True)
def restore_process_state(monkeypatch):
    """The in-process CLI sets torch threads and generate.py a SIGTERM handler: put them back."""
    threads = torch.get_num_threads()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(train_module, "plot_metrics", lambda *args: None)  # ~1 s of matplotlib
    yield
    torch.set_num_threads(threads)
    for s, handler in handlers.items():
        signal.signal(s, handler)


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run train.py or generate.py's main() here, as `python SCRIPT ARGS` would, warnings included."""
    def run(script: str, *args) -> Result:
        module = load_file(script)
        monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
        capsys.readouterr()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(SystemExit) as exit_info:
                flags.run_main(module.main)
        out, err = capsys.readouterr()
        err += "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)  # stderr in a real run
        return Result(exit_info.value.code, out, err)
    return run


def run_script(script: str, *args, cwd: Path, timeout: float = 120) -> Result:
    """The real command line, in a fresh interpreter."""
    done = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(done.returncode, done.stdout, done.stderr)


def tiny_config(corpus: Path, ckpt_dir: Path, **kw) -> TrainConfig:
    return TrainConfig.from_options(**{**dict(corpus=str(corpus), rnn_size=16, num_layers=1, embedding_size=8, seq_length=16,
                                 batch_size=2, max_steps=2, eval_every=1, checkpoint_dir=str(ckpt_dir),
                                 device="cpu", threads=1, seed=0), **kw})


def temp_files(directory: Path) -> list[str]:
    return [p.name for p in files.temporaries(directory)]


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    """A real, resumable charrnn checkpoint at step 0 (checkpoint.save of a Trainer's payload)."""
    root = tmp_path_factory.mktemp("good")
    corpus = root / "toy.txt"
    corpus.write_text(make_text(4000), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:  # the per-test cache fixture is not active at module scope
        mp.setenv("CHARRNN_CACHE_DIR", str(root / "cache"))
        threads = torch.get_num_threads()
        trainer = build_trainer(tiny_config(corpus, root / "run", embedding_size=64))
        torch.set_num_threads(threads)
    checkpoint.save(trainer.payload(), root / "run" / "last.pt")
    return root / "run" / "last.pt"


# -- signals and kills ----------------------------------------------------------------------------
def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"train.py exited ({proc.returncode}) before writing {path.name}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {path.name} after {timeout} s")
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_and_sigint_during_training_save_last_and_say_how_to_resume(tmp_path, text_file):
    """Both runs at once (each costs seconds of torch import): signal each once last.pt exists."""
    runs = {sig: tmp_path / sig.name for sig in (signal.SIGTERM, signal.SIGINT)}
    procs = {sig: subprocess.Popen([sys.executable, str(REPO / "train.py"), "--corpus", str(text_file), *TINY,
                                    "--max-steps", "1000000", "--eval-every", "10", "--checkpoint-dir", str(run)],
                                   cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   stdin=subprocess.DEVNULL)
             for sig, run in runs.items()}
    try:
        outputs = {}
        for sig, proc in procs.items():
            wait_for_file(runs[sig] / "last.pt", proc)
            proc.send_signal(sig)
        for sig, proc in procs.items():
            outputs[sig] = proc.communicate(timeout=60)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for sig, (out, err) in outputs.items():
        run = runs[sig]
        assert procs[sig].returncode == 130, (sig.name, err)
        assert "Traceback" not in err, err
        said = [line for line in out.splitlines() if "Resume with" in line]
        assert len(said) == 1, out
        step = checkpoint.load(run / "last.pt")["progress"]["step"]
        assert f"stopped at step {step};" in said[0]
        assert said[0].endswith(f"Resume with: python train.py --resume {run}")
        checkpoint.build_model(checkpoint.load(run / "last.pt"))
        assert temp_files(run) == []


@pytest.mark.slow
def test_sigkill_at_random_points_never_loses_the_last_checkpoint(tmp_path):
    """The bench's kill loop, three times: after each SIGKILL last.pt loads, and resume continues."""
    kill_loop = load_file("bench/kill_loop.py")
    summary = kill_loop.run_loop(kills=3, seed=11, workdir=tmp_path / "kills", eval_every=2,
                                 modes=("after-save", "mid-write"), exact=False)
    assert summary["failures"] == []
    assert summary["kills"] == 3 and summary["resumes"] == 2
    assert all(k["saved_step"] is not None and k["verified"] >= 1 for k in summary["records"])
    assert summary["max_steps_lost"] <= 2
    last = checkpoint.load(tmp_path / "kills" / "run" / "last.pt")
    assert last["progress"]["step"] == summary["final_step"]


def test_kill_loop_reads_what_a_killed_trainer_left(tmp_path):
    """The bench's bookkeeping: a torn probe line is not a step, the trainer's report is parsed."""
    kill_loop = load_file("bench/kill_loop.py")
    probe = tmp_path / "probe.txt"
    assert kill_loop.probe_step(probe) is None
    probe.write_text("1\n2\n3")  # killed while appending "3\n"
    assert kill_loop.probe_step(probe) == 2
    out = "corpus x\nresuming /r/last.pt at step 40\nstep     45 | epoch 0.1 | ...\nstep     50 | epoch"
    assert kill_loop.reported_steps(out) == (40, 50)
    (tmp_path / ".last.pt.k2j3_x.tmp").write_bytes(b"")
    (tmp_path / "last.pt").write_bytes(b"")
    assert kill_loop.temp_files(tmp_path) == {".last.pt.k2j3_x.tmp"}


# -- a full disk, an unwritable folder ------------------------------------------------------------
def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("resumed", [False, True], ids=["fresh-run", "resumed-run"])
def test_disk_full_while_writing_a_checkpoint_keeps_the_earlier_ones(tmp_path, text_file, monkeypatch, resumed):
    run = tmp_path / "run"
    if resumed:
        launch.train(tiny_config(text_file, run))  # steps 1 and 2 saved: best.pt and last.pt
    before = {p.name: p.read_bytes() for p in run.glob("*.pt")}

    def half_written(obj, f, *args, **kwargs):  # some bytes reach the temporary file, then the disk is full
        f.write(b"PK\x03\x04 the first bytes of a checkpoint")
        no_space()

    monkeypatch.setattr(checkpoint.torch, "save", half_written)
    with pytest.raises(CharRNNError) as caught:
        if resumed:
            launch.train(TrainConfig(), resume=str(run), overrides={"max_steps": 4})
        else:
            build_trainer(tiny_config(text_file, run)).run()
    message = str(caught.value)
    assert "\n" not in message and "No space left on device" in message and "--checkpoint-dir" in message
    assert {p.name: p.read_bytes() for p in run.glob("*.pt")} == before
    assert temp_files(run) == []
    monkeypatch.undo()
    for name in before:
        checkpoint.build_model(checkpoint.load(run / name))


def fill_disk_for(monkeypatch, name: str) -> None:
    """Writing any file whose name contains `name` fails with ENOSPC, however it is opened."""
    real_open, real_os_open = io.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and name in os.fspath(file) and set(mode) & set("wax+"):
            no_space()
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, open_flags, *args, **kwargs):
        if name in os.fspath(path) and open_flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            no_space()
        return real_os_open(path, open_flags, *args, **kwargs)

    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr("builtins.open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl"])
def test_disk_full_while_writing_the_run_files_is_a_one_line_error(tmp_path, text_file, monkeypatch, name):
    run = tmp_path / "run"
    fill_disk_for(monkeypatch, name)
    with pytest.raises(CharRNNError) as caught:
        launch.train(tiny_config(text_file, run))
    assert "\n" not in str(caught.value)
    assert temp_files(run) == []


def test_a_checkpoint_dir_under_a_regular_file_is_a_one_line_error(tmp_path, text_file, cli):
    """Root ignores chmod, so the folder is made unwritable by putting it under a regular file."""
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder")
    result = cli("train.py", "--corpus", text_file, *TINY, "--max-steps", "1", "--checkpoint-dir", blocker / "sub")
    line = assert_one_line_error(result, notes=True)
    assert "somefile" in line
    assert blocker.read_text() == "not a folder"


# -- hostile checkpoints --------------------------------------------------------------------------
class CreatesFile:
    """Unpickling this calls open(marker, 'w'): a stand-in for any code a pickle could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def forged(good: dict, **changes) -> dict:
    """A copy of a real checkpoint with some model/train config fields changed."""
    ckpt = dict(good)
    ckpt["model_config"] = {**good["model_config"], **changes}
    ckpt["train_config"] = {**good["train_config"], "model": {**good["train_config"]["model"], **changes}}
    return ckpt


HOSTILE = {  # name -> what to write, given (path, a real checkpoint's bytes, its content, marker)
    "pickle-payload": lambda p, raw, good, m: torch.save({"format": "charrnn", "version": 1,
                                                          "model": CreatesFile(m)}, p),
    "pickle-payload-raw": lambda p, raw, good, m: p.write_bytes(pickle.dumps(CreatesFile(m), protocol=2)),
    "truncated": lambda p, raw, good, m: p.write_bytes(raw[:len(raw) // 2]),
    "zero-bytes": lambda p, raw, good, m: p.write_bytes(b""),
    "random-bytes": lambda p, raw, good, m: p.write_bytes(random.Random(0).randbytes(4096)),
    "garbage-pickle-opcodes": lambda p, raw, good, m: p.write_bytes(b"h\xe1 not a checkpoint"),
    "newer-version": lambda p, raw, good, m: torch.save({**good, "version": 999}, p),
    "foreign-state-dict": lambda p, raw, good, m: torch.save(torch.nn.Linear(3, 2).state_dict(), p),
    "header-only": lambda p, raw, good, m: torch.save({"format": "charrnn", "version": 1}, p),
    "impossible-model": lambda p, raw, good, m: torch.save(forged(good, rnn_size=0, dropout=2.0), p),
}


def hostile_checkpoint(name: str, tmp_path: Path, good_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "MARKER"
    path = tmp_path / f"{name}.pt"
    HOSTILE[name](path, good_path.read_bytes(), checkpoint.load(good_path), marker)
    return path, marker


def test_the_pickle_payload_really_runs_code_when_loaded_unsafely(tmp_path):
    """So that the tests below, where nothing happens, mean something."""
    path, marker = tmp_path / "evil.pt", tmp_path / "MARKER"
    torch.save({"model": CreatesFile(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("script,name", [
    pytest.param(script, name, id=f"{script}-{name}")
    for script in ("generate.py", "train.py") for name in HOSTILE])
def test_a_hostile_checkpoint_is_one_line_error(tmp_path, good_checkpoint, cli, script, name):
    path, marker = hostile_checkpoint(name, tmp_path, good_checkpoint)
    if script == "generate.py":
        result = cli("generate.py", "--checkpoint", path, "--length", "3")
    else:
        result = cli("train.py", "--resume", path, "--max-steps", "1")
    assert_one_line_error(result, notes=script == "train.py")  # resuming may first encode the corpus
    assert not marker.exists()


def test_a_directory_without_checkpoints_is_one_line_error(tmp_path, cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(cli("generate.py", "--checkpoint", empty))
    assert_one_line_error(cli("train.py", "--resume", empty))


@given(data=st.binary(max_size=600))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(data=b"PK\x03\x04")
@example(data=b"\x80\x02}q\x00.")  # an empty dict, pickled: not a checkpoint
@example(data=b"q")  # IndexError
@example(data=b"h\xe1")  # KeyError
@example(data=b"G")  # struct.error
def test_load_of_arbitrary_bytes_is_a_charrnn_error(tmp_path, data):
    path = tmp_path / "fuzz.pt"
    path.write_bytes(data)
    with pytest.raises(CharRNNError) as caught:
        checkpoint.load(path)
    assert "\n" not in str(caught.value)


def test_load_of_a_real_checkpoint_cut_anywhere_is_a_charrnn_error(tmp_path, good_checkpoint):
    raw = good_checkpoint.read_bytes()
    path = tmp_path / "cut.pt"
    for cut in sorted({0, 1, 2, 3, 4, 30, 100, len(raw) - 22, len(raw) - 1, *range(0, len(raw), 4099)}):
        path.write_bytes(raw[:cut])
        with pytest.raises(CharRNNError):
            checkpoint.load(path)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["generate.py", "train.py"])
def test_a_pickle_payload_is_refused_by_the_real_command_line(tmp_path, good_checkpoint, script):
    path, marker = hostile_checkpoint("pickle-payload", tmp_path, good_checkpoint)
    flag = "--checkpoint" if script == "generate.py" else "--resume"
    line = assert_one_line_error(run_script(script, flag, path, cwd=tmp_path))
    assert "refused" in line
    assert not marker.exists()


# -- hostile corpora ------------------------------------------------------------------------------
def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def make_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def make_dir(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir()
    for name, data in files.items():
        make_file(path / name, data)
    return path


BAD_CORPORA = {  # name -> make it in a folder
    "empty-file": lambda d: make_file(d / "c.txt", b""),
    "one-character": lambda d: make_file(d / "c.txt", b"a"),
    "shorter-than-a-window": lambda d: make_file(d / "c.txt", make_text(25).encode()),
    "binary": lambda d: make_file(d / "c.txt", b"text, then \0\x01\x02 binary" * 50),
    "invalid-utf8": lambda d: make_file(d / "c.txt", make_text(3000).encode() + b"\xff\xfe\xc3"),
    "dir-without-text": lambda d: make_dir(d / "c", {"empty.txt": b"", "blob.bin": b"\0" * 100,
                                                    ".hidden.txt": make_text(3000).encode()}),
    "empty-dir": lambda d: make_dir(d / "c", {}),
    "missing-path": lambda d: d / "no" / "such.txt",
    "fifo": lambda d: make_fifo(d / "c.fifo"),
}


@pytest.mark.parametrize("name", list(BAD_CORPORA))
def test_a_hostile_corpus_is_one_line_error(tmp_path, cli, name):
    corpus = BAD_CORPORA[name](tmp_path)
    run = tmp_path / "run"
    result = cli("train.py", "--corpus", corpus, *TINY, "--max-steps", "1", "--checkpoint-dir", run)
    assert_one_line_error(result, notes=True)
    assert not run.exists()


@pytest.mark.slow
def test_a_fifo_corpus_is_refused_by_the_real_command_line_without_hanging(tmp_path):
    fifo = make_fifo(tmp_path / "pipe")
    result = run_script("train.py", "--corpus", fifo, *TINY, "--max-steps", "1", "--checkpoint-dir",
                        tmp_path / "run", cwd=tmp_path, timeout=60)
    assert "FIFO" in assert_one_line_error(result, notes=True)
    assert not (tmp_path / "run").exists()


def test_a_folder_with_empty_and_binary_files_among_good_ones_trains(tmp_path, cli):
    good = make_text(3000)
    folder = make_dir(tmp_path / "texts", {"a.txt": good[:1500].encode(), "b.txt": b"", "c.bin": b"\0\1\2" * 30,
                                           "d.txt": good[1500:].encode()})
    run = tmp_path / "run"
    result = cli("train.py", "--corpus", folder, *TINY, "--max-steps", "1", "--checkpoint-dir", run)
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    ckpt = checkpoint.load(run / "last.pt")
    assert ckpt["corpus"]["length"] == len(good)  # the empty and the binary file were skipped


# -- numeric flags --------------------------------------------------------------------------------
PROBES = ["0", "-1", "nan", "inf", "1e30", "abc", ""]
FLAG_TABLE = {  # (script, flag) -> (probes the parser must accept, values just past the upper bound)
    ("train.py", "--rnn-size"): ((), ["1000000001"]),
    ("train.py", "--num-layers"): ((), ["1000000001"]),
    ("train.py", "--seq-length"): ((), ["1.5"]),
    ("train.py", "--batch-size"): ((), ["2.0"]),
    ("train.py", "--learning-rate"): ((), ["1000001"]),
    ("train.py", "--dropout"): (("0",), ["0.91", "1"]),
    ("train.py", "--grad-clip"): ((), ["-0"]),
    ("train.py", "--max-steps"): ((), ["1e3"]),
    ("train.py", "--time-budget"): ((), ["-5m", "10x", "99999999999999999999999"]),
    ("train.py", "--eval-every"): ((), ["0x10"]),
    ("train.py", "--val-frac"): (("0",), ["0.95"]),
    ("generate.py", "--length"): ((), ["1000000001"]),
    ("generate.py", "--temperature"): (("0",), ["1000001", "-1e-300"]),
    ("generate.py", "--top-k"): ((), ["2.5"]),
    ("generate.py", "--top-p"): ((), ["1.0000001", "-0"]),
    ("generate.py", "--num-samples"): ((), ["1000000001"]),
    ("generate.py", "--seed"): (("0",), ["9223372036854775808", "1.0"]),
}
BAD_FLAGS = [(script, flag, value) for (script, flag), (ok, beyond) in FLAG_TABLE.items()
             for value in [*PROBES, *beyond] if value not in ok]


@pytest.mark.parametrize("script,flag,value", BAD_FLAGS, ids=[f"{s}{f}={v}" for s, f, v in BAD_FLAGS])
def test_a_bad_number_is_exit_2_with_one_line(capsys, script, flag, value):
    parser = load_file(script).build_parser()
    with pytest.raises(SystemExit) as caught:
        parser.parse_args([f"{flag}={value}"])  # '=' so that '-1' is read as a value, not a flag
    assert caught.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert flag in lines[0] and "error:" in lines[0]


@pytest.mark.parametrize("script", ["train.py", "generate.py"])
@pytest.mark.parametrize("value", ["100000", "1000000000"])
def test_absurd_thread_counts_are_exit_2(capsys, script, value):
    """Only parsed here: running with them would abort the whole test process inside libgomp."""
    with pytest.raises(SystemExit) as caught:
        load_file(script).build_parser().parse_args([f"--threads={value}"])
    assert caught.value.code == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


ACCEPTED = [("train.py", "--dropout", "0.9", 0.9), ("train.py", "--val-frac", "0", 0.0),
            ("train.py", "--rnn-size", "1000000000", 10**9), ("train.py", "--time-budget", "1.5h", 5400.0),
            ("generate.py", "--temperature", "0", 0.0), ("generate.py", "--top-p", "1", 1.0),
            ("generate.py", "--seed", "9223372036854775807", 2**63 - 1), ("generate.py", "--top-k", "1", 1)]


@pytest.mark.parametrize("script,flag,value,parsed", ACCEPTED, ids=[f"{s}{f}={v}" for s, f, v, _ in ACCEPTED])
def test_a_number_at_its_bound_is_accepted(script, flag, value, parsed):
    args = load_file(script).build_parser().parse_args([f"{flag}={value}"])
    assert getattr(args, flag[2:].replace("-", "_")) == parsed


@pytest.mark.parametrize("args", [
    ["--val-frac", "0"], ["--val-frac", "0.9", "--test-frac", "0.9"], ["--learning-rate", "1000000"],
    ["--seq-length", "1"], ["--batch-size", "1"], ["--eval-every", "1000000000"], ["--time-budget", "0.001"],
    ["--dropout", "0.9", "--num-layers", "2"], ["--grad-clip", "1000000"], ["--weight-decay", "1000000"],
    ["--warmup-steps", "0", "--min-lr-frac", "0"], ["--seq-length", "100000"], ["--batch-size", "100000"],
], ids=lambda a: " ".join(a))
def test_train_at_the_bounds_runs_or_fails_in_one_line(tmp_path, text_file, cli, args):
    run = tmp_path / "run"
    flags_given = [*TINY, "--max-steps", "1", "--checkpoint-dir", run]
    for i in range(0, len(args), 2):  # the case's value replaces TINY's
        if args[i] in flags_given:
            del flags_given[flags_given.index(args[i]):flags_given.index(args[i]) + 2]
    result = cli("train.py", "--corpus", text_file, *flags_given, *args)
    if result.code != 0:
        assert_one_line_error(result, notes=True)
    else:
        checkpoint.build_model(checkpoint.load(run / "last.pt"))


@pytest.mark.parametrize("args", [
    ["--temperature", "0"], ["--temperature", "1e-45"], ["--temperature", "1000000"], ["--top-k", "1000000000"],
    ["--top-p", "1e-300"], ["--top-p", "1", "--top-k", "1"], ["--seed", "9223372036854775807"], ["--length", "1"],
    ["--num-samples", "3", "--stop", "e"], ["--prime", "\u00e9\u2603"], ["--prime", "\u00e9", "--skip-unknown"],
], ids=lambda a: " ".join(a))
def test_generate_at_the_bounds_runs_or_fails_in_one_line(good_checkpoint, cli, args):
    result = cli("generate.py", "--checkpoint", good_checkpoint, "--length", "5", *args)
    if result.code != 0:
        assert_one_line_error(result)
    else:
        assert result.err == ""


def _cannot_allocate(nbytes: int) -> bool:
    """True where an allocation of nbytes fails at once instead of eating the machine's memory."""
    try:
        mode = Path("/proc/sys/vm/overcommit_memory").read_text().strip()
        meminfo = dict(line.split(":") for line in Path("/proc/meminfo").read_text().splitlines())
    except OSError:
        return False
    total = sum(int(meminfo.get(k, "0 kB").split()[0]) * 1024 for k in ("MemTotal", "SwapTotal"))
    return mode in ("0", "2") and total * 2 < nbytes


@pytest.mark.parametrize("script", ["train.py", "generate.py"])
def test_sizes_at_the_flag_bounds_that_do_not_fit_in_memory_are_one_line_errors(
        tmp_path, text_file, good_checkpoint, cli, script):
    if script == "train.py":  # the first weight alone is 4e9 x 8 floats: 128 GB
        if not _cannot_allocate(4 * 10**9 * 8 * 4):
            pytest.skip("this machine might really try to allocate it")
        result = cli("train.py", "--corpus", text_file, *TINY, "--rnn-size", "1000000000", "--max-steps", "1",
                     "--checkpoint-dir", tmp_path / "run")
    else:  # 1e9 samples x 64 embedding floats: 256 GB
        if not _cannot_allocate(10**9 * 64 * 4):
            pytest.skip("this machine might really try to allocate it")
        result = cli("generate.py", "--checkpoint", good_checkpoint, "--num-samples", "1000000000", "--length", "2")
    assert_one_line_error(result, notes=True)


@pytest.mark.slow
@pytest.mark.parametrize("script,args", [("train.py", ["--rnn-size", "0"]), ("generate.py", ["--temperature", "nan"])],
                         ids=["train-rnn-size-0", "generate-temperature-nan"])
def test_a_bad_number_on_the_real_command_line(tmp_path, text_file, script, args):
    run = tmp_path / "run"
    extra = ["--corpus", text_file, "--checkpoint-dir", run] if script == "train.py" else ["--checkpoint", run]
    line = assert_one_line_error(run_script(script, *extra, *args, cwd=tmp_path), code=2,
                                 prefix=f"{script}: error: argument {args[0]}")
    assert line.endswith("(see --help)")
    assert not run.exists()


# -- the interactive prompt's commands ------------------------------------------------------------
VOCAB = Vocab(list("ab \n"))
torch.manual_seed(0)
PROMPT_MODEL = CharRNN(ModelConfig(len(VOCAB), "lstm", 8, 1, 4)).eval()
NAMES = ["temp", "topk", "topp", "len", "seed", "reset", "info", "help", "quit", "q", "exit"]
NUMBERS = st.one_of(st.integers().map(str), st.floats().map(repr), st.floats().map(str),
                    st.sampled_from(["nan", "-nan", "inf", "-inf", "1e309", "1e-320", "-0", "0x10", "1_000",
                                     "\u0663", " 2 ", "18446744073709551616", "9" * 5000, "True", "1/2"]))
LINE_TEXT = st.text(st.characters(blacklist_characters="\n\r"), max_size=30)  # what one prompt line can hold
COMMAND = st.one_of(st.builds(lambda n, a: f":{n} {a}", st.sampled_from(NAMES), st.one_of(NUMBERS, LINE_TEXT)),
                    st.builds(lambda n: f":{n}", st.sampled_from(NAMES)),
                    LINE_TEXT.map(lambda t: ":" + t))


@given(lines=st.lists(COMMAND, min_size=1, max_size=4))
@settings(max_examples=100, deadline=None)
@example(lines=[":seed 18446744073709551616", ":seed -1", ":temp 1e-320", ":topp 0", ":topk 0", ":len 0"])
@example(lines=[":temp nan", ":topp nan", ":len 99999999999999999999", ":temp 1e309"])
def test_prompt_commands_act_or_raise_charrnn_error(lines):
    session = Session(PROMPT_MODEL, VOCAB, SampleConfig(length=1, seed=0), info="tiny", out=io.StringIO())
    for line in lines:
        try:
            assert session.handle(line) in (True, False)
        except CharRNNError as e:
            assert "\n" not in str(e)
        config = SampleConfig(**asdict(session.config))  # still valid: __post_init__ would raise
        texts, _ = generate(PROMPT_MODEL, VOCAB, replace(config, length=1), "a", generator=session.generator)
        assert len(texts[0]) == 1 and texts[0] in VOCAB
