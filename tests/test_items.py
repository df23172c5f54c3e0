"""Items and labels: lists read and framed, whole-item batches, label input, whole and new items out."""
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import charrnn
from charrnn import checkpoint, corpus, interactive, items
from charrnn.config import ModelConfig, SampleConfig, TrainConfig
from charrnn.errors import CharRNNError
from charrnn.evaluate import loss_sums
from charrnn.launch import train
from charrnn.model import CharRNN, NumpyStep
from charrnn.vocab import MARKER, Vocab
from conftest import SYLLABLES, build_trainer, make_names, names_folder

pytestmark = pytest.mark.usefixtures("one_thread")
def read(path: Path, **options) -> items.ItemList:
    return items.read(corpus.resolve(str(path)), folder=path.is_dir(), **options)


def tiny(corpus: Path, run_dir: Path, **kw) -> TrainConfig:
    base = dict(corpus=str(corpus), items=True, rnn_size=32, num_layers=1, embedding_size=16, seq_length=16,
                batch_size=16, learning_rate=1e-2, warmup_steps=0, max_steps=60, eval_every=30,
                checkpoint_dir=str(run_dir), threads=1, sample_length=20)
    return TrainConfig.from_options(**{**base, **kw})


@pytest.fixture(scope="module")
def names_run(tmp_path_factory) -> Path:
    """A small LSTM trained for a few seconds on three labelled lists of made-up surnames."""
    root = tmp_path_factory.mktemp("names")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHARRNN_CACHE_DIR", str(root / "cache"))
        mp.setattr("charrnn.trainer.plot_metrics", lambda *args: None)
        train(tiny(names_folder(root), root / "run", labels="files", rnn_size=64, max_steps=250, eval_every=125))
    return root / "run"


# -- reading and framing ------------------------------------------------------------------------

def test_the_marker_is_no_character():
    vocab = Vocab(list("ab\n"), items=True)
    assert len(vocab) == 4 and vocab.marker == 3 and vocab.symbols == ["\n", "a", "b", MARKER]
    assert vocab.decode([3, 1, 2, 3]) == "ab" and 3 not in vocab.encode("ab\n")
    assert Vocab(list("ab"), items=True) != Vocab(list("ab"))


def test_lines_are_stripped_and_empty_ones_dropped(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes("  Anna \r\n\r\nBob\n\n\nCé 🙂\n".encode())
    assert read(path).texts == ["Anna", "Bob", "Cé 🙂"]
    recipes = tmp_path / "recipes.txt"
    recipes.write_text("Soup\nwater\n\nBread\nflour\nwater\n")
    assert read(recipes, sep=items.separator("\\n\\n")).texts == ["Soup\nwater", "Bread\nflour\nwater"]


def test_a_folder_of_label_files_and_tables_give_labels(tmp_path):
    listed = read(names_folder(tmp_path), labels="files")
    assert set(listed.labels) == set(SYLLABLES) and len(listed.texts) == 360
    assert listed.labels[listed.texts.index(make_names("German")[0])] == "German"
    (tmp_path / "n.csv").write_text('text,label\nAnna,F\n"Bo, Jr",M\n', encoding="utf-8")
    (tmp_path / "n.tsv").write_text("label\ttext\nF\tAnna\nM\tBo, Jr\n", encoding="utf-8")
    (tmp_path / "n.jsonl").write_text('{"text": "Anna", "label": "F"}\n\n{"text": "Bo, Jr", "label": "M"}\n')
    (tmp_path / "q.csv").write_text('text,label\n"Soup\nwater",A\n', encoding="utf-8")
    (tmp_path / "q.jsonl").write_text('{"text": "a\u2028b", "label": "A"}\n', encoding="utf-8")
    assert read(tmp_path / "q.csv").texts == ["Soup\nwater"] and read(tmp_path / "q.jsonl").texts == ["a\u2028b"]
    for name in ("n.csv", "n.tsv", "n.jsonl"):
        listed = read(tmp_path / name)
        assert (listed.texts, listed.labels) == (["Anna", "Bo, Jr"], ["F", "M"]), name
    assert read(tmp_path / "n.csv", labels="none").labels is None


@pytest.mark.parametrize("content, name, message", [
    ("text,kind\nAnna,F\n", "n.csv", "no 'label' column .*text, kind.*--labels none"),
    ('{"label": "F"}\n', "n.jsonl", "no 'text' field"),
    ('{"text": "A", "label": "F"}\nnot json\n', "n.jsonl", "line 2 is not JSON"),
    ("text,label\nAnna,\n", "n.csv", "items without a label"),
    ("\n  \n\n", "n.txt", "holds no items"),
])
def test_bad_lists_are_one_line_errors(tmp_path, content, name, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(CharRNNError, match=message):
        read(tmp_path / name)


def test_an_empty_item_separator_is_refused():
    with pytest.raises(CharRNNError, match="--item-separator must not be empty"):
        TrainConfig(item_separator="")


def test_labels_files_needs_a_folder_and_column_a_table(tmp_path):
    (tmp_path / "a.txt").write_text("Anna\n")
    with pytest.raises(CharRNNError, match="--labels files needs a folder"):
        read(tmp_path / "a.txt", labels="files")
    with pytest.raises(CharRNNError, match="--labels column needs"):
        read(tmp_path / "a.txt", labels="column")


def test_encode_frames_every_item_and_subsets_keep_them_whole():
    vocab = Vocab(list("abcd"), items=True)
    listed = items.encode(["ab", "c", "dda"], vocab, np.array([0, 1, 0]))
    m = vocab.marker
    assert listed.tokens.tolist() == [m, 0, 1, m, 2, m, 3, 3, 0, m]
    assert listed.lengths.tolist() == [3, 2, 4] and vocab.decode(listed.framed(2)) == "dda"
    picked = listed.subset(np.array([2, 0]))
    assert picked.tokens.tolist() == [m, 3, 3, 0, m, 0, 1, m] and picked.labels.tolist() == [0, 0]


def test_the_validation_items_are_a_seeded_sample_of_whole_items():
    vocab = Vocab([chr(c) for c in range(ord("a"), ord("z") + 1)], items=True)
    texts = [f"{a}{b}" for a in "abcdefghij" for b in "abcdefghij"]  # sorted, as lists often are
    listed = items.encode(texts, vocab)
    train_a, val_a, _ = items.split(listed, 0.1)
    train_b, val_b, _ = items.split(listed, 0.1)
    held = {vocab.decode(val_a.framed(i)) for i in range(len(val_a))}
    assert len(val_a) == 10 and np.array_equal(val_a.tokens, val_b.tokens)
    assert len({t[0] for t in held}) > 3  # from all over the list, not its last letter
    assert held.isdisjoint(vocab.decode(train_a.framed(i)) for i in range(len(train_a)))
    with pytest.raises(CharRNNError, match="too few"):
        items.split(items.encode(["a"], vocab), 0.1)


# -- batches ------------------------------------------------------------------------------------

def epoch_of(batches: items.ItemBatches) -> list[tuple]:
    return [next(batches) for _ in range(batches.steps_per_epoch)]


def test_an_epoch_trains_every_item_once_from_a_fresh_state():
    vocab = Vocab(list("abcdefgh"), items=True)
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list("abcdefgh"), size=rng.integers(1, 40))) for _ in range(200)]
    batches = items.ItemBatches(items.encode(texts, vocab), batch_size=4, seq_length=8, seed=1)
    seen, rows = [], {}
    for x, y, new, _ in epoch_of(batches):
        assert x.shape == y.shape and x.shape[0] == batches.rows and x.shape[1] <= 8
        if new:  # a new batch: each row is an item from its opening marker
            assert (x[:, 0] == vocab.marker).all()
            seen += [vocab.decode(row[row != items.IGNORE].tolist()) for row in rows.values() if (row >= 0).any()]
            rows = {}
        for r in range(len(y)):
            rows[r] = torch.cat([rows.get(r, torch.zeros(0, dtype=torch.long)), y[r]])
    seen += [vocab.decode(row[row != items.IGNORE].tolist()) for row in rows.values() if (row >= 0).any()]
    assert sorted(seen) == sorted(texts) and batches.epoch == 1


def test_every_batch_has_the_same_rows():
    vocab = Vocab(list("ab"), items=True)
    rng = np.random.default_rng(0)
    listed = items.encode(["a" * n for n in rng.integers(1, 80, 3000)], vocab)
    batches = items.ItemBatches(listed, batch_size=8, seq_length=32)
    shapes = {tuple(next(batches)[0].shape) for _ in range(batches.steps_per_epoch)}
    assert {rows for rows, _ in shapes} == {batches.rows} and max(width for _, width in shapes) == 32


def test_batches_reshuffle_every_epoch_and_resume_exactly():
    vocab = Vocab(list("ab"), items=True)
    listed = items.encode(["a" * n + "b" for n in range(1, 60)], vocab)
    batches = items.ItemBatches(listed, batch_size=2, seq_length=8, seed=3)
    first, second = epoch_of(batches), epoch_of(batches)
    assert [len(b[0]) for b in first] != [len(b[0]) for b in second] or any(
        not torch.equal(a[0], b[0]) for a, b in zip(first, second))
    for stop in (0, 3, len(first) - 1, len(first) + 2):
        replay = items.ItemBatches(listed, batch_size=2, seq_length=8, seed=3)
        for _ in range(stop):
            next(replay)
        resumed = items.ItemBatches(listed, batch_size=2, seq_length=8, seed=3)
        resumed.load_state_dict(replay.state_dict())
        for a, b in zip([next(replay) for _ in range(10)], [next(resumed) for _ in range(10)]):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_short_items_fill_the_batch_with_rows():
    vocab = Vocab(list("abc"), items=True)
    listed = items.encode(["abc"] * 400, vocab)
    x, y, new, _ = next(items.ItemBatches(listed, batch_size=4, seq_length=32))
    assert x.shape == (32, 4) and new  # 4 x 32 characters: 32 items of 3 characters and an end


# -- the model ----------------------------------------------------------------------------------

def test_an_items_loss_does_not_depend_on_its_neighbours():
    torch.manual_seed(0)
    vocab = Vocab(list("abcd"), items=True)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), rnn_size=16, embedding_size=8, num_labels=2, dropout=0))
    texts, labels = ["abcd" * 3, "a", "dcba"], np.array([0, 1, 1])
    together = loss_sums(model, items.encode(texts, vocab, labels))
    alone = [loss_sums(model, items.encode([t], vocab, labels[i:i + 1])) for i, t in enumerate(texts)]
    assert together[1] == sum(n for _, n in alone) == 12 + 1 + 4 + 3
    assert together[0] == pytest.approx(sum(t for t, _ in alone), rel=1e-5)
    relabelled = loss_sums(model, items.encode(texts, vocab, np.array([1, 1, 1])))
    assert relabelled[0] != pytest.approx(together[0])  # the label is an input


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("rows", [1, 5])
def test_the_numpy_step_adds_the_label_as_the_model_does(cell, rows):
    torch.manual_seed(1)
    model = CharRNN(ModelConfig(vocab_size=7, model=cell, rnn_size=12, num_layers=2, embedding_size=6,
                                num_labels=3, dropout=0)).eval()
    idx, labels = torch.randint(7, (rows, 5)), torch.randint(3, (rows,))
    with torch.no_grad():
        expected, _ = model(idx, None, labels)
    step, state = NumpyStep(model), tuple(np.zeros((2, rows, 12), np.float32) for _ in range(1 + (cell == "lstm")))
    stream = step.stream(state, labels.numpy())
    for t in range(5):
        logits = stream(idx[:, t].numpy())
        np.testing.assert_allclose(logits - logits.max(1, keepdims=True),
                                   (expected[:, t] - expected[:, t].max(1, keepdim=True).values).numpy(), atol=2e-5)
    with pytest.raises(ValueError, match="labels"):
        step.stream(state)


# -- training and generating --------------------------------------------------------------------

def test_generate_prints_whole_new_items_of_a_label(names_run, cli):
    code, out, err = cli("--checkpoint", names_run, "--label", "Russian", "--num-samples", 10, "--novel",
                         "--seed", 1, "--length", 40)
    assert code == 0, err
    made = out.splitlines()
    known = {n.lower() for label in SYLLABLES for n in make_names(label)}
    assert len(made) == 10 and len({m.lower() for m in made}) == 10 and not {m.lower() for m in made} & known
    assert all(m and "\n" not in m for m in made) and "novel: kept 10 of" in err
    russian = sum(any(s in m.lower() for s in ("ov", "sky", "ich", "mir", "ko", "va")) for m in made)
    german = sum(any(s in m.lower() for s in ("berg", "mann", "stein", "bach")) for m in made)
    assert russian > german, made


def test_a_prime_starts_every_item_and_the_cap_is_reported(names_run, cli):
    code, out, err = cli("--checkpoint", names_run, "--prime", "Ko", "--num-samples", 5, "--seed", 2,
                         "--label", "Russian")
    assert code == 0 and all(line.startswith("Ko") for line in out.splitlines()) and len(out.splitlines()) == 5
    code, out, err = cli("--checkpoint", names_run, "--num-samples", 3, "--length", 1, "--seed", 2)
    assert code == 0 and "reached --length 1 before their end" in err


def test_jsonl_records_label_settings_seed_and_wholeness(names_run, cli, tmp_path):
    code, _, err = cli("--checkpoint", names_run, "--num-samples", 4, "--output", tmp_path / "o.jsonl",
                       "--format", "jsonl", "--label", "German", "--prime", "B")
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert code == 0 and len(rows) == 4 and {r["label"] for r in rows} == {"German"}
    assert all(r["text"].startswith("B") and r["whole"] and isinstance(r["seed"], int) for r in rows)
    again = charrnn.load(names_run).draw_items(SampleConfig(seed=rows[0]["seed"]), "B", 4, "German")
    assert again.texts == [r["text"] for r in rows]


@pytest.mark.parametrize("args, message", [
    (["--label", "Klingon"], "unknown label 'Klingon'; this model knows German, Italian, Russian"),
    (["--score", "{list}"], "needs each item's label: give --label"),
    (["--score", "{list}", "--label", "German", "--adapt", "0.1"], "this model makes items"),
])
def test_bad_item_requests_are_one_line_errors(names_run, cli, tmp_path, args, message):
    (tmp_path / "list.txt").write_text("Ivanov\n")
    code, out, err = cli("--checkpoint", names_run, *[a.format(list=tmp_path / "list.txt") for a in args])
    assert code == 1 and message in err and len(err.strip().splitlines()) <= 2 and "Traceback" not in err


def test_label_and_novel_on_a_model_of_running_text_are_refused(tiny_checkpoint, cli):
    for flag in (["--label", "x"], ["--novel"]):
        code, _, err = cli("--checkpoint", tiny_checkpoint, *flag)
        assert code == 1 and "trained on running text" in err


def test_novel_stops_and_says_so_when_the_model_only_copies(tmp_path, cli, monkeypatch):
    monkeypatch.setattr("charrnn.trainer.plot_metrics", lambda *args: None)
    (tmp_path / "two.txt").write_text("abab\ncdcd\n" * 20)
    train(tiny(tmp_path / "two.txt", tmp_path / "run", max_steps=120, val_frac=0.1))
    code, out, err = cli("--checkpoint", tmp_path / "run", "--novel", "--num-samples", 3, "--temperature", 0)
    assert code == 1 and "the model mostly copies its list" in err and "150 draws" in err


def test_score_reports_per_item_and_per_character(names_run, cli, tmp_path):
    (tmp_path / "l.csv").write_text("text,label\nIvanov,Russian\nSteinberg,German\n")
    code, out, _ = cli("--checkpoint", names_run, "--score", tmp_path / "l.csv")
    assert code == 0 and "(2 items, their ends counted as characters)" in out and "nats per item" in out
    model = charrnn.load(names_run)
    score = model.score_file(tmp_path / "l.csv")
    assert score.chars == 6 + 1 + 9 + 1 and score.items == 2
    assert score.nats_per_item == pytest.approx(score.nats * 17 / 2)
    assert model.score("Ivanov\n", label="German").nats != pytest.approx(model.score("Ivanov", label="Russian").nats)


def test_info_lists_the_labels_with_their_counts(names_run, cli):
    code, out, _ = cli("--checkpoint", names_run, "--info")
    assert code == 0 and "labels German (120), Italian (120), Russian (120)" in out


def test_the_python_api_makes_items(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names_folder(tmp_path)
    run = charrnn.train("names", items=True, labels="files", max_steps=30, progress=False, **{
        k: v for k, v in tiny(tmp_path, tmp_path / "run").options().items()
        if k in ("rnn_size", "num_layers", "embedding_size", "threads", "batch_size", "seq_length")})
    model = run.load()
    made = model.generate(num_samples=5, label="Italian", novel=True, seed=0, length=30)
    assert isinstance(made, list) and len(made) == 5 and all(isinstance(m, str) for m in made)
    assert isinstance(model.generate(seed=0, length=30), str) and model.labels == ["German", "Italian", "Russian"]


def test_resume_in_items_mode_is_bit_identical(tmp_path):
    names = names_folder(tmp_path)
    config = tiny(names, tmp_path / "whole", labels="files", num_layers=2, dropout=0.3, max_steps=24, eval_every=5)
    train(config)
    halves = replace(config, checkpoint_dir=str(tmp_path / "halves"))
    trainer = build_trainer(halves)
    for _ in range(11):
        trainer.train_step()
    trainer.save("last.pt")
    assert train(halves, resume=str(tmp_path / "halves"))["step"] == 24
    a, b = (checkpoint.load(tmp_path / run / "last.pt")["model"] for run in ("whole", "halves"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_items_and_running_text_do_not_mix_on_resume_or_fine_tune(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setattr("charrnn.trainer.plot_metrics", lambda *args: None)
    names = names_folder(tmp_path)
    (tmp_path / "text.txt").write_text("plain running text, " * 300)
    train(tiny(names, tmp_path / "items", labels="files", max_steps=5))
    with pytest.raises(CharRNNError, match="--items False differs from the resumed run's True"):
        train(TrainConfig(), resume=str(tmp_path / "items"), overrides={"items": False})
    with pytest.raises(CharRNNError, match="model of items; fine-tune it on a list with --items"):
        train(tiny(tmp_path / "text.txt", tmp_path / "ft", items=False), init_from=str(tmp_path / "items"))
    # a model of running text fine-tuned onto a list: the marker and the labels are new rows
    summary = train(tiny(names, tmp_path / "ft2", labels="files", max_steps=5, rnn_size=32, num_layers=2,
                         embedding_size=16), init_from=str(tiny_checkpoint))
    model = charrnn.load(summary["checkpoint_dir"])
    assert model.vocab.items and model.labels == ["German", "Italian", "Russian"] and model.info["lineage"]


def test_a_checkpoint_from_before_items_still_loads(tiny_checkpoint, tmp_path):
    ckpt = checkpoint.load(tiny_checkpoint)
    del ckpt["model_config"]["num_labels"]
    checkpoint.save(ckpt, tmp_path / "old.pt")
    model = charrnn.load(tmp_path / "old.pt")
    assert not model.vocab.items and model.labels == [] and len(model.generate("the", length=10)) == 13


def test_the_fingerprints_ignore_case_and_surrounding_space():
    known = items.fingerprints(["Anna", "Bob"])
    assert items.is_known("  anna ", known) and items.is_known("BOB", known) and not items.is_known("Ann", known)


def test_the_prompt_makes_an_item_a_line_and_takes_a_label(names_run):
    model = charrnn.load(names_run)
    out = io.StringIO()
    session = interactive.Session(model.net, model.vocab, SampleConfig(seed=0, length=40), "info", out,
                                  labels=model.labels)
    interactive.run(session, io.StringIO("Ko\n\n:label German\n\n:label Klingon\n:len 1\nSt\n"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 7 and lines[0].startswith("Ko") and lines[1] and lines[2] == "ok: label German"
    assert lines[4].startswith("error: unknown label 'Klingon'") and lines[6].endswith("[cut at :len 1]")
