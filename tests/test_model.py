"""The model: shapes, normalised log-probabilities, carried state, the lookup input, LSTM init."""
import pytest
import torch

import numpy as np

from charrnn.model import (COPY_FORGET, CharRNN, ModelConfig, NumpyStep, detach_state, match_lengths, state_from_list,
                           state_to_list)
from charrnn.vocab import Vocab

CELLS = ["rnn", "lstm", "gru"]


def tiny(model: str = "lstm", vocab_size: int = 11, **kw) -> CharRNN:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size, model, **{"rnn_size": 16, "num_layers": 2, "embedding_size": 8, **kw})
    model = CharRNN(config).eval()
    if config.copy_memory:  # as if trained: a copy layer started at zero adds nothing to test
        with torch.no_grad():
            torch.nn.init.normal_(model.copy_out.weight, std=0.5)
            torch.nn.init.normal_(model.copy_sink)
    return model


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
@pytest.mark.parametrize("copy_memory", [0, 5])
def test_numpy_step_equals_the_model_step_by_step(cell, copy_memory):
    model = tiny(cell, num_layers=3, copy_memory=copy_memory)
    batch, layers, hidden = 3, 3, 16
    state = tuple(torch.randn(layers, batch, hidden) for _ in range(2 if cell == "lstm" else 1))
    if copy_memory:  # a memory of 5 steps: 3 before the text, then 2 of it
        state += tuple(s.detach() for s in model(torch.randint(0, 11, (batch, 2)))[1][len(state):])
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


# ---------------------------------------------------------------- the copy attention


@pytest.mark.parametrize("cell", CELLS)
def test_copy_attention_is_causal_and_chunks_equal_one_pass_past_its_memory(cell):
    model, x = tiny(cell, copy_memory=6), batch(t=30)
    whole, whole_state = model(x)
    assert len(whole_state) == (2 if cell == "lstm" else 1) + 2
    assert whole_state[-2].shape == (6, 3, 64) and whole_state[-1].shape == (6, 3, 1)
    chunks, state = [], None
    for start in range(0, 30, 7):  # each chunk attends across the previous one's end
        out, state = model(x[:, start:start + 7], state)
        chunks.append(out)
    assert torch.allclose(torch.cat(chunks, 1), whole, atol=1e-5)
    changed = x.clone()
    changed[:, 20] = (changed[:, 20] + 1) % 11
    after = model(changed)[0]
    assert torch.equal(after[:, :20], whole[:, :20]) and not torch.allclose(after[:, 20:], whole[:, 20:])


def test_copy_attention_reads_the_character_after_a_step_it_attends_to():
    model, x = tiny(copy_memory=4), batch(b=1, t=8)
    with torch.no_grad():  # keys that match every query strongly, a sink never chosen
        model.copy_key.weight.zero_(); model.copy_key.bias.fill_(3.0)
        model.copy_query.weight.zero_(); model.copy_query.bias.fill_(3.0)
        model.copy_sink.fill_(-3.0)
    with_copy = model(x)[0]
    with torch.no_grad():
        model.copy_value.weight[x[0, 1:5]] = 0.0  # the characters at 1-4, which step 4 reads
    without = model(x)[0]
    assert torch.allclose(with_copy[:, :1], without[:, :1])  # step 0 has nothing to read
    assert not torch.allclose(with_copy[:, 4], without[:, 4])


def test_the_copy_gain_gives_a_fresh_attention_a_gradient():
    torch.manual_seed(0)
    model, x = CharRNN(ModelConfig(11, rnn_size=16, num_layers=1, embedding_size=8, copy_memory=6)), batch(t=16)
    grads = []
    for gain in (1.0, 0.0):  # copy_out starts at zero: without the gain nothing reaches the attention
        with torch.no_grad():
            model.copy_gain.fill_(gain)
        model.zero_grad()
        torch.nn.functional.nll_loss(model(x[:, :-1])[0].transpose(1, 2), x[:, 1:]).backward()
        grads.append(model.copy_query.weight.grad.abs().sum())
    assert grads[0] > 0 and grads[1] == 0


def test_match_lengths_count_the_characters_that_agree_within_the_memory():
    a, b, c = 0.0, 1.0, 2.0
    lengths = match_lengths(torch.tensor([[a, b, c, a, b, c, a, b]]), 2)[0]  # window: the last a, b
    assert lengths[0, :6].tolist() == [1, 0, 0, 4, 0, 0]  # "abca" ends at 3, and "a" at 0
    assert lengths[1, 1:7].tolist() == [1, 0, 0, 4, 0, 0]  # "bcab" at 4; at 1 "ab" but 0 is out of memory
    assert match_lengths(torch.tensor([[-1, -1, a, a, a]]), 1)[0, 0].tolist() == [0, 0, 1, 2]  # not before the text
    assert match_lengths(torch.tensor([[a] * 20]), 1).max() == 8  # at most COPY_MATCH


def test_numpy_stream_with_copy_attention_scores_long_matches_from_a_loaded_memory():
    model, x = tiny(copy_memory=12), torch.tensor([[1, 2, 3, 4, 5] * 8])  # matches up to 8 and more
    expected = model(x)[0]
    _, state = model(x[:, :17])  # a full memory, its matches made from the loaded characters
    stream = NumpyStep(model).stream(tuple(s.detach().numpy() for s in state))
    for t in range(17, 40):
        logits = torch.from_numpy(stream(x[:, t].numpy()).copy())
        assert torch.allclose(logits.log_softmax(-1), expected[:, t], atol=1e-5)


def test_training_forgets_all_but_the_latest_steps_of_some_rows_memories(monkeypatch):
    model, x = tiny(copy_memory=6, dropout=0.0), batch(t=16)
    _, state = model(x[:, :8])
    emptied = state[:-1] + (torch.full_like(state[-1], -1.0),)  # the LSTM's state, no memory
    carried, fresh = model(x[:, 8:], state)[0], model(x[:, 8:], emptied)[0]
    model.train()  # with no dropout, training differs from evaluation only by what it forgets
    monkeypatch.setattr(model, "remembered", lambda rows, m, device: torch.tensor([6, 0, 2]))
    forgot = model(x[:, 8:], state)[0]
    assert torch.allclose(forgot[0], carried[0]) and torch.allclose(forgot[1], fresh[1])  # all of it, none of it
    assert not torch.allclose(forgot[2], carried[2]) and not torch.allclose(forgot[2], fresh[2])
    assert torch.allclose(forgot[2, 4:], carried[2, 4:])  # from step 4, the last 6 steps are this window's
    kept = CharRNN.remembered(model, 1_000_000, 1024, torch.device("cpu"))
    short = kept < 1024  # a share COPY_FORGET of the rows, log-uniform in 0..1022
    assert abs(short.float().mean() - COPY_FORGET) < 0.1 * COPY_FORGET
    assert kept.min() == 0 and 900 < kept[short].max() <= 1022
    assert abs((kept[short] < 32).float().mean() - 0.5) < 0.02  # log(33) / log(1024): half of them


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("rows", [1, NumpyStep.WIDE_ROWS + 1])
def test_numpy_stream_with_copy_attention_follows_the_model_past_its_memory(cell, rows):
    model, x = tiny(cell, copy_memory=5), batch(b=rows, t=20)
    expected, expected_state = model(x)
    _, state = model(x[:, :3])
    stream = NumpyStep(model).stream(tuple(s.detach().numpy() for s in state))
    for t in range(3, 20):  # the ring of 5 slots goes round three times
        logits = torch.from_numpy(stream(x[:, t].numpy()).copy())
        assert torch.allclose(logits.log_softmax(-1), expected[:, t], atol=1e-5)
    for mine, theirs in zip(stream.state(), expected_state):
        assert torch.allclose(torch.from_numpy(mine), theirs, atol=1e-5)
