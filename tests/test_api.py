"""The Python API (charrnn.load, charrnn.train, the README's example) and fine-tuning with --init-from."""
import hashlib
import re
import subprocess
import sys

import pytest
import torch

import charrnn
from charrnn.config import ModelConfig
from charrnn.errors import CharRNNError
from charrnn.model import CharRNN, grow_vocab
from conftest import REPO, make_text

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(rnn_size=32, num_layers=1, embedding_size=16, batch_size=16, seq_length=16, learning_rate=1e-2,
            warmup_steps=0, threads=1, sample_length=0)


def readme_python_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_text.txt").write_text(make_text(20_000).replace("the", "The"), encoding="utf-8")
    exec(compile(readme_python_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "checkpoints/my_text" in out and "bits" not in out.split("\n")[0]
    assert (tmp_path / "checkpoints" / "my_text" / "best.pt").exists()


def test_load_generate_stream_score_and_info(tiny_checkpoint):
    model = charrnn.load(tiny_checkpoint)
    text = model.generate("the ", length=40, temperature=0, seed=1)
    assert text.startswith("the ") and len(text) == 44
    assert "".join(model.stream("the ", length=40, temperature=0)) == text[4:]
    several = model.generate("the ", length=10, num_samples=3, seed=2)
    assert isinstance(several, list) and len(several) == 3 and all(len(t) == 14 for t in several)
    score = model.score("the quick brown fox jumps over the lazy dog.\n")
    assert score.chars == 44 and score.bits == pytest.approx(score.nats / 0.6931471805599453)
    assert model.info["corpus"]["name"] == "toy" and model.info["parameters"] > 0
    assert charrnn.load(tiny_checkpoint.parent).path == tiny_checkpoint  # a run folder means its best.pt


def test_train_checks_options_like_the_command_line(tmp_path):
    with pytest.raises(CharRNNError, match="--rnn-size"):
        charrnn.train(tmp_path / "x.txt", rnn_size=0)
    with pytest.raises(CharRNNError, match="unknown option 'rnn_sise'"):
        charrnn.train(tmp_path / "x.txt", rnn_sise=8)


def test_console_scripts_are_the_command_line(tmp_path):
    for script in ("charrnn-train", "charrnn-generate"):
        done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "--checkpoint" in done.stdout


# ---------------------------------------------------------------- fine-tuning


def test_grow_vocab_keeps_old_rows_and_starts_new_characters_unlikely():
    torch.manual_seed(0)
    old = CharRNN(ModelConfig(vocab_size=3, rnn_size=8, num_layers=1, embedding_size=4, copy_memory=16))
    grown = grow_vocab(old, list("abc"), list("Zabcd"), ModelConfig(vocab_size=5, rnn_size=8, num_layers=1,
                                                                    embedding_size=4, dropout=0.5, copy_memory=16))
    for name in ("embed.weight", "head.weight", "head.bias", "copy_value.weight"):
        assert torch.equal(grown.state_dict()[name][1:4], old.state_dict()[name])
    assert torch.equal(grown.rnn.weight_hh_l0, old.rnn.weight_hh_l0) and grown.drop.p == 0.5
    assert torch.equal(grown.copy_key.weight, old.copy_key.weight) and not grown.copy_value.weight[[0, 4]].any()
    log_probs = grown(torch.tensor([[1, 2, 3]]))[0][0, -1]
    assert log_probs.exp()[[0, 4]].max() < 1 / 5  # new characters start unlikely...
    log_probs[0].neg().backward()
    assert grown.head.weight.grad[0].abs().sum() > 0  # ...and learnable


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_fine_tuning_learns_new_characters_and_records_its_lineage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.txt").write_text(make_text(20_000), encoding="utf-8")
    base = charrnn.train(tmp_path / "base.txt", max_steps=60, eval_every=60, progress=False, **TINY)
    before = digest(base.checkpoint_dir)
    (tmp_path / "new.txt").write_text(make_text(20_000).replace("the", "THE!"), encoding="utf-8")
    options = {**TINY, "rnn_size": 32, "dropout": 0.1}
    tuned = charrnn.train(tmp_path / "new.txt", init_from=base.checkpoint_dir, max_steps=150, eval_every=150,
                          progress=False, **options)
    assert digest(base.checkpoint_dir) == before  # the base run's files are never touched
    assert tuned.checkpoint_dir != base.checkpoint_dir
    model = tuned.load()
    assert {"T", "H", "E", "!"} <= set(model.vocab.chars) and set(charrnn.load(base.checkpoint_dir).vocab.chars) < set(model.vocab.chars)
    assert "THE!" in model.generate("the lazy dog. ", length=300, temperature=0.5, seed=0)
    lineage = model.info["lineage"]
    assert len(lineage) == 1 and lineage[0]["corpus"] == "base" and lineage[0]["step"] == 60
    assert "initialised from" in model.describe() and "base" in model.describe()
    resumed = charrnn.train(resume=tuned.checkpoint_dir, max_steps=160, progress=False)
    assert resumed.step == 160 and resumed.checkpoint_dir == tuned.checkpoint_dir
    with pytest.raises(CharRNNError, match="--rnn-size 64 differs from the base model's 32"):
        charrnn.train(tmp_path / "new.txt", init_from=base.checkpoint_dir, **{**TINY, "rnn_size": 64})


def test_init_from_on_the_command_line(tmp_path, tiny_checkpoint):
    corpus = tmp_path / "new.txt"
    corpus.write_text(make_text(5000).upper(), encoding="utf-8")
    done = subprocess.run([sys.executable, str(REPO / "train.py"), "--init-from", str(tiny_checkpoint),
                           "--corpus", str(corpus), "--max-steps", "4", "--eval-every", "2", "--threads", "1",
                           "--batch-size", "8", "--checkpoint-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"initialised from {tiny_checkpoint.resolve()}" in done.stdout
    info = subprocess.run([sys.executable, str(REPO / "generate.py"), "--checkpoint", str(tmp_path / "run"),
                           "--info"], capture_output=True, text=True, timeout=120)
    assert "initialised from" in info.stdout and "trained on toy" in info.stdout
