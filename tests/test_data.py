"""Splits and batches. Most tests use tokens = arange(N), so a token's value is its position."""
import itertools

import numpy as np
import pytest
import torch

from charrnn.data import RandomBatches, StreamBatches, eval_chunks, split
from charrnn.errors import CharRNNError


def positions(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def take(batches, n: int) -> list:
    return list(itertools.islice(batches, n))


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (xa, ya, na, _), (xb, yb, nb, _) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and na == nb


# ---------------------------------------------------------------- split


def test_split_sizes_and_order():
    train, val, test = split(positions(1000), val_frac=0.1)
    assert (len(train), len(val), len(test)) == (900, 100, 0)
    assert np.array_equal(np.concatenate([train, val]), positions(1000))


def test_split_test_comes_after_val():
    train, val, test = split(positions(1000), val_frac=0.1, test_frac=0.05)
    assert (len(train), len(val), len(test)) == (850, 100, 50)
    assert train[-1] + 1 == val[0] and val[-1] + 1 == test[0] and test[-1] == 999


def test_split_keeps_memmap_views(tmp_path):
    tokens = np.memmap(tmp_path / "t", dtype=np.uint8, mode="w+", shape=(100,))
    train, val, _ = split(tokens, 0.2)
    assert isinstance(train, np.memmap) and isinstance(val, np.memmap)
    assert train.dtype == np.uint8


@pytest.mark.parametrize("val_frac, test_frac", [(1.0, 0.0), (0.6, 0.5), (-0.1, 0.0), (0.1, -0.1)])
def test_split_rejects_fractions_that_leave_no_training_text(val_frac, test_frac):
    with pytest.raises(CharRNNError, match="--val-frac"):
        split(positions(100), val_frac, test_frac)


# ---------------------------------------------------------------- StreamBatches


def test_stream_shapes_and_dtype():
    x, y, *_ = next(StreamBatches(positions(1000), batch_size=4, seq_length=16))
    assert x.shape == y.shape == (4, 16)
    assert x.dtype == y.dtype == torch.long


def test_stream_targets_are_inputs_shifted_by_one():
    for x, y, *_ in take(StreamBatches(positions(1000), 4, 16), 20):
        assert torch.equal(y[:, :-1], x[:, 1:])
        assert torch.equal(y, x + 1)


def test_stream_rows_continue_where_they_stopped():
    batches = StreamBatches(positions(1001), batch_size=4, seq_length=10)
    (_, y_prev, *_), (x_next, *_) = take(batches, 2)
    assert torch.equal(x_next[:, 0], y_prev[:, -1])


def test_stream_epoch_reads_each_row_contiguously():
    batches = StreamBatches(positions(1001), batch_size=4, seq_length=10)
    assert (batches.row_length, batches.steps_per_epoch) == (250, 25)
    xs = torch.cat([x for x, *_ in take(batches, 25)], dim=1)
    rows = torch.arange(4)[:, None] * 250 + torch.arange(250)
    assert torch.equal(xs, rows)


def test_stream_rows_do_not_overlap_and_stay_in_bounds():
    tokens = positions(997)
    batches = StreamBatches(tokens, batch_size=3, seq_length=7)
    seen = torch.cat([y.flatten() for _, y, *_ in take(batches, batches.steps_per_epoch)])
    assert len(set(seen.tolist())) == len(seen)
    assert int(seen.max()) < len(tokens)


def test_stream_new_stream_only_at_first_step_of_each_epoch():
    batches = StreamBatches(positions(1001), batch_size=4, seq_length=10)
    flags = [new for _, _, new, _ in take(batches, 3 * 25)]
    assert [i for i, new in enumerate(flags) if new] == [0, 25, 50]


def test_stream_epoch_advances_after_steps_per_epoch():
    batches = StreamBatches(positions(1001), batch_size=4, seq_length=10)
    epochs = []
    for _ in range(2 * batches.steps_per_epoch):
        next(batches)
        epochs.append(batches.epoch)
    assert epochs == [0] * 24 + [1] * 25 + [2]


def test_stream_second_epoch_repeats_the_first():
    batches = StreamBatches(positions(1001), batch_size=4, seq_length=10)
    first, second = take(batches, 25), take(batches, 25)
    assert torch.equal(first[0][0], second[0][0]) and torch.equal(first[-1][1], second[-1][1])
    assert second[0][2] and not second[1][2]


def test_stream_is_deterministic():
    tokens = np.random.default_rng(0).integers(0, 50, 2000).astype(np.uint8)
    assert_same_batches(take(StreamBatches(tokens, 4, 16), 40), take(StreamBatches(tokens, 4, 16), 40))


@pytest.mark.parametrize("stop", [0, 1, 7, 24, 25, 26, 60])
def test_stream_state_dict_resumes_exactly(stop):
    tokens = positions(1001)
    batches = StreamBatches(tokens, 4, 10)
    take(batches, stop)
    state = batches.state_dict()
    expected = take(batches, 30)
    resumed = StreamBatches(tokens, 4, 10)
    resumed.load_state_dict(state)
    assert_same_batches(take(resumed, 30), expected)
    assert resumed.epoch == batches.epoch


def test_stream_state_dict_is_plain_ints():
    batches = StreamBatches(positions(1001), 4, 10)
    take(batches, 3)
    assert batches.state_dict() == {"epoch": 0, "step_in_epoch": 3, "steps_per_epoch": 25}


def test_stream_sharding_splits_the_global_batch():
    tokens = positions(5003)
    ranks = [StreamBatches(tokens, 3, 8, rank=r, world_size=2) for r in range(2)]
    single = StreamBatches(tokens, 6, 8)
    for _ in range(single.steps_per_epoch + 2):
        (x0, y0, n0, _), (x1, y1, n1, _), (x, y, n, _) = next(ranks[0]), next(ranks[1]), next(single)
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
        assert n0 == n1 == n
        assert not set(x0.flatten().tolist()) & set(x1.flatten().tolist())
    assert ranks[0].steps_per_epoch == ranks[1].steps_per_epoch == single.steps_per_epoch


def test_stream_too_short_text():
    with pytest.raises(CharRNNError, match="too short"):
        StreamBatches(positions(100), batch_size=4, seq_length=25)


def test_stream_just_long_enough_text():
    batches = StreamBatches(positions(4 * 25 + 1), batch_size=4, seq_length=25)
    x, y, *_ = next(batches)
    assert batches.steps_per_epoch == 1 and int(y.max()) == 100


def test_stream_reads_memmap_tokens(tmp_path):
    tokens = np.memmap(tmp_path / "t", dtype=np.uint16, mode="w+", shape=(500,))
    tokens[:] = np.arange(500) * 100
    x, y, *_ = next(StreamBatches(tokens, 2, 5))
    assert x.dtype == torch.long
    assert x[1].tolist() == [24900, 25000, 25100, 25200, 25300]


# ---------------------------------------------------------------- RandomBatches


def test_random_shapes_and_shift():
    x, y, new, _ = next(RandomBatches(positions(1000), batch_size=5, seq_length=12, seed=0))
    assert x.shape == y.shape == (5, 12)
    assert torch.equal(y, x + 1)
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(5, 11, dtype=torch.long))
    assert new


def test_random_windows_stay_in_bounds():
    tokens = positions(40)
    for x, y, *_ in take(RandomBatches(tokens, 8, 30, seed=1), 50):
        assert int(x.min()) >= 0 and int(y.max()) <= 39


def test_random_is_deterministic_for_a_seed():
    tokens = positions(1000)
    assert_same_batches(take(RandomBatches(tokens, 4, 10, seed=3), 10), take(RandomBatches(tokens, 4, 10, seed=3), 10))


def test_random_seeds_differ():
    tokens = positions(1000)
    a, b = next(RandomBatches(tokens, 4, 10, seed=0)), next(RandomBatches(tokens, 4, 10, seed=1))
    assert not torch.equal(a[0], b[0])


def test_random_steps_differ():
    a, b = take(RandomBatches(positions(1000), 4, 10, seed=0), 2)
    assert not torch.equal(a[0], b[0])


def test_random_state_dict_resumes_exactly():
    tokens = positions(1000)
    batches = RandomBatches(tokens, 4, 10, seed=7)
    take(batches, 13)
    state = batches.state_dict()
    expected = take(batches, 5)
    resumed = RandomBatches(tokens, 4, 10, seed=7)
    resumed.load_state_dict(state)
    assert_same_batches(take(resumed, 5), expected)


def test_random_epoch_counts_steps():
    batches = RandomBatches(positions(1000), 4, 10, seed=0)
    assert batches.steps_per_epoch == 25
    take(batches, 24)
    assert batches.epoch == 0
    next(batches)
    assert batches.epoch == 1


@pytest.mark.parametrize("world_size", [2, 3])
def test_random_sharding_equals_slices_of_the_global_batch(world_size):
    tokens = positions(1000)
    single = take(RandomBatches(tokens, 4 * world_size, 10, seed=5), 3)
    for rank in range(world_size):
        mine = take(RandomBatches(tokens, 4, 10, seed=5, rank=rank, world_size=world_size), 3)
        for (x, y, *_), (gx, gy, *_) in zip(mine, single):
            assert torch.equal(x, gx[4 * rank:4 * (rank + 1)]) and torch.equal(y, gy[4 * rank:4 * (rank + 1)])


@pytest.mark.parametrize("n, seq_length", [(0, 10), (10, 10), (11, 11)])
def test_random_too_short_text(n, seq_length):
    with pytest.raises(CharRNNError, match="shorter than one window"):
        RandomBatches(positions(n), batch_size=2, seq_length=seq_length)


def test_random_shortest_text_has_one_window():
    x, y, *_ = next(RandomBatches(positions(11), batch_size=3, seq_length=10))
    assert torch.equal(x, torch.arange(10).expand(3, 10)) and torch.equal(y, x + 1)


# ---------------------------------------------------------------- eval_chunks


@pytest.mark.parametrize("n, seq_length", [(101, 10), (100, 10), (57, 8), (2, 5), (30, 100)])
def test_eval_single_stream_covers_every_target_once(n, seq_length):
    tokens = positions(n)
    chunks = list(eval_chunks(tokens, streams=1, seq_length=seq_length))
    xs = torch.cat([x for x, *_ in chunks], dim=1)
    ys = torch.cat([y for _, y, *_ in chunks], dim=1)
    assert torch.equal(ys[0], torch.from_numpy(tokens[1:]))
    assert torch.equal(xs[0], torch.from_numpy(tokens[:-1]))
    assert all(x.shape[1] <= seq_length for x, *_ in chunks)


@pytest.mark.parametrize("n, streams, seq_length", [(101, 4, 10), (1000, 7, 16), (23, 3, 100), (10, 9, 2)])
def test_eval_streams_cover_targets_once(n, streams, seq_length):
    chunks = list(eval_chunks(positions(n), streams, seq_length))
    ys = torch.cat([y for _, y, *_ in chunks], dim=1)
    assert ys.shape[0] == streams
    targets = ys.flatten().tolist()
    assert len(targets) == len(set(targets)) == (n - 1) // streams * streams
    assert torch.equal(ys, torch.arange(streams)[:, None] * ((n - 1) // streams) + torch.arange(1, ys.shape[1] + 1))


def test_eval_chunks_targets_are_shifted_inputs():
    for x, y, *_ in eval_chunks(positions(200), streams=3, seq_length=16):
        assert torch.equal(y[:, :-1], x[:, 1:])
        assert x.shape == y.shape and x.shape[0] == 3


def test_eval_chunks_of_real_text_decode_back():
    text = "hello world, hello chars\n" * 5
    tokens = np.frombuffer(text.encode(), dtype=np.uint8)
    ys = torch.cat([y for _, y, *_ in eval_chunks(tokens, 1, 7)], dim=1)
    assert bytes(ys[0].tolist()).decode() == text[1:]


def test_a_position_saved_with_another_number_of_rows_continues_at_the_same_fraction():
    """Issue 11 item 10: a position from one process (31 steps an epoch) loads into two (15)."""
    tokens = positions(2000)
    one = StreamBatches(tokens, 8, 8)
    take(one, 20)
    two = StreamBatches(tokens, 4, 8, rank=0, world_size=4)  # twice the rows in all: half the steps
    two.load_state_dict(one.state_dict())
    assert two.step_in_epoch == 20 * two.steps_per_epoch // one.steps_per_epoch
    take(two, two.steps_per_epoch)  # every step of an epoch after it reads inside the text
    old_format = {"epoch": 0, "step_in_epoch": 30}  # checkpoint format 1 saved no steps_per_epoch
    two.load_state_dict(old_format)
    assert two.step_in_epoch < two.steps_per_epoch
    next(two)
