"""The trainer: learning, exact resume (in-process and through the CLI with SIGINT), stopping on a
non-finite loss, metrics, the schedule, resume checks, and the train.py command line."""
import importlib.util
import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from charrnn import checkpoint
from charrnn.errors import CharRNNError
from charrnn.config import TrainConfig
from charrnn.evaluate import evaluate
from charrnn.launch import resume_config, train
from charrnn.trainer import Trainer, learning_rate
from conftest import build_trainer, make_text

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_plot(monkeypatch):
    """Drawing loss_curve.png costs ~1 s of matplotlib here; subprocesses still draw it."""
    monkeypatch.setattr("charrnn.trainer.plot_metrics", lambda *args: None)


def load_cli():
    spec = importlib.util.spec_from_file_location("train_cli", REPO / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def corpus_file(tmp_path: Path, n_chars: int = 4000, name: str = "toy.txt") -> Path:
    path = tmp_path / name
    path.write_text(make_text(n_chars), encoding="utf-8")
    return path


def tiny(corpus: Path, run_dir: Path, **kw) -> TrainConfig:
    base = dict(corpus=str(corpus), model="lstm", rnn_size=16, num_layers=1, embedding_size=8,
                seq_length=8, batch_size=4, learning_rate=1e-2, warmup_steps=0, max_steps=20,
                eval_every=10, checkpoint_dir=str(run_dir), threads=1)
    return TrainConfig.from_options(**{**base, **kw})


def weights(path: Path) -> dict:
    return checkpoint.load(path)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ: {different}"


# -- learning -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_each_cell_learns_a_repetitive_text(tmp_path, cell):
    trainer = build_trainer(tiny(corpus_file(tmp_path), tmp_path / "run", model=cell, rnn_size=32, seq_length=16,
                           batch_size=8, max_steps=40))
    before = evaluate(trainer.model, trainer.val_tokens, trainer.device, chunk=16)
    losses = [trainer.train_step() for _ in range(40)]
    after = evaluate(trainer.model, trainer.val_tokens, trainer.device, chunk=16)
    assert after < 0.8 * before, (before, after)
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])


def test_evaluate_works_on_a_validation_split_shorter_than_its_streams(tmp_path):
    trainer = build_trainer(tiny(corpus_file(tmp_path, 200), tmp_path / "run", val_frac=0.03))
    assert 2 <= len(trainer.val_tokens) < 9
    assert math.isfinite(evaluate(trainer.model, trainer.val_tokens, trainer.device, chunk=8))


# -- exact resume -------------------------------------------------------------------------------

@pytest.mark.parametrize("batching,half", [("stream", 12), ("stream", 19), ("random", 12)],
                         ids=["stream", "stream-at-epoch-end", "random"])
def test_resume_is_bit_identical(tmp_path, batching, half):
    # 630 training chars in 4 rows of 8-char windows: 19 steps an epoch, so the resumed half
    # crosses an epoch boundary (or starts exactly on one); dropout makes the RNG state matter.
    config = tiny(corpus_file(tmp_path, 700), tmp_path / "whole", model="lstm", num_layers=2,
                  dropout=0.3, batching=batching, max_steps=2 * half, eval_every=5)
    train(config)
    halves = replace(config, checkpoint_dir=str(tmp_path / "halves"))
    trainer = build_trainer(halves)
    for _ in range(half):
        trainer.train_step()
    trainer.save("last.pt")
    summary = train(halves, resume=str(tmp_path / "halves"))
    assert summary["step"] == 2 * half
    assert_same_weights(weights(tmp_path / "whole" / "last.pt"), weights(tmp_path / "halves" / "last.pt"))


def test_resume_from_a_different_seed_is_not_identical(tmp_path):
    """The control for the test above: the comparison does see a difference in the run."""
    config = tiny(corpus_file(tmp_path, 700), tmp_path / "a", num_layers=2, dropout=0.3, max_steps=8)
    train(config)
    train(replace(config, checkpoint_dir=str(tmp_path / "b"), seed=7))
    a, b = weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt")
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_cli_sigint_saves_last_and_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    corpus = corpus_file(tmp_path, 3000)
    steps = 30
    flags = ["--corpus", str(corpus), "--model", "gru", "--rnn-size", "16", "--num-layers", "2",
             "--embedding-size", "8", "--seq-length", "8", "--batch-size", "4", "--dropout", "0.2",
             "--max-steps", str(steps), "--eval-every", "1", "--threads", "1"]
    run_dir, ref_dir = tmp_path / "run", tmp_path / "ref"
    first = subprocess.Popen([sys.executable, "train.py", *flags, "--checkpoint-dir", str(run_dir)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (run_dir / "last.pt").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGINT)  # does nothing if it has already exited
    out, err = first.communicate(timeout=60)
    if first.returncode == 0:
        pytest.skip("the first run finished before the signal arrived")
    assert first.returncode == 130, err
    assert "Traceback" not in err
    stopped_at = checkpoint.load(run_dir / "last.pt")["progress"]["step"]
    if stopped_at == steps:
        pytest.skip("the signal arrived after the last step, while the run was exiting")
    assert stopped_at >= 1
    hints = [line for line in out.splitlines() if "Resume with" in line]
    assert len(hints) == 1 and f"--resume {run_dir}" in hints[0]

    resumed = subprocess.Popen([sys.executable, "train.py", "--resume", str(run_dir)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    monkeypatch.setattr(sys, "argv", ["train.py", *flags, "--checkpoint-dir", str(ref_dir)])
    assert load_cli().main() == 0  # the uninterrupted run, in this process meanwhile
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert f"done: step {steps}" in out
    assert_same_weights(weights(ref_dir / "last.pt"), weights(run_dir / "last.pt"))


# -- stopping on a broken run -------------------------------------------------------------------

def _break_weights_at(monkeypatch, step: int, snapshot: dict, run_dir: Path) -> None:
    """After step `step` the head's bias is NaN (that step's own loss is still finite, as when an
    update overflows); the files on disk are recorded just before."""
    original = Trainer.train_step

    def train_step(self):
        loss = original(self)
        if self.step == step:
            snapshot.update({n: (run_dir / n).read_bytes() for n in ("best.pt", "last.pt")})
        if self.step >= step:
            with torch.no_grad():
                self.model.head.bias.fill_(math.nan)
        return loss

    monkeypatch.setattr(Trainer, "train_step", train_step)


@pytest.mark.parametrize("broken_at", [5, 8], ids=["between-evaluations", "at-an-evaluation"])
def test_non_finite_loss_stops_and_keeps_the_checkpoints(tmp_path, monkeypatch, broken_at):
    run_dir = tmp_path / "run"
    snapshot = {}
    _break_weights_at(monkeypatch, broken_at, snapshot, run_dir)
    with pytest.raises(CharRNNError) as info:
        train(tiny(corpus_file(tmp_path), run_dir, eval_every=4, max_steps=20))
    assert "nan" in str(info.value) and "\n" not in str(info.value)
    assert snapshot and all((run_dir / n).read_bytes() == b for n, b in snapshot.items())
    assert checkpoint.load(run_dir / "last.pt")["progress"]["step"] == 4
    assert [row["step"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())] == [4]


# -- what a run writes --------------------------------------------------------------------------

def test_metrics_row_per_evaluation_and_config_json(tmp_path):
    config = tiny(corpus_file(tmp_path), tmp_path / "run", max_steps=10, eval_every=4)
    summary = train(config)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 10]
    for r in rows:
        assert math.isfinite(r["val_loss"]) and r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2), abs=1e-4)
    assert summary["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in rows), abs=1e-5)
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == asdict(config)
    assert {p.name for p in (tmp_path / "run").glob("*.pt")} == {"best.pt", "last.pt"}


def test_learning_rate_warms_up_then_decays_by_cosine():
    c = TrainConfig(learning_rate=1.0, warmup_steps=10, min_lr_frac=0.1)
    assert [learning_rate(c, s, 0.0) for s in (0, 4, 9, 50)] == pytest.approx([0.1, 0.5, 1.0, 1.0])
    assert learning_rate(c, 100, 0.5) == pytest.approx(0.55)
    assert learning_rate(c, 100, 1.0) == pytest.approx(0.1)
    assert learning_rate(c, 100, 3.0) == pytest.approx(0.1)
    decay = [learning_rate(c, 100, p / 20) for p in range(21)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert learning_rate(replace(c, warmup_steps=0), 0, 0.0) == pytest.approx(1.0)


# -- resume checks ------------------------------------------------------------------------------

def test_resume_config_refuses_a_changed_model_flag():
    saved = asdict(TrainConfig.from_options(rnn_size=16, max_steps=10))
    with pytest.raises(CharRNNError, match="--rnn-size"):
        resume_config(saved, {"rnn_size": 32})
    config = resume_config(saved, {"max_steps": 99, "rnn_size": 16})
    assert config.max_steps == 99 and config.model.rnn_size == 16


def test_resume_with_a_changed_corpus_is_refused(tmp_path):
    corpus = corpus_file(tmp_path, 700)
    train(tiny(corpus, tmp_path / "run", max_steps=2, eval_every=2))
    corpus.write_text(make_text(700).upper(), encoding="utf-8")
    with pytest.raises(CharRNNError, match="vocabulary"):
        train(TrainConfig(), resume=str(tmp_path / "run"))


# -- the command line ---------------------------------------------------------------------------

def test_help_mentions_every_flag(capsys):
    with pytest.raises(SystemExit) as info:
        load_cli().build_parser().parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    names = list(TrainConfig().options()) + ["resume", "init_from", "overwrite"]
    for flag in ["--" + n.replace("_", "-") for n in names]:
        assert flag in text, flag
    for flag in ("--rnn-size", "--num-layers", "--seq-length", "--seed", "--resume", "--time-budget"):
        assert flag in text


def test_every_config_field_has_a_flag_that_defaults_to_unset():
    parser = load_cli().build_parser()
    dests = {a.dest for a in parser._actions} - {"help"}
    assert dests == set(TrainConfig().options()) | {"resume", "init_from", "overwrite"}
    assert all(v is None for v in vars(parser.parse_args([])).values())  # so only given flags override
    args = vars(parser.parse_args(["--rnn-size", "32", "--time-budget", "1.5m", "--dropout", "0.2"]))
    given = {k: v for k, v in args.items() if v is not None}
    assert TrainConfig.from_options(**given) == TrainConfig.from_options(rnn_size=32, time_budget=90.0, dropout=0.2)


BAD_VALUES = [(flag, value) for flag in ("--rnn-size", "--seq-length")
              for value in ("0", "-1", "nan", "abc", "10000000000", "1.5")]
BAD_VALUES += [("--learning-rate", v) for v in ("0", "-1", "nan", "abc", "1e12", "inf")]
BAD_VALUES += [("--time-budget", v) for v in ("0", "-1", "nan", "abc", "9" * 400, "100000h")]
BAD_VALUES += [("--dropout", v) for v in ("-1", "nan", "abc", "1e9", "1", "inf")]  # 0 is a fine dropout


@pytest.mark.parametrize("flag,value", BAD_VALUES, ids=[f"{f}={v if len(v) < 20 else '9...9'}" for f, v in BAD_VALUES])
def test_bad_flag_value_exits_2_with_one_line(capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        load_cli().build_parser().parse_args([flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and flag in err and "Traceback" not in err


def test_missing_corpus_exits_1_with_one_line(tmp_path, monkeypatch, capsys):
    cli = load_cli()
    monkeypatch.setattr(sys, "argv", ["train.py", "--corpus", str(tmp_path / "missing.txt"),
                                      "--max-steps", "1", "--checkpoint-dir", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as info:
        cli.flags.run_main(cli.main)  # what `python train.py` runs, in this process
    assert info.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing.txt" in lines[0]
    assert not (tmp_path / "run").exists()
