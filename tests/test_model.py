"""The model: shapes, normalised log-probabilities, carried state, the lookup input, LSTM init."""
import pytest
import torch

import numpy as np

from charrnn.model import CharRNN, ModelConfig, NumpyStep, detach_state, state_from_list, state_to_list
from charrnn.vocab import Vocab

CELLS = ["rnn", "lstm", "gru"]


def tiny(model: str = "lstm", vocab_size: int = 11, **kw) -> CharRNN:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size, model, **{"rnn_size": 16, "num_layers": 2, "embedding_size": 8, **kw})
    return CharRNN(config).eval()


def batch(vocab_size: int = 11, b: int = 3, t: int = 10) -> torch.Tensor:
    return torch.randint(0, vocab_size, (b, t), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("cell", CELLS)
def test_forward_shapes_and_normalised_log_probs(cell):
    model, x = tiny(cell), batch()
    log_probs, state = model(x)
    assert log_probs.shape == (3, 10, 11)
    assert log_probs.dtype == torch.float32
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3, 10), atol=1e-5)
    assert isinstance(state, tuple) and len(state) == (2 if cell == "lstm" else 1)  # (h, c) or (h,)
    assert all(s.shape == (2, 3, 16) for s in state)


@pytest.mark.parametrize("cell", CELLS)
def test_two_chunks_with_carried_state_equal_one_pass(cell):
    model, x = tiny(cell, dropout=0.5), batch(t=12)  # eval mode: dropout off
    whole, whole_state = model(x)
    first, state = model(x[:, :5])
    second, state = model(x[:, 5:], state)
    assert torch.allclose(torch.cat([first, second], 1), whole, atol=1e-6)
    for a, b in zip(state_to_list(state), state_to_list(whole_state)):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_dropping_the_state_changes_the_second_chunk(cell):
    model, x = tiny(cell), batch(t=12)
    _, state = model(x[:, :6])
    assert not torch.allclose(model(x[:, 6:], state)[0], model(x[:, 6:])[0])


def test_embedding_lookup_equals_one_hot_times_weights():
    vocab = Vocab(list("abcdefghijk"))
    model, x = tiny(vocab_size=len(vocab)), batch(len(vocab))
    assert torch.allclose(model.embed(x), vocab.one_hot(x) @ model.embed.weight)


def test_detach_state_keeps_values_and_cuts_gradients():
    model, x = tiny("lstm"), batch()
    _, state = model(x)
    assert all(s.requires_grad for s in state)
    detached = detach_state(state)
    assert isinstance(detached, tuple)
    assert all(not s.requires_grad and torch.equal(s, o) for s, o in zip(detached, state))
    _, gru_state = tiny("gru")(x)
    assert not detach_state(gru_state)[0].requires_grad
    assert detach_state(None) is None


@pytest.mark.parametrize("cell", CELLS)
def test_state_list_round_trip(cell):
    _, state = tiny(cell)(batch())
    tensors = state_to_list(state)
    assert len(tensors) == (2 if cell == "lstm" else 1)
    back = state_from_list(tensors, torch.device("cpu"))
    assert isinstance(back, tuple)
    assert all(torch.equal(a, b) for a, b in zip(state_to_list(back), tensors))
    assert state_to_list(None) == [] and state_from_list([], torch.device("cpu")) is None


@pytest.mark.parametrize("cell", CELLS)
def test_numpy_step_equals_the_model_step_by_step(cell):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=11, model=cell, rnn_size=16, num_layers=3, embedding_size=8)).eval()
    batch, layers, hidden = 3, 3, 16
    state = tuple(torch.randn(layers, batch, hidden) for _ in range(2 if cell == "lstm" else 1))
    step, model_state = NumpyStep(model), state
    step_state = tuple(s.numpy() for s in state)
    idx = torch.randint(0, 11, (batch, 12))
    with torch.no_grad():
        for t in range(idx.shape[1]):
            logits, step_state = step(idx[:, t].numpy(), step_state)
            expected, model_state = model(idx[:, t:t + 1], model_state)
            assert torch.allclose(torch.from_numpy(logits).log_softmax(-1), expected[:, 0], atol=1e-5)
            assert len(step_state) == len(model_state)
            for mine, theirs in zip(step_state, model_state):
                assert torch.allclose(torch.from_numpy(np.asarray(mine)), theirs, atol=1e-5)
