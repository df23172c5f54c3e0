"""Regularisation options: DropConnect on the recurrent weights (--weight-drop) and averaged weights
(--ema-decay): their arithmetic, exact resume with both on, and checkpoints written before them."""
import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from charrnn import checkpoint
from charrnn.config import ModelConfig, TrainConfig
from charrnn.errors import CharRNNError
from charrnn.evaluate import evaluate
from charrnn.launch import resume_config, train
from charrnn.model import CharRNN, functional_call
from charrnn.trainer import Trainer, ema_decay
from conftest import build_trainer
from test_train import assert_same_weights, corpus_file, tiny

CELLS = ["rnn", "lstm", "gru"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_plot(monkeypatch):
    """Drawing loss_curve.png costs ~1 s of matplotlib here."""
    monkeypatch.setattr("charrnn.trainer.plot_metrics", lambda *args: None)


@pytest.fixture
def masks(monkeypatch) -> list[dict]:
    """The masked recurrent weights of every DropConnect call, as the fused call receives them."""
    seen = []

    def spy(module, weights, args):
        seen.append({name: w.detach().clone() for name, w in weights.items()})
        return functional_call(module, weights, args)

    monkeypatch.setattr("charrnn.model.functional_call", spy)
    return seen


def tiny_model(cell: str = "lstm", **kw) -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(ModelConfig(11, cell, **{"rnn_size": 16, "num_layers": 2, "embedding_size": 8, "dropout": 0.0,
                                            **kw}))


def batch() -> torch.Tensor:
    return torch.randint(0, 11, (3, 10), generator=torch.Generator().manual_seed(1))


def with_weights(model: CharRNN, weights: dict) -> CharRNN:
    """A plain copy of `model` (no weight drop) with some of its rnn's weights replaced."""
    plain = CharRNN(replace(model.config, weight_drop=0.0))
    plain.load_state_dict({**model.state_dict(), **{"rnn." + name: w for name, w in weights.items()}})
    return plain


# -- DropConnect --------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
def test_weight_drop_is_one_mask_per_forward_the_same_at_every_step(cell, masks):
    model, x = tiny_model(cell, weight_drop=0.5).train(), batch()
    out, state = model(x)
    assert len(masks) == 1 and sorted(masks[0]) == ["weight_hh_l0", "weight_hh_l1"]
    for name, dropped in masks[0].items():
        weight = getattr(model.rnn, name).detach()
        kept = dropped != 0
        assert torch.allclose(dropped[kept], weight[kept] / 0.5)  # kept entries scaled by 1/(1-p)
        assert 0.4 < 1 - kept.float().mean() < 0.6
    # a plain forward with these fixed weights, every step alike, is the same computation
    plain_out, plain_state = with_weights(model, masks[0])(x)
    assert torch.allclose(out, plain_out, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(state, plain_state))
    out.sum().backward()  # dropped entries learn nothing from this forward
    for name, dropped in masks[0].items():
        assert not getattr(model.rnn, name).grad[dropped == 0].any()
    model(x)
    assert len(masks) == 2 and all(not torch.equal(masks[0][n], masks[1][n]) for n in masks[0])


@pytest.mark.parametrize("cell", CELLS)
def test_weight_drop_is_off_in_evaluation(cell, masks):
    model, x = tiny_model(cell, weight_drop=0.5).eval(), batch()
    rng = torch.get_rng_state()
    out, _ = model(x)
    assert not masks and torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(out, with_weights(model, {}).eval()(x)[0])


def test_no_weight_drop_draws_no_mask_in_training(masks):
    """P=0 is the model as before: the plain fused call, no random numbers drawn, no extra work."""
    model, x = tiny_model(weight_drop=0.0).train(), batch()
    rng = torch.get_rng_state()
    out, _ = model(x)
    assert not masks and torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(out, model.eval()(x)[0])  # dropout 0: training and evaluation agree


def test_weight_drop_keeps_the_parameter_names():
    assert tiny_model(weight_drop=0.3).state_dict().keys() == tiny_model().state_dict().keys()
    tiny_model(weight_drop=0.3).load_state_dict(tiny_model().state_dict())  # strict


# -- averaged weights ---------------------------------------------------------------------------

def test_ema_decay_is_lowered_early_in_a_run():
    config = tiny(Path("c.txt"), None, ema_decay=0.99)
    decays = [ema_decay(config, t) for t in range(1000)]
    assert decays[0] == pytest.approx(0.1) and decays[90] == pytest.approx(0.91)
    assert all(a <= b for a, b in zip(decays, decays[1:])) and decays[-1] == 0.99


def test_the_saved_and_evaluated_model_is_the_average_of_the_training_weights(tmp_path):
    trainer = build_trainer(tiny(corpus_file(tmp_path), tmp_path / "run", ema_decay=0.8, max_steps=12))
    by_hand = {k: v.double() for k, v in trainer.model.state_dict().items()}
    for t in range(12):
        loss = trainer.train_step()
        d, now = min(0.8, (1 + t) / (10 + t)), trainer.model.state_dict()
        by_hand = {k: d * v + (1 - d) * now[k].double() for k, v in by_hand.items()}
    row = trainer.evaluate_and_save(loss, 0.0)
    saved = checkpoint.load(tmp_path / "run" / "last.pt")
    assert saved["model"].keys() == by_hand.keys()
    for name, value in saved["model"].items():
        assert torch.allclose(value.double(), by_hand[name], atol=1e-6), name
    assert_same_weights(saved["raw_model"], trainer.model.state_dict())
    assert any(not torch.equal(saved["model"][k], saved["raw_model"][k]) for k in by_hand)
    # evaluation scored the average, and the model that readers load is the average
    model, _ = checkpoint.build_model(saved)
    averaged = evaluate(model, trainer.val_tokens, trainer.device, trainer.amp)
    raw = evaluate(trainer.model, trainer.val_tokens, trainer.device, trainer.amp)
    assert row["val_loss"] == round(averaged, 5) != round(raw, 5)


def test_resume_with_weight_drop_ema_copy_attention_and_linear_decay_on_is_bit_identical(tmp_path, monkeypatch):
    """Train 2k steps straight, and k then k resumed: the same losses, training weights, average;
    the copy attention's memory (shorter than a pass, so that it fills) carries over in the state."""
    losses = []
    step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self: losses.append(step(self)) or losses[-1])
    config = tiny(corpus_file(tmp_path, 700), tmp_path / "whole", num_layers=2, dropout=0.3, weight_drop=0.3,
                  ema_decay=0.9, copy_memory=40, lr_schedule="linear", max_steps=24, eval_every=5)  # 19 steps a pass: the resumed half crosses one
    train(config)
    whole = losses.copy()
    losses.clear()
    halves = replace(config, checkpoint_dir=str(tmp_path / "halves"))
    trainer = build_trainer(halves)
    for _ in range(12):
        trainer.train_step()
    trainer.save("last.pt")
    train(halves, resume=str(tmp_path / "halves"))
    assert losses == whole
    a, b = (checkpoint.load(tmp_path / run / "last.pt") for run in ("whole", "halves"))
    assert_same_weights(a["model"], b["model"])
    assert_same_weights(a["raw_model"], b["raw_model"])
    ends = [json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[-1]) for run in ("whole", "halves")]
    assert ends[0]["step"] == 24 and ends[0]["val_loss"] == ends[1]["val_loss"]


def test_resume_refuses_to_change_either_option():
    saved = asdict(tiny(Path("c.txt"), None, weight_drop=0.3, ema_decay=0.9))
    for name, value in (("weight_drop", 0.0), ("ema_decay", 0.99)):
        with pytest.raises(CharRNNError, match="--" + name.replace("_", "-")):
            resume_config(saved, {name: value})


# -- checkpoints from before these options ------------------------------------------------------

def test_a_checkpoint_from_before_these_options_loads_and_resumes(tmp_path):
    run = tmp_path / "run"
    train(tiny(corpus_file(tmp_path), run, max_steps=4, eval_every=4))
    old = checkpoint.load(run / "last.pt")
    for config in (old["model_config"], old["train_config"]["model"]):
        del config["weight_drop"]
    del old["train_config"]["ema_decay"]
    checkpoint.save({k: v for k, v in old.items() if k not in ("format", "version")}, run / "last.pt")
    model, _ = checkpoint.build_model(checkpoint.load(run / "last.pt"))
    assert model.config.weight_drop == 0.0
    summary = train(TrainConfig(), resume=str(run), overrides={"max_steps": 6})
    assert summary["step"] == 6
    resumed = checkpoint.load(run / "last.pt")
    assert resumed["train_config"]["ema_decay"] == 0.0 and "raw_model" not in resumed


def test_a_copy_checkpoint_from_before_its_gain_and_match_scores_loads_without_them_and_resumes(tmp_path):
    run = tmp_path / "run"
    train(tiny(corpus_file(tmp_path), run, copy_memory=16, ema_decay=0.9, max_steps=4, eval_every=4))
    reference, vocab = checkpoint.build_model(checkpoint.load(run / "last.pt"))
    with torch.no_grad():
        reference.copy_gain.zero_()
        reference.copy_match.zero_()
    old = {k: v for k, v in checkpoint.load(run / "last.pt").items() if k not in ("format", "version")}
    names = list(old["model"])
    for weights in (old["model"], old["raw_model"]):
        del weights["copy_gain"], weights["copy_match"]  # as saved before them
    before = list(old["model"])  # the old parameters, numbered in this order by the optimizer
    adam = old["optimizer"]
    adam["state"] = {before.index(names[i]): v for i, v in adam["state"].items() if names[i] in before}
    adam["param_groups"][0]["params"] = list(range(len(before)))
    checkpoint.save(old, run / "last.pt")
    model, _ = checkpoint.build_model(checkpoint.load(run / "last.pt"))
    x = torch.tensor([vocab.encode(corpus_file(tmp_path).read_text()[:40])])
    assert torch.equal(model(x)[0], reference(x)[0])
    summary = train(TrainConfig(), resume=str(run), overrides={"max_steps": 6})
    assert summary["step"] == 6 and checkpoint.load(run / "last.pt")["raw_model"]["copy_gain"] != 0
