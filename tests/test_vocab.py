"""Vocabulary: round trips on any Unicode, stable indices, one-hot vectors, unknown characters."""
import json
import random

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from charrnn.errors import CharRNNError
from charrnn.vocab import UnknownCharacterError, Vocab


def round_trip(text: str) -> str:
    vocab = Vocab.from_text(text)
    return vocab.decode(vocab.encode(text))


@given(st.text(min_size=1))
def test_round_trip_any_text(text):
    assert round_trip(text) == text


@given(st.text(st.characters(codec=None, exclude_categories=()), min_size=1))
def test_round_trip_includes_surrogates_and_control_chars(text):
    assert round_trip(text) == text


@pytest.mark.parametrize("text", [
    "漢字かなカナ한국어",                              # CJK
    "😀 🇫🇷 👩‍👩‍👧‍👦 👍🏽",                          # emoji, flags, ZWJ sequence, skin tone
    "e\u0301 a\u0308\u0323 \u0915\u094d\u0937",    # combining marks, Devanagari conjunct
    "line one\r\nline two\r\n",
    "col\tcol\t\tend\n",
    "\x00\x7f\u200b\ufeff\U0010ffff",
])
def test_round_trip_explicit_cases(text):
    assert round_trip(text) == text


def test_zwj_sequence_is_several_code_points():
    family = "👩‍👩‍👧"
    vocab = Vocab.from_text(family)
    assert len(vocab.encode(family)) == 5
    assert set(vocab.chars) == {"👩", "\u200d", "👧"}


def test_vocab_is_sorted_distinct_code_points():
    vocab = Vocab.from_text("hello, world")
    assert vocab.chars == sorted(set("hello, world"))


@given(st.text(min_size=1), st.randoms())
def test_shuffled_text_gives_same_vocab_and_indices(text, rnd):
    chars = list(text)
    rnd.shuffle(chars)
    shuffled = Vocab.from_text("".join(chars))
    vocab = Vocab.from_text(text)
    assert shuffled == vocab
    assert shuffled.encode(text) == vocab.encode(text)


def test_same_text_gives_same_indices():
    text = "the cat sat on the mat"
    assert Vocab.from_text(text).encode(text) == Vocab.from_text(text).encode(text)
    assert Vocab(list(reversed(sorted(set(text))))) == Vocab.from_text(text)


def test_encode_returns_plain_ints_in_range():
    vocab = Vocab.from_text("abc")
    assert vocab.encode("cab") == [2, 0, 1]
    assert all(type(i) is int for i in vocab.encode("cab"))


@pytest.mark.parametrize("shape", [(), (7,), (3, 5)])
def test_one_hot_shape(shape):
    vocab = Vocab.from_text("abcdef")
    idx = torch.randint(0, len(vocab), shape)
    out = vocab.one_hot(idx)
    assert out.shape == (*shape, len(vocab))
    assert out.dtype == torch.float32
    assert torch.equal(out.sum(-1), torch.ones(shape))


def test_one_hot_matmul_equals_index_lookup():
    vocab = Vocab.from_text("abcdefghij")
    idx = torch.tensor([[0, 3, 9], [9, 9, 1]])
    weight = torch.randn(len(vocab), 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(vocab.one_hot(idx) @ weight, weight[idx])


def test_one_hot_accepts_lists_and_numpy_of_every_index_dtype():
    vocab = Vocab([chr(0x4E00 + i) for i in range(300)])
    expected = torch.nn.functional.one_hot(torch.tensor([0, 299]), 300).float()
    assert torch.equal(vocab.one_hot([0, 299]), expected)
    for dtype in (np.uint16, np.uint32, np.int64):
        assert torch.equal(vocab.one_hot(np.array([0, 299], dtype=dtype)), expected)


def test_unknown_character_error_names_it():
    vocab = Vocab.from_text("abc")
    with pytest.raises(UnknownCharacterError, match=r"'é' \(U\+00E9\) is not in this model's vocabulary"):
        vocab.encode("abé")


def test_unknown_characters_error_lists_each_once_and_is_a_charrnn_error():
    vocab = Vocab.from_text("abc")
    with pytest.raises(CharRNNError) as info:
        vocab.encode("zaz😀")
    message = str(info.value)
    assert "'z' (U+007A), '😀' (U+1F600) are not" in message
    assert message.count("U+007A") == 1
    assert "--skip-unknown" in message


def test_many_unknown_characters_are_summarised():
    with pytest.raises(UnknownCharacterError, match="and 5 more"):
        Vocab.from_text("a").encode("bcdefghijk")


def test_skip_unknown_drops_them():
    vocab = Vocab.from_text("abc")
    assert vocab.decode(vocab.encode("xaébyc😀", skip_unknown=True)) == "abc"
    assert vocab.encode("zzz", skip_unknown=True) == []


@pytest.mark.parametrize("n_chars, dtype", [
    (1, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16), (65537, np.uint32)])
def test_index_dtype_is_smallest_that_fits(n_chars, dtype):
    vocab = Vocab([chr(i) for i in range(n_chars)])
    assert vocab.index_dtype == np.dtype(dtype)
    top = vocab.encode_points(np.array([n_chars - 1], dtype=np.uint32))
    assert top.dtype == dtype and int(top[0]) == n_chars - 1


def test_to_list_round_trips_through_json():
    vocab = Vocab.from_text("héllo\r\n\t😀 e\u0301 \x00")
    restored = Vocab(json.loads(json.dumps(vocab.to_list())))
    assert restored == vocab
    assert restored.encode("😀h") == vocab.encode("😀h")


def test_to_list_is_a_copy():
    vocab = Vocab.from_text("abc")
    vocab.to_list().append("z")
    assert len(vocab) == 3


@pytest.mark.parametrize("chars", [[], ["a", "a"], ["ab"], [""]])
def test_bad_vocabularies_are_rejected(chars):
    with pytest.raises(CharRNNError):
        Vocab(chars)


def test_empty_text_has_no_vocabulary():
    with pytest.raises(CharRNNError, match="at least one"):
        Vocab.from_text("")


def test_contains():
    vocab = Vocab.from_text("ab")
    assert "a" in vocab and "c" not in vocab


def test_random_unicode_sample_round_trips():
    rnd = random.Random(0)
    text = "".join(chr(rnd.randrange(0x20, 0x2FFFF)) for _ in range(5000)).encode(
        "utf-8", "ignore").decode("utf-8")
    assert round_trip(text) == text
