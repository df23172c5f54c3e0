"""Regularisation options: DropConnect on the recurrent weights (--weight-drop)."""
from dataclasses import replace

import pytest
import torch

from charrnn.config import ModelConfig
from charrnn.model import CharRNN, functional_call

CELLS = ["rnn", "lstm", "gru"]
pytestmark = pytest.mark.usefixtures("one_thread")


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
