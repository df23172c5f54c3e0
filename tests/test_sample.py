"""Sampling: the filters (temperature, top-k, top-p), the hand-written step, and generate().

Statistical tests draw thousands of characters from fixed seeds with wide margins: they are
deterministic, and the margins are there so a change of kernel or thread count cannot flip them.
"""
import io
import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from charrnn import checkpoint
from charrnn.config import SampleConfig
from charrnn.errors import CharRNNError
from charrnn.model import NumpyStep
from charrnn.sample import Streamer, draw, filter_logits, generate
from charrnn.vocab import UnknownCharacterError


pytestmark = pytest.mark.usefixtures("one_thread")


def random_log_probs(rows: int, v: int, seed: int, scale: float = 2.0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(rows, v, generator=g) * scale, -1).numpy()


def entropy(counts) -> float:
    """Entropy in nats of the empirical distribution given by counts."""
    n = sum(counts)
    return -sum(c / n * math.log(c / n) for c in counts if c)


def next_char_probs(logits: np.ndarray, temperature: float, top_k=None, top_p=None) -> np.ndarray:
    """The distribution draw() samples from: one-hot when greedy, else softmax of the filtered logits."""
    if temperature == 0:
        return np.eye(logits.shape[-1])[logits.argmax(-1)]
    return torch.from_numpy(filter_logits(logits, temperature, top_k, top_p)).softmax(-1).numpy()


def draws(logits: np.ndarray, n: int, seed: int = 0, **config) -> np.ndarray:
    """n draws from each row of logits (N, V) by draw() -> (N, n)."""
    config = SampleConfig(**{"temperature": 1.0, **config})
    return draw(np.repeat(logits, n, axis=0), config, np.random.default_rng(seed)).reshape(len(logits), n)


@torch.no_grad()
def model_log_probs(model, vocab, text: str) -> torch.Tensor:
    """The model's next-character log-probabilities after each character of text, (T, V)."""
    return model(torch.tensor([vocab.encode(text)]))[0][0]


def sample(trained, prime="the ", seed=0, num_samples=1, **config):
    model, vocab = trained
    config = {"length": 40, "temperature": 1.0, **config}
    return generate(model, vocab, SampleConfig(**config), prime, num_samples=num_samples,
                    generator=np.random.default_rng(seed))


# ---------------------------------------------------------------- SampleConfig


@pytest.mark.parametrize("field, value", [
    ("temperature", -1.0), ("temperature", -1e-9), ("temperature", math.nan), ("temperature", math.inf),
    ("temperature", -math.inf), ("top_k", 0), ("top_k", -3), ("top_p", 0.0), ("top_p", -0.5),
    ("top_p", 1.5), ("top_p", math.nan), ("length", 0), ("length", -5)])
def test_sample_config_rejects_bad_values(field, value):
    with pytest.raises(CharRNNError, match=field.replace("_", "-")):
        SampleConfig(**{field: value})


def test_sample_config_accepts_the_edges_of_each_range():
    SampleConfig(length=1, temperature=0.0, top_k=1, top_p=1.0)
    SampleConfig(temperature=100.0, top_p=1e-9)


# ---------------------------------------------------------------- filters and draws


def test_temperature_zero_is_the_argmax_whatever_the_filters():
    log_probs = random_log_probs(8, 20, seed=0)
    expected = np.eye(20)[log_probs.argmax(-1)]
    assert np.array_equal(next_char_probs(log_probs, 0.0), expected)
    assert np.array_equal(next_char_probs(log_probs, 0.0, top_k=5, top_p=0.5), expected)


def test_lower_temperature_gives_lower_entropy_over_many_draws():
    log_probs = random_log_probs(1, 20, seed=1)
    measured = []
    for temperature in (0.25, 0.5, 1.0, 2.0, 4.0):
        probs = next_char_probs(log_probs, temperature)
        exact = -(probs * np.log(np.maximum(probs, 1e-30))).sum()
        counts = np.bincount(draws(log_probs, 20_000, temperature=temperature)[0], minlength=20).tolist()
        measured.append(entropy(counts))
        assert measured[-1] == pytest.approx(exact, abs=0.05)
    assert all(low + 0.1 < high for low, high in zip(measured, measured[1:])), measured


@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_draws_never_leave_the_k_likeliest(k):
    log_probs = random_log_probs(4, 30, seed=2)
    probs = next_char_probs(log_probs, 1.5, top_k=k)
    allowed = np.argsort(-log_probs, axis=-1)[:, :k]
    assert ((probs > 0).sum(-1) == k).all()
    for row, drawn in enumerate(draws(log_probs, 5000, temperature=1.5, top_k=k)):
        assert set(drawn.tolist()) <= set(allowed[row].tolist())


def test_top_k_keeps_exactly_k_characters_when_they_tie():
    probs = next_char_probs(np.zeros((2, 10)), 1.0, top_k=3)  # every character equally likely
    assert ((probs > 0).sum(-1) == 3).all()
    assert np.allclose(probs[probs > 0], np.full(6, 1 / 3))


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9])
def test_top_p_draws_never_leave_the_nucleus(p):
    log_probs = random_log_probs(4, 30, seed=3)
    probs = next_char_probs(log_probs, 1.0, top_p=p)
    full = np.exp(log_probs)
    for row, drawn in enumerate(draws(log_probs, 5000, top_p=p)):
        ranked = np.argsort(-full[row]).tolist()
        cumulative = full[row][ranked].cumsum()
        size = int((cumulative < p).sum()) + 1  # the fewest likeliest characters whose mass reaches p
        nucleus = set(ranked[:size])
        assert set(drawn.tolist()) <= nucleus
        assert {i for i in range(30) if probs[row, i] > 0} == nucleus
        # inside the nucleus the original proportions stay, renormalised
        kept = sorted(nucleus)
        assert np.allclose(probs[row, kept], full[row, kept] / full[row, kept].sum(), atol=1e-6)


@st.composite
def rows_and_filters(draw):
    """A row of log-probabilities (spread or very peaked, some -inf, normalised or not), top_k, top_p."""
    values = draw(st.lists(st.floats(-1e4, 0, width=32) | st.just(-math.inf), min_size=1, max_size=40))
    values[draw(st.integers(0, len(values) - 1))] = draw(st.floats(-50, 0, width=32))  # one finite
    row = torch.tensor(values)
    row = (row.log_softmax(-1) if draw(st.booleans()) else row).numpy()
    top_k = draw(st.none() | st.integers(1, len(values) + 5))
    return row, top_k, draw(st.none() | st.floats(0, 1, exclude_min=True))


@settings(max_examples=150, deadline=None, derandomize=True, database=None)  # the same cases every run
@given(case=rows_and_filters(), temperature=st.floats(0, 100))
@example(case=(np.array([0.0, -1.0, -2.0], np.float32), None, None), temperature=1e-39)
@example(case=(np.array([-60.0, -1e4, -math.inf], np.float32), 2, 0.5), temperature=5e-324)
@example(case=(np.zeros(5, np.float32), 1, None), temperature=1.0)
@example(case=(np.array([0.0, -1.0], np.float32), None, 1e-308), temperature=1.0)  # top_p is 0 in float32
def test_filters_always_leave_a_distribution(case, temperature):
    row, top_k, top_p = case
    probs = next_char_probs(row[None], temperature, top_k, top_p)[0]
    assert probs.shape == row.shape
    assert np.isfinite(probs).all() and (probs >= 0).all()
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert (probs[row == -math.inf] == 0).all()
    assert probs[row == row.max()].max() > 0  # a likeliest character is always kept
    if top_k is not None:
        assert (probs > 0).sum() <= top_k


# ---------------------------------------------------------------- generate() on a trained model


@pytest.mark.parametrize("run", ["tiny_checkpoint", "copy_checkpoint"])
def test_temperature_zero_generates_the_greedy_text(run, request):
    trained = model, vocab = checkpoint.build_model(checkpoint.load(request.getfixturevalue(run)))
    texts, _ = sample(trained, seed=1, temperature=0.0, length=80)  # the copy's memory of 48 goes round
    assert sample(trained, seed=2, temperature=0.0, length=80)[0] == texts  # the seed plays no part
    greedy = "the "
    for _ in range(80):
        greedy += vocab.chars[model_log_probs(model, vocab, greedy)[-1].argmax()]
    assert texts[0] == greedy[4:]


def test_lower_temperature_gives_lower_entropy_on_the_model(trained):
    measured = []
    for temperature in (0.5, 1.0, 2.0):
        texts, _ = sample(trained, prime="the ", num_samples=3000, length=1, temperature=temperature)
        measured.append(entropy(Counter(texts).values()))
    assert measured[0] + 0.3 < measured[1] and measured[1] + 0.3 < measured[2], measured


def test_top_k_and_top_p_never_emit_outside_their_set_on_the_model(trained):
    model, vocab = trained
    prime, temperature = "the ", 1.5
    for top_k, top_p in [(3, None), (None, 0.6)]:
        texts, _ = sample(trained, prime, num_samples=4, length=50, temperature=temperature,
                          top_k=top_k, top_p=top_p)
        for text in texts:
            log_probs = model_log_probs(model, vocab, prime + text)[len(prime) - 1:-1]  # before each char
            for lp, c in zip(log_probs, vocab.encode(text)):
                more_likely = lp > lp[c] + 1e-4
                if top_k:
                    assert more_likely.sum() < top_k
                else:
                    assert (lp / temperature).softmax(-1)[more_likely].sum() < top_p + 1e-4


def test_top_k_one_is_greedy_at_any_temperature(trained):
    assert sample(trained, top_k=1, temperature=2.0)[0] == sample(trained, temperature=0.0)[0]


def test_same_seed_same_text_and_different_seeds_differ(trained):
    first = sample(trained, seed=7)[0]
    assert sample(trained, seed=7)[0] == first
    assert sample(trained, seed=8)[0] != first


def test_sampling_without_a_seed_leaves_torchs_global_generator_alone(trained):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sample(trained, seed=None)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("seed", [-1, 2**63])
def test_seeds_out_of_range_are_refused(seed):
    with pytest.raises(CharRNNError, match="seed"):
        SampleConfig(seed=seed)


def test_prime_goes_through_the_model_in_one_forward_then_steps(trained, monkeypatch):
    model, vocab = trained
    prime = "the lazy dog"
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda idx, state=None, labels=None: calls.append(idx.shape) or forward(idx, state, labels))
    texts, state = generate(model, vocab, SampleConfig(length=30, temperature=0.0), prime)
    assert calls == [(1, len(prime))]
    # the same text by hand: the prime in one forward, then the model one character at a time
    with torch.no_grad():
        log_probs, expected_state = forward(torch.tensor([vocab.encode(prime)]))
        chars = []
        for _ in range(30):
            c = log_probs[0, -1].argmax()
            chars.append(vocab.chars[c])
            before_last = expected_state
            log_probs, expected_state = forward(c.view(1, 1), expected_state)
    assert texts[0] == "".join(chars)
    for mine, theirs in zip(state, before_last):
        assert torch.allclose(mine, theirs, atol=1e-5)


def test_stop_ends_each_sample_right_after_the_stop_string(trained):
    model, vocab = trained
    streamed = []
    texts, _ = generate(model, vocab, SampleConfig(length=60, temperature=1.0, stop="s "), "the ",
                        num_samples=32, generator=np.random.default_rng(0), on_text=streamed.append)
    stopped = [text for text in texts if "s " in text]
    assert stopped and len(stopped) < len(texts)  # both branches are exercised
    for text in texts:
        if "s " in text:
            assert text.index("s ") == len(text) - 2
        else:
            assert len(text) == 60
    assert "".join(streamed) == texts[0]


def test_each_sample_returns_the_state_before_its_last_character(trained):
    model, vocab = trained
    texts, state = sample(trained, num_samples=6, length=30, stop="e")  # samples stop at different times
    assert len({len(text) for text in texts}) > 1
    h, c = state
    for row, text in enumerate(texts):
        with torch.no_grad():
            _, (h_ref, c_ref) = model(torch.tensor([vocab.encode("the " + text[:-1])]))
        assert torch.allclose(h[:, row], h_ref[:, 0], atol=1e-5)
        assert torch.allclose(c[:, row], c_ref[:, 0], atol=1e-5)


def test_several_samples_are_independent_and_full_length(trained):
    texts, _ = sample(trained, num_samples=5, length=30)
    assert len(texts) == 5 and all(len(text) == 30 for text in texts)
    assert len(set(texts)) > 1


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_returned_state_continues_the_text_exactly(trained, temperature):
    model, vocab = trained
    config = SampleConfig(length=25, temperature=temperature)
    generator = np.random.default_rng(5)
    first, state = generate(model, vocab, config, "the ", generator=generator)
    second, _ = generate(model, vocab, config, first[0][-1], state=state, generator=generator)
    whole, _ = generate(model, vocab, SampleConfig(length=50, temperature=temperature), "the ",
                        generator=np.random.default_rng(5))
    assert first[0] + second[0] == whole[0]


def test_unknown_prime_character_raises_naming_it(trained):
    with pytest.raises(UnknownCharacterError, match="'é'"):
        sample(trained, prime="thé ")


def test_skip_unknown_drops_unknown_prime_characters(trained):
    model, vocab = trained
    config = SampleConfig(length=30, temperature=0.0)
    texts, _ = generate(model, vocab, config, "thZe é", skip_unknown=True)
    assert texts == generate(model, vocab, config, "the ")[0]


def test_empty_prime_starts_from_a_newline(trained):
    assert sample(trained, prime="", temperature=0.0)[0] == sample(trained, prime="\n", temperature=0.0)[0]


# ---------------------------------------------------------------- the draw's two methods, the stream


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("rows", [1, 64], ids=["one row (Gumbel-max)", "many rows (inverse CDF)"])
def test_draws_follow_the_softmax_one_row_or_many(temperature, rows):
    log_probs = random_log_probs(1, 12, seed=4)
    expected = next_char_probs(log_probs, temperature)[0]
    config, generator = SampleConfig(temperature=temperature), np.random.default_rng(0)
    batch = np.repeat(log_probs, rows, axis=0)
    drawn = np.concatenate([draw(batch, config, generator) for _ in range(20_000 // rows)])
    assert drawn.shape == (20_000 // rows * rows,)
    frequencies = np.bincount(drawn, minlength=12) / len(drawn)
    # 5 standard deviations of a frequency over 20,000 draws is at most 0.018
    assert np.abs(frequencies - expected).max() < 0.018, (frequencies, expected)


@pytest.mark.parametrize("rows", [1, 5])
def test_characters_of_probability_zero_are_never_drawn(rows):
    # -inf first, last and inside; a finite character far below the rest (exp underflows to 0)
    row = np.array([-np.inf, 0.0, -np.inf, -1.0, -200.0, 0.5, -np.inf], np.float32)
    config, generator = SampleConfig(temperature=1.0), np.random.default_rng(0)
    drawn = np.concatenate([draw(np.repeat(row[None], rows, 0), config, generator) for _ in range(4000 // rows)])
    assert set(drawn.tolist()) == {1, 3, 5}
    for top_k, top_p in [(2, None), (None, 0.5)]:
        config = SampleConfig(temperature=1.0, top_k=top_k, top_p=top_p)
        drawn = [draw(np.repeat(row[None], rows, 0), config, generator) for _ in range(500)]
        assert set(np.concatenate(drawn).tolist()) <= {1, 5}


@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-5])
def test_a_tiny_temperature_draws_the_argmax(rows, temperature):
    log_probs = random_log_probs(rows, 30, seed=5, scale=20.0)
    log_probs[:, 0] = log_probs.max(-1) - 1e-3  # a close second; the rest far below
    drawn = draw(log_probs, SampleConfig(temperature=temperature), np.random.default_rng(0))
    assert np.array_equal(drawn, log_probs.argmax(-1))


def test_the_streamer_shows_the_first_text_at_once_and_the_rest_in_batches():
    class Terminal(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            self.writes += bool(text)
            return super().write(text)

    out = Terminal()
    with Streamer(out, interval=3600) as stream:
        for char in "hello, world":
            stream(char)
            if char == "h":
                assert out.getvalue() == "h"  # the first character shows at once
        assert out.getvalue() == "h"  # the rest waits for the interval
    assert out.getvalue() == "hello, world" and out.writes == 2  # the end shows it, in one write


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("rows", [1, 3, 9])  # from 4 rows on an LSTM or GRU lays its stream out transposed
@pytest.mark.parametrize("layers", [1, 2])
def test_stream_equals_the_model_step_by_step(cell, rows, layers):
    from charrnn.model import CharRNN, ModelConfig, NumpyStep

    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=11, model=cell, rnn_size=16, num_layers=layers, embedding_size=8)).eval()
    state = start = tuple(torch.randn(layers, rows, 16) * 2 for _ in range(2 if cell == "lstm" else 1))
    given = tuple(s.numpy().copy() for s in state)
    stream = NumpyStep(model).stream(given)  # holds its own copy: `given` stays as it is
    idx = torch.randint(0, 11, (rows, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for t in range(idx.shape[1]):
            logits = stream(idx[:, t].numpy())
            expected, state = model(idx[:, t:t + 1], state)
            assert torch.allclose(torch.from_numpy(logits).log_softmax(-1), expected[:, 0], atol=1e-5)
            for mine, theirs in zip(stream.state(), state):
                assert torch.allclose(torch.from_numpy(mine), theirs, atol=1e-5)
    assert all(np.array_equal(mine, s.numpy()) for mine, s in zip(given, start))


def test_same_seed_same_texts_for_several_samples(trained):
    texts = sample(trained, seed=3, num_samples=9, length=30)[0]  # 9 rows: the inverse CDF
    assert sample(trained, seed=3, num_samples=9, length=30)[0] == texts
    assert sample(trained, seed=4, num_samples=9, length=30)[0] != texts


def test_a_step_counts_the_bytes_of_every_product_it_makes(trained):
    model, _ = trained
    cfg, step = model.config, NumpyStep(model)
    layer_in, layer_hh = 4 * cfg.rnn_size * (cfg.rnn_size + 1), 4 * cfg.rnn_size * cfg.rnn_size
    last = (cfg.rnn_size + 1) * (4 * cfg.rnn_size + cfg.vocab_size)  # the last hidden-to-hidden beside the head
    expected = (cfg.num_layers - 1) * (layer_in + layer_hh) + last  # the first layer's input is a table row
    assert step.product_bytes == 4 * expected


@pytest.mark.parametrize("rows, shared_bytes, start", [(1, 0, 1), (1, 1 << 62, None), (8, 1 << 62, 2)])
def test_big_models_and_batches_share_blas_threads_starting_from_the_rows(trained, monkeypatch, rows,
                                                                         shared_bytes, start):
    governors = []
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr(NumpyStep, "SHARED_BYTES", shared_bytes)
    monkeypatch.setattr("charrnn.sample.ThreadGovernor",
                        lambda *args, **kw: governors.append(kw["start"]) or (lambda: None))
    texts = sample(trained, seed=5, num_samples=rows, length=40)[0]
    assert governors == ([] if start is None else [start])
    monkeypatch.setattr(NumpyStep, "SHARED_BYTES", 0 if shared_bytes else 1 << 62)  # the same text either way
    assert sample(trained, seed=5, num_samples=rows, length=40)[0] == texts
