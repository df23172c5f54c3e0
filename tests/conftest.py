"""Shared fixtures: every test gets its own corpus cache; small texts, a tiny trained checkpoint."""
import signal
import sys
from pathlib import Path

import pytest
import torch

from charrnn import checkpoint, flags

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))  # the helpers benchmarks and tests share
from common import SHAKESPEARE, SYLLABLES, make_names, make_text, names_folder  # noqa: E402,F401  (tests import them from here)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Corpus caches go to a temporary folder, never into the checkout."""
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "toy.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint (best.pt): a small 2-layer LSTM trained 150 steps (about a second) on make_text()."""
    return tiny_run(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def copy_checkpoint(tmp_path_factory) -> Path:
    """The same with a copy attention over 48 characters, fewer than a line of the text."""
    return tiny_run(tmp_path_factory.mktemp("copy_run"), copy_memory=48)


def tiny_run(root: Path, **options) -> Path:
    from charrnn.config import TrainConfig
    from charrnn.launch import train

    text = root / "toy.txt"
    text.write_text(make_text(), encoding="utf-8")
    config = TrainConfig.from_options(corpus=str(text), rnn_size=32, num_layers=2, embedding_size=16, seq_length=32,
                         batch_size=16, learning_rate=1e-2, warmup_steps=5, max_steps=150, eval_every=50,
                         checkpoint_dir=str(root / "run"), device="cpu", seed=0,
                         threads=1, **options)  # on a shared 2-core machine, 2 threads can be 100x slower
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:  # the per-test cache fixture is not active at session scope
        mp.setenv("CHARRNN_CACHE_DIR", str(root / "cache"))
        mp.setattr("charrnn.trainer.plot_metrics", lambda *args: None, raising=False)  # 1 s of matplotlib
        try:
            train(config)
        finally:
            torch.set_num_threads(threads)
    return root / "run" / "best.pt"


def build_trainer(config):
    """A Trainer for `config`, built as train.py builds it (a one-process world)."""
    from charrnn.distributed import World
    from charrnn.launch import build

    return build(config.with_stopping_rule(), World())


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine a second one costs 10x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def trained(tiny_checkpoint):
    """(model, vocab) of the tiny trained LSTM; its vocabulary is a-z, space, '.', newline."""
    return checkpoint.build_model(checkpoint.load(tiny_checkpoint))


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run generate.py in this process: cli(*args) -> (exit code, stdout, stderr)."""
    from charrnn.cli_generate import main  # what generate.py runs

    previous = signal.getsignal(signal.SIGTERM)  # main() points SIGTERM at KeyboardInterrupt
    threads = torch.get_num_threads()  # and sets the thread count (--threads 1: tiny models, 2 busy cores)

    def call(*args):
        monkeypatch.setattr(sys, "argv", ["generate.py", "--threads", "1", *map(str, args)])
        try:
            flags.run_main(main)
        except SystemExit as e:
            code = e.code
        finally:
            signal.signal(signal.SIGTERM, previous)
            torch.set_num_threads(threads)
        out, err = capsys.readouterr()
        return code, out, err
    return call
