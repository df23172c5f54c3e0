"""The trainer: learning, exact resume (in-process and through the CLI with SIGINT), stopping on a
non-finite loss, metrics, the schedule, resume checks, and the train.py command line."""
import dataclasses
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

from charrnn import checkpoint, sizing
from charrnn.errors import CharRNNError
from charrnn.config import COPY_MEMORY, REGULARISE_PASSES, TrainConfig
from charrnn.device import ThreadGovernor
from charrnn.evaluate import evaluate
from charrnn.launch import resume_config, train
from charrnn.trainer import Trainer, evaluation_due, learning_rate
from common import make_cjk_text
from conftest import build_trainer, make_text, names_folder

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


def tiny(corpus: Path, run_dir: Path | None, **kw) -> TrainConfig:
    base = dict(corpus=str(corpus), model="lstm", rnn_size=16, num_layers=1, embedding_size=8,
                seq_length=8, batch_size=4, learning_rate=1e-2, warmup_steps=0, max_steps=20,
                eval_every=10, checkpoint_dir=run_dir and str(run_dir), threads=1)
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


def test_learning_rate_decays_in_a_straight_line_with_linear():
    c = TrainConfig(learning_rate=1.0, warmup_steps=10, min_lr_frac=0.1, lr_schedule="linear")
    assert [learning_rate(c, 100, p) for p in (0.0, 0.25, 0.9, 1.0, 2.0)] == pytest.approx([1.0, 0.775, 0.19, 0.1, 0.1])
    assert learning_rate(c, 4, 0.0) == pytest.approx(0.5)


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
              for value in ("0", "-1", "nan", "abc", "10000000000", "1.5", "9" * 400)]
BAD_VALUES += [("--learning-rate", v) for v in ("0", "-1", "nan", "abc", "1e12", "inf")]
BAD_VALUES += [("--time-budget", v) for v in ("0", "-1", "nan", "abc", "9" * 400, "100000h")]
BAD_VALUES += [("--dropout", v) for v in ("-1", "nan", "abc", "1e9", "1", "inf")]  # 0 is a fine dropout
BAD_VALUES += [("--weight-drop", v) for v in ("-0.1", "nan", "abc", "1", "0.95")]
BAD_VALUES += [("--ema-decay", v) for v in ("-0.1", "nan", "abc", "1", "2")]  # 1 would never move
BAD_VALUES += [("--copy-memory", v) for v in ("-1", "nan", "abc", "1.5", "100000")]


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


# -- issue 11: losing work, stopping rules, resume checks -----------------------------------------

def test_a_new_run_never_replaces_or_mixes_with_an_earlier_one(tmp_path, monkeypatch):
    """Issue 11 item 1: the default folder moves on; a named one is refused; --overwrite replaces it."""
    monkeypatch.chdir(tmp_path)
    corpus = corpus_file(tmp_path, 700, name="mytext.txt")
    first = train(tiny(corpus, None, max_steps=4, eval_every=2))
    assert first["checkpoint_dir"] == str(Path("checkpoints") / "mytext")
    before = (tmp_path / "checkpoints" / "mytext" / "best.pt").read_bytes()
    second = train(tiny(corpus, None, max_steps=2, eval_every=2))
    assert second["checkpoint_dir"] == str(Path("checkpoints") / "mytext-2")
    assert (tmp_path / "checkpoints" / "mytext" / "best.pt").read_bytes() == before
    named = tmp_path / "checkpoints" / "mytext"
    with pytest.raises(CharRNNError, match="--resume .*--overwrite"):
        train(tiny(corpus, named, max_steps=2))
    assert (named / "best.pt").read_bytes() == before
    train(tiny(corpus, named, max_steps=3, eval_every=10, sample_length=0), overwrite=True)
    assert checkpoint.load(named / "best.pt")["progress"]["step"] == 3  # no file of the old run is left
    assert [json.loads(r)["step"] for r in (named / "metrics.jsonl").read_text().splitlines()] == [3]


def test_a_folder_with_the_files_of_a_run_stopped_before_its_first_checkpoint_is_reused_clean(tmp_path):
    """Issue 11 item 1: stale logs of a run that saved nothing are not mixed into the new run."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 999, "val_loss": 9}\n')
    (run_dir / "notes.txt").write_text("mine")
    train(tiny(corpus_file(tmp_path), run_dir, max_steps=2, eval_every=2))
    assert [json.loads(r)["step"] for r in (run_dir / "metrics.jsonl").read_text().splitlines()] == [2]
    assert (run_dir / "notes.txt").read_text() == "mine"  # not a run's file: left alone


def test_a_time_budget_run_stops_at_the_evaluation_that_spends_the_budget(tmp_path, monkeypatch):
    """Issue 11 item 11: no extra step and no second evaluation once an evaluation passes the budget."""
    clock = iter(range(10**6))  # every reading of the clock is one second later
    monkeypatch.setattr("charrnn.trainer.time.perf_counter", lambda: float(next(clock)))
    run_dir = tmp_path / "run"
    summary = train(tiny(corpus_file(tmp_path), run_dir, max_steps=None, time_budget=10.0, eval_every=3,
                         sample_length=0))
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    assert evals[-1]["step"] == summary["step"]
    assert [r["elapsed"] >= 10 for r in evals].count(True) == 1


def test_resuming_a_finished_run_says_why_nothing_trains_and_writes_no_nan(tmp_path, capsys):
    """Issue 11 item 12: no NaN row in metrics.jsonl, and a reason when 0 steps are trained."""
    run_dir = tmp_path / "run"
    train(tiny(corpus_file(tmp_path), run_dir, max_steps=4, eval_every=2))
    before = (run_dir / "metrics.jsonl").read_text()
    capsys.readouterr()
    summary = train(TrainConfig(), resume=str(run_dir), overrides={})
    assert summary["step"] == 4
    assert "nothing to train" in capsys.readouterr().out
    assert (run_dir / "metrics.jsonl").read_text() == before and "NaN" not in before


def test_resume_after_the_corpus_changed_with_the_same_vocabulary_is_refused(tmp_path):
    """Issue 11 item 13: more than the vocabulary is checked (length and a hash of the text)."""
    corpus = corpus_file(tmp_path, 1000)
    train(tiny(corpus, tmp_path / "run", max_steps=2, eval_every=2))
    corpus.write_text(make_text(3000), encoding="utf-8")  # same characters, a different text
    with pytest.raises(CharRNNError, match="corpus has changed"):
        train(TrainConfig(), resume=str(tmp_path / "run"), overrides={"max_steps": 4})


def test_resume_accepts_the_corpus_flag_given_as_a_relative_path(tmp_path, monkeypatch):
    """Issue 11 item 14: --corpus c.txt from the corpus's folder matches the saved absolute path."""
    corpus = corpus_file(tmp_path, 700, name="c.txt")
    train(tiny(corpus, tmp_path / "run", max_steps=2, eval_every=2))
    monkeypatch.chdir(tmp_path)
    summary = train(TrainConfig(), resume="run", overrides={"corpus": "c.txt", "max_steps": 3})
    assert summary["step"] == 3


def test_help_says_when_the_same_seed_gives_the_same_run(capsys):
    """Issue 11 item 15: the claim is made only where it holds (not with a time budget)."""
    with pytest.raises(SystemExit):
        load_cli().build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "with --max-steps or --max-epochs the same seed gives the same run on the same CPU" in text


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("2min", 120), ("10m", 600), ("1.5h", 5400),
                                           ("1h30m", 5400), ("45", 45)])
def test_time_budget_takes_the_usual_spellings(text, seconds):
    """Issue 11 item 19: 2min is a duration."""
    assert load_cli().build_parser().parse_args(["--time-budget", text]).time_budget == seconds


# -- issue 12: a trainer handed its parts; a start without torch ----------------------------------

def test_a_trainer_is_built_from_parts_without_a_corpus(tmp_path):
    import numpy as np

    from charrnn.data import StreamBatches
    from charrnn.model import CharRNN
    from charrnn.runs import RunDir
    from charrnn.vocab import Vocab

    config = TrainConfig.from_options(rnn_size=16, num_layers=1, embedding_size=8, seq_length=8, batch_size=4,
                                      max_steps=3, eval_every=3, sample_length=10, log_every=1)
    tokens = np.random.default_rng(0).integers(0, 5, 2000).astype(np.uint8)
    model = CharRNN(dataclasses.replace(config.model, vocab_size=5))
    trainer = Trainer(config, model, torch.optim.AdamW(model.parameters()), StreamBatches(tokens, 4, 8),
                      tokens[:200], Vocab(list("abcde")), RunDir(tmp_path / "run"))
    summary = trainer.run(progress_bar=False)
    assert summary["step"] == 3 and (tmp_path / "run" / "best.pt").exists()


@pytest.mark.parametrize("script", ["train.py", "generate.py"])
def test_help_and_flag_errors_answer_before_torch_is_imported(script):
    probe = ("import runpy, sys\nsys.argv = [{s!r}] + sys.argv[1:]\n"
             "try:\n    runpy.run_path({s!r}, run_name='__main__')\n"
             "finally:\n    print('torch' in sys.modules, file=sys.stderr)\n").format(s=str(REPO / script))
    for args in (["--help"], ["--length" if script == "generate.py" else "--rnn-size", "0"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode in (0, 2) and done.stderr.strip().endswith("False"), done.stderr


# -- issue 13: evaluation that does not grow with the corpus ---------------------------------------

def test_evaluation_scores_a_fixed_bounded_part_of_the_validation_split(tmp_path, capsys):
    config = tiny(corpus_file(tmp_path, 4000), tmp_path / "run", val_frac=0.5, eval_chars=300, max_steps=2)
    trainer = build_trainer(config)
    assert len(trainer.val_tokens) == 300
    assert "the first 300 of the 2,000 validation chars" in capsys.readouterr().out
    assert len(build_trainer(dataclasses.replace(config, eval_chars=0)).val_tokens) == 2000


# -- issue 14: samples, logs and checkpoint history while training --------------------------------

def test_each_evaluation_prints_a_sample_and_keeps_it_in_samples_jsonl(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(tiny(corpus_file(tmp_path), run_dir, max_steps=4, eval_every=2, sample_length=30, sample_prime="the "))
    rows = [json.loads(r) for r in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(r["text"].startswith("the ") and len(r["text"]) == 34 for r in rows)
    out = capsys.readouterr().out
    assert rows[-1]["text"].splitlines()[0] in out


def test_training_loss_is_logged_between_evaluations(tmp_path):
    run_dir = tmp_path / "run"
    train(tiny(corpus_file(tmp_path), run_dir, max_steps=6, eval_every=6, log_every=2, sample_length=0))
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" not in r] == [2, 4, 6]
    assert all(math.isfinite(r["train_loss"]) for r in rows)


def test_keep_checkpoints_keeps_the_last_n_evaluations(tmp_path):
    run_dir = tmp_path / "run"
    train(tiny(corpus_file(tmp_path), run_dir, max_steps=8, eval_every=2, keep_checkpoints=2, sample_length=0))
    assert sorted(p.name for p in run_dir.glob("step_*.pt")) == ["step_000006.pt", "step_000008.pt"]
    assert checkpoint.load(run_dir / "step_000006.pt")["progress"]["step"] == 6


def test_a_short_time_budget_run_evaluates_before_its_end(tmp_path, monkeypatch):
    """Evaluations come at least every quarter of a time budget, whatever --eval-every says."""
    clock = iter(range(10**6))
    monkeypatch.setattr("charrnn.trainer.time.perf_counter", lambda: float(next(clock)) * 0.5)
    run_dir = tmp_path / "run"
    train(tiny(corpus_file(tmp_path), run_dir, max_steps=None, time_budget=120.0, eval_every=10**6,
               sample_length=0))
    evals = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in evals if "val_loss" in r]) >= 4


def test_a_budget_that_ends_during_a_quick_evaluation_still_saves_the_last_step(tmp_path, monkeypatch):
    """A pass-end evaluation can take the run past its budget; last.pt and the logs then hold that step."""
    late, real_clock = [0.0], time.perf_counter
    monkeypatch.setattr("charrnn.trainer.time.perf_counter", lambda: real_clock() + late[0])
    evaluate_and_save = Trainer.evaluate_and_save

    def slow_when_quick(self, *args, quick=False):
        late[0] += 3600.0 * quick  # this evaluation's time ends the budget
        return evaluate_and_save(self, *args, quick=quick)

    monkeypatch.setattr(Trainer, "evaluate_and_save", slow_when_quick)
    run_dir = tmp_path / "run"
    summary = train(tiny(corpus_file(tmp_path), run_dir, max_steps=None, time_budget=600.0, eval_every=10**6,
                         sample_length=0))
    evals = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines() if "val_loss" in r]
    assert 0 < summary["step"] < 100 and evals[-1]["step"] == summary["step"]
    assert checkpoint.load(run_dir / "last.pt")["progress"]["step"] == summary["step"]


# --- the model's size on a time budget (charrnn.sizing) ---

def test_a_budget_picks_the_largest_rung_that_makes_enough_passes(monkeypatch):
    speeds = {256: 60_000.0, 384: 30_000.0, 512: 15_000.0}  # chars/s a rung trains at, by size
    timed = []

    def fake_speed(config, *_):
        timed.append((config.model.num_layers, config.model.rnn_size))
        return speeds[config.model.rnn_size] / (config.model.num_layers - 1)

    monkeypatch.setattr(sizing, "chars_per_second", fake_speed)
    config = TrainConfig(time_budget=600.0)
    # 1M characters: 2x512 makes 9 passes in 600 s, 3x512 4.5, fewer than MIN_PASSES
    chosen, why = sizing.size_for_budget(config, 1_000_000, 65, torch.device("cpu"), None)
    assert (chosen.model.num_layers, chosen.model.rnn_size, chosen.model.dropout) == (2, 512, 0.3)
    assert timed == [(2, 256), (2, 384), (2, 512), (3, 512)] and "2x512" in why and "3x512 4.5" in why
    assert chosen.seq_length == config.seq_length and chosen.time_budget == 600.0
    assert chosen.model.weight_drop == 0 and chosen.ema_decay == 0  # 9 passes: nothing to regularise
    timed.clear()  # 5 minutes: 2x384 makes 9 passes, 2x512 4.5
    chosen, _ = sizing.size_for_budget(replace(config, time_budget=300.0), 1_000_000, 65, torch.device("cpu"), None)
    assert chosen.model.rnn_size == 384 and timed == [(2, 256), (2, 384), (2, 512)]
    timed.clear()  # a minute: no shape beyond the first is affordable; the config is kept as it is
    gru = config.with_options(time_budget=60.0, model="gru", embedding_size=32)
    chosen, why = sizing.size_for_budget(gru, 1_000_000, 65, torch.device("cpu"), None)
    assert chosen == gru and timed == [(2, 256), (2, 384)] and "no larger size makes" in why


def test_a_rung_needs_enough_steps_as_well_as_passes(monkeypatch):
    monkeypatch.setattr(sizing, "chars_per_second",
                        lambda config, *_: 7_680_000.0 / config.model.rnn_size / (config.model.num_layers - 1))
    # 2x384 trains 20,000 chars/s: 12 passes over 1M characters in 600 s, but with 256-row batches
    # only 1,465 steps, fewer than MIN_STEPS
    big_batches = TrainConfig(time_budget=600.0, batch_size=256)
    chosen, why = sizing.size_for_budget(big_batches, 1_000_000, 65, torch.device("cpu"), None)
    assert chosen.model.rnn_size == 256 and "2x384 12.0 (1,465 steps)" in why and "3,000 steps" in why
    # with the default 64 rows the 2x512 makes 9 passes in 4,395 steps; a 3x512 4.5 passes
    chosen, _ = sizing.size_for_budget(replace(big_batches, batch_size=64), 1_000_000, 65, torch.device("cpu"), None)
    assert (chosen.model.num_layers, chosen.model.rnn_size) == (2, 512)


def test_a_shape_that_reads_a_small_corpus_many_times_is_regularised(monkeypatch):
    timed = []
    monkeypatch.setattr(sizing, "chars_per_second", lambda config, *_: timed.append(config.model.rnn_size) or 10_000.0)
    config = TrainConfig(time_budget=600.0)
    # 50,000 characters: a 2x384 has more than 12.5 parameters a character; the 2x256 makes 120 passes
    chosen, why = sizing.size_for_budget(config, 50_000, 65, torch.device("cpu"), None)
    assert timed == [256] and chosen.model.rnn_size == 256 and "50,000 characters" in why
    assert (chosen.model.weight_drop, chosen.ema_decay) == (0.5, 0.998)
    assert "120 passes would overfit" in why and "--weight-drop 0.5 and --ema-decay 0.998 added" in why
    # fewer passes, a lighter DropConnect: 250 s make 50
    lighter, why = sizing.size_for_budget(replace(config, time_budget=250.0), 50_000, 65, torch.device("cpu"), None)
    assert (lighter.model.weight_drop, lighter.ema_decay) == (0.3, 0.998)
    assert "50 passes would overfit" in why and "--weight-drop 0.3 and --ema-decay 0.998 added" in why
    plain, why = sizing.size_for_budget(config, 50_000, 65, torch.device("cpu"), None, regularise=False)
    assert plain == config and "overfit" not in why
    fewer = replace(config, time_budget=REGULARISE_PASSES * 5 - 1)  # just under REGULARISE_PASSES
    assert sizing.size_for_budget(fewer, 50_000, 65, torch.device("cpu"), None)[0] == fewer


def test_a_budget_adds_the_copy_attention_where_it_buys_enough_steps(monkeypatch):
    timed = []

    def fake_speed(config, *_):  # a 2x256 trains 20,000 chars/s, 15,000 with the copy attention
        timed.append(config.model.copy_memory)
        return 20_000.0 * (0.75 if config.model.copy_memory else 1) / (config.model.rnn_size / 256)

    monkeypatch.setattr(sizing, "chars_per_second", fake_speed)
    config = TrainConfig(time_budget=600.0, batch_size=32)
    # 600 s of 15,000 chars/s in steps of 32 x 32: 8,789 steps with the copy, COPY_MIN_STEPS or more
    chosen, why = sizing.size_for_budget(config, 2_000_000, 65, torch.device("cpu"), None, copy=True)
    assert (chosen.model.rnn_size, chosen.model.copy_memory) == (256, COPY_MEMORY) and timed == [0, 0, COPY_MEMORY]
    assert f"with a copy attention over {COPY_MEMORY:,} characters, 4.5 passes in 8,789 steps" in why
    # a quarter of that budget buys 2,197 steps with it: too few to learn it
    chosen, why = sizing.size_for_budget(replace(config, time_budget=150.0), 2_000_000, 65, torch.device("cpu"),
                                         None, copy=True)
    assert chosen.model.copy_memory == 0 and "no copy attention: it would make 2,197 steps" in why
    assert sizing.size_for_budget(config, 2_000_000, 65, torch.device("cpu"), None)[0].model.copy_memory == 0
    # 150,000 characters (too few for a 2x384 with it) read 60 times with it in 600 s: more than
    # COPY_MAX_PASSES, so no copy; the regularisers for the plain model's 80 passes
    chosen, why = sizing.size_for_budget(config, 150_000, 65, torch.device("cpu"), None, copy=True)
    assert (chosen.model.rnn_size, chosen.model.copy_memory) == (256, 0) and "at most 25 passes" in why
    assert (chosen.model.weight_drop, chosen.ema_decay, chosen.lr_schedule) == (0.3, 0.998, "cosine")
    # 15 times in 150 s (in 8,789 steps of 8 rows): the copy, and the regularisers too, the average
    # longer with it
    fewer = replace(config, time_budget=150.0, batch_size=8)
    chosen, why = sizing.size_for_budget(fewer, 150_000, 65, torch.device("cpu"), None, copy=True)
    assert chosen.model.copy_memory and (chosen.model.weight_drop, chosen.ema_decay) == (0.3, 0.9995)
    assert chosen.lr_schedule == "linear"
    assert "--weight-drop 0.3, --ema-decay 0.9995 and --lr-schedule linear added" in why


def test_options_the_user_chose_are_left_alone(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(sizing, "size_for_budget", lambda config, *args: asked.append(args[-2:]) or (config, ""))
    corpus, budget = corpus_file(tmp_path), dict(max_steps=None, time_budget=0.5)
    for name, given in (("a", {}), ("b", {"weight_drop": 0.1}), ("c", {"ema_decay": 0.9}), ("d", {"copy_memory": 0})):
        train(tiny(corpus, tmp_path / name, **budget), overrides=given, progress_bar=False)
    train(tiny(names_folder(tmp_path), tmp_path / "e", items=True, **budget), overrides={}, progress_bar=False)
    # (regularise, copy): a list's items each start afresh, so it gets no copy attention either
    assert asked == [(True, True), (False, True), (False, True), (True, False), (True, False)]


def test_the_sizes_are_timed_at_the_threads_a_busy_machine_leaves(tmp_path, monkeypatch):
    # another process keeps one core busy: the run trains with one thread of two, so it times with one
    monkeypatch.setattr(ThreadGovernor, "_reading", staticmethod(lambda: (time.monotonic(), time.monotonic(), 0.0)))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    timed_with = []
    monkeypatch.setattr(sizing, "size_for_budget",
                        lambda config, *args: timed_with.append(torch.get_num_threads()) or (config, ""))
    threads = torch.get_num_threads()
    config = tiny(corpus_file(tmp_path), tmp_path / "run", max_steps=None, time_budget=0.5, threads=None)
    train(config, overrides={}, progress_bar=False)
    torch.set_num_threads(threads)
    assert timed_with == [1]


def test_chars_per_second_times_real_training_steps():
    config = TrainConfig.from_options(rnn_size=16, num_layers=1, embedding_size=8, batch_size=4, seq_length=8)
    assert 0 < sizing.chars_per_second(config, 20, torch.device("cpu"), None) < 1e9


def test_only_a_new_time_budget_run_with_no_shape_given_is_sized(tmp_path, monkeypatch):
    calls = []

    def record(config, *args):
        calls.append(config)
        return config.with_options(rnn_size=24), "sized"

    monkeypatch.setattr(sizing, "size_for_budget", record)
    corpus = corpus_file(tmp_path)
    budget = dict(max_steps=None, time_budget=0.5)
    train(tiny(corpus, tmp_path / "a", **budget), overrides={}, progress_bar=False)
    assert len(calls) == 1 and checkpoint.load(tmp_path / "a" / "last.pt")["train_config"]["model"]["rnn_size"] == 24
    train(tiny(corpus, tmp_path / "b", **budget), overrides={"rnn_size": 16}, progress_bar=False)
    train(tiny(corpus, tmp_path / "c"), overrides={}, progress_bar=False)  # a step count, not a budget
    train(tiny(corpus, tmp_path / "d", max_steps=5, time_budget=60.0), overrides={}, progress_bar=False)
    train(tiny(corpus, tmp_path / "e", **budget), progress_bar=False)  # which options were given is unknown
    train(tiny(corpus, tmp_path / "f", **budget), init_from=str(tmp_path / "a"),
          overrides={}, progress_bar=False)  # a fine-tune keeps its base's shape
    assert len(calls) == 1


def test_a_whole_model_config_from_python_is_not_resized():
    shape = TrainConfig().model
    assert sizing.wanted(TrainConfig(time_budget=60.0), {"model": "gru"})  # the cell alone is no shape
    assert not sizing.wanted(TrainConfig(time_budget=60.0), {"model": shape})
    assert not sizing.wanted(TrainConfig(time_budget=60.0), {"dropout": 0.1})


# -- issue 25: a real folder, a tiny corpus ---------------------------------------------------------

def test_a_folder_with_an_undecodable_file_trains_and_says_once_what_it_left_out(tmp_path, capsys):
    folder = tmp_path / "headers"
    folder.mkdir()
    corpus_file(folder, 2000, "a.h")
    (folder / "Xge.h").write_bytes(b"/* \xa9 */\n")
    train(tiny(folder, tmp_path / "run", max_steps=2, eval_every=2, sample_length=0))
    err = capsys.readouterr().err
    assert err.count("skipped 1 files of headers: 1 not valid utf-8 (Xge.h; --encoding latin-1 reads them)") == 1


def test_a_corpus_whose_pass_is_long_is_evaluated_as_before():
    assert [s for s in range(1, 2001) if evaluation_due(s, 500, 800)] == [500, 1000, 1500, 2000]
    assert [s for s in range(1, 2001) if evaluation_due(s, 500, 500)] == [500, 1000, 1500, 2000]


def test_a_short_pass_is_evaluated_every_pass_and_at_its_quarter_and_half_the_first_time():
    assert [s for s in range(1, 60) if evaluation_due(s, 500, 18)] == [4, 9, 18, 36, 54]
    assert [s for s in range(1, 60) if evaluation_due(s, 20, 18)] == [4, 9, 18, 36, 54]


def test_on_a_tiny_corpus_best_pt_is_the_best_of_evaluations_that_come_every_pass(tmp_path):
    """Issue 25 item 2: the validation loss is lowest after a few passes, long before --eval-every."""
    text = tmp_path / "zh.txt"
    text.write_text(make_cjk_text(1500), encoding="utf-8")
    run_dir = tmp_path / "run"
    train(tiny(text, run_dir, rnn_size=64, embedding_size=16, seq_length=16, learning_rate=0.02,
               max_steps=300, eval_every=300, sample_length=0, seed=0))
    evals = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    steps_per_epoch = checkpoint.load(run_dir / "last.pt")["data"]["steps_per_epoch"]
    assert set(range(steps_per_epoch, 301, steps_per_epoch)) <= {r["step"] for r in evals}
    best = min(evals, key=lambda r: r["val_loss"])
    assert best["step"] < 300 and best["val_loss"] < evals[-1]["val_loss"] - 0.2  # overfit after it
    assert checkpoint.load(run_dir / "best.pt")["progress"]["step"] == best["step"]


def test_the_start_up_lines_say_when_the_validation_split_is_too_small_to_mean_much(tmp_path, capsys):
    build_trainer(tiny(corpus_file(tmp_path, 4000), tmp_path / "run"))
    assert "the validation split is small (400 chars, under 10,000)" in capsys.readouterr().out
    build_trainer(tiny(corpus_file(tmp_path, 100_000, "big.txt"), tmp_path / "run2"))
    out = capsys.readouterr().out
    assert "val 10,000" in out and "the validation split is small" not in out
