"""Corpora: finding the files, decoding them in chunks, downloading, and the memory-mapped cache."""
import functools
import hashlib
import http.server
import os
import socket
import threading

import numpy as np
import pytest

from charrnn import corpus
from charrnn.errors import CharRNNError
from conftest import make_text


@pytest.fixture
def small_file(tmp_path):
    """Like conftest's text_file, but 2,000 characters (make_text is slow for large sizes)."""
    path = tmp_path / "small.txt"
    path.write_text(make_text(2000), encoding="utf-8")
    return path


def load_text(path, encoding="utf-8") -> str:
    loaded = corpus.load(corpus.resolve(str(path), encoding))
    return loaded.vocab.decode(loaded.tokens)


# ---------------------------------------------------------------- resolve


def test_resolve_file(text_file):
    source = corpus.resolve(str(text_file))
    assert source.files == (text_file,)
    assert source.name == "toy"
    assert source.encoding == "utf-8"


def test_resolve_directory_takes_text_files_in_sorted_order(tmp_path):
    root = tmp_path / "books"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "b" / "deep" / "z.md").write_text("z")
    (root / "b" / "a.txt").write_text("ba")
    (root / "c.txt").write_text("c")
    (root / "a.txt").write_text("a")
    source = corpus.resolve(str(root))
    assert source.name == "books"
    assert [p.relative_to(root).as_posix() for p in source.files] == ["a.txt", "b/a.txt", "b/deep/z.md", "c.txt"]


def test_resolve_directory_skips_empty_binary_and_hidden_files(tmp_path):
    (tmp_path / "good.txt").write_text("text")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "late_nul.txt").write_bytes(b"x" * 8192 + b"\x00")  # NUL after the first 8 KB: binary too
    (tmp_path / ".hidden.txt").write_text("secret")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]")
    os.mkfifo(tmp_path / "pipe")
    source = corpus.resolve(str(tmp_path))
    assert [p.name for p in source.files] == ["good.txt"]
    assert [(p.name, why) for p, why in source.skipped] == [
        ("empty.txt", "empty"), ("image.png", "binary"), ("late_nul.txt", "binary")]


def test_resolve_directory_without_text_files(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".notes.txt").write_text("hidden")
    with pytest.raises(CharRNNError, match="no text files"):
        corpus.resolve(str(tmp_path))


def test_resolve_name_from_corpora_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_CORPORA_DIR", str(tmp_path))
    (tmp_path / "poems.txt").write_text("roses are red\n")
    source = corpus.resolve("poems")
    assert source.name == "poems"
    assert source.files == (tmp_path / "poems.txt",)


def test_unknown_name_lists_known_corpora(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_CORPORA_DIR", str(tmp_path))
    (tmp_path / "poems.txt").write_text("roses are red\n")
    with pytest.raises(CharRNNError, match=r"'nope' not found.*poems.*tinyshakespeare"):
        corpus.resolve("nope")


def test_nonexistent_path(tmp_path):
    with pytest.raises(CharRNNError, match="not found"):
        corpus.resolve(str(tmp_path / "missing" / "file.txt"))


def test_fifo_is_rejected(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(CharRNNError, match="not a regular file"):
        corpus.resolve(str(fifo))


@pytest.mark.parametrize("encoding", ["no-such-codec", "hex", "rot13", "zlib"])
def test_unknown_or_non_text_encoding(small_file, encoding):
    with pytest.raises(CharRNNError, match="--encoding"):
        corpus.resolve(str(small_file), encoding)


def test_default_is_the_stdlib():
    source = corpus.resolve(None)
    assert source.name == "stdlib"
    assert corpus.resolve("stdlib") == source
    assert len(source.files) > 50
    assert all(p.suffix == ".py" and p.is_file() for p in source.files)
    assert any(p.name == "os.py" for p in source.files)
    assert list(source.files) == sorted(source.files)


def test_default_corpus_loads():
    loaded = corpus.load(corpus.resolve(None))
    total_bytes = sum(p.stat().st_size for p in corpus.stdlib_files())
    assert 0.9 * total_bytes <= len(loaded.tokens) <= total_bytes
    assert 80 <= len(loaded.vocab) <= 5000
    assert {"d", "e", "f", " ", "\n", "(", ")", ":"} <= set(loaded.vocab.chars)
    first_file = corpus.stdlib_files()[0].read_text(encoding="utf-8")
    assert loaded.vocab.decode(loaded.tokens[:len(first_file)]) == first_file


# ---------------------------------------------------------------- downloads


@pytest.fixture
def http_server(tmp_path):
    """Serves tmp_path/served over HTTP on a loopback port; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def corpora_dir(tmp_path, monkeypatch):
    folder = tmp_path / "corpora"
    monkeypatch.setenv("CHARRNN_CORPORA_DIR", str(folder))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    return folder


def test_download_with_right_checksum(http_server, corpora_dir, monkeypatch):
    served, url = http_server
    data = "To be, or not to be\n".encode() * 100
    (served / "input.txt").write_bytes(data)
    item = corpus.Download(f"{url}/input.txt", hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(corpus, "DOWNLOADS", {"hamlet": item})
    source = corpus.resolve("hamlet")
    assert source.files == (corpora_dir / "hamlet.txt",)
    assert (corpora_dir / "hamlet.txt").read_bytes() == data
    assert [p.name for p in corpora_dir.iterdir()] == ["hamlet.txt"]


def test_download_with_wrong_checksum_leaves_no_file(http_server, corpora_dir, monkeypatch):
    served, url = http_server
    (served / "input.txt").write_bytes(b"tampered text\n")
    item = corpus.Download(f"{url}/input.txt", hashlib.sha256(b"the real text\n").hexdigest())
    monkeypatch.setattr(corpus, "DOWNLOADS", {"hamlet": item})
    with pytest.raises(CharRNNError, match=r"sha256.*expected") as info:
        corpus.resolve("hamlet")
    assert str(corpora_dir / "hamlet.txt") in str(info.value)
    assert list(corpora_dir.iterdir()) == []


def test_download_missing_on_server(http_server, corpora_dir, monkeypatch):
    _, url = http_server
    monkeypatch.setattr(corpus, "DOWNLOADS", {"hamlet": corpus.Download(f"{url}/absent.txt", "0" * 64)})
    with pytest.raises(CharRNNError, match="could not download"):
        corpus.resolve("hamlet")
    assert list(corpora_dir.iterdir()) == []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_download_says_where_to_save_the_file(corpora_dir, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/x"
    monkeypatch.setattr(corpus, "DOWNLOADS", {"hamlet": corpus.Download(url, "0" * 64)})
    with pytest.raises(CharRNNError) as info:
        corpus.resolve("hamlet")
    message = str(info.value)
    assert url in message
    assert f"save that file as {corpora_dir / 'hamlet.txt'}" in message
    assert not (corpora_dir / "hamlet.txt").exists()


def test_existing_named_file_is_not_downloaded_again(corpora_dir, monkeypatch):
    corpora_dir.mkdir()
    (corpora_dir / "hamlet.txt").write_text("already here\n")
    url = f"http://127.0.0.1:{closed_port()}/x"
    monkeypatch.setattr(corpus, "DOWNLOADS", {"hamlet": corpus.Download(url, "0" * 64)})
    assert corpus.resolve("hamlet").files == (corpora_dir / "hamlet.txt",)


# ---------------------------------------------------------------- bad files


def test_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(CharRNNError, match="empty"):
        corpus.load(corpus.resolve(str(path)))


def test_binary_file_names_file_and_offset(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"hello\x00world")
    with pytest.raises(CharRNNError, match=r"looks binary \(NUL byte at offset 5\)") as info:
        corpus.load(corpus.resolve(str(path)))
    assert str(path) in str(info.value)


def test_nul_offset_counts_bytes_not_characters(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes("héllo😀".encode() + b"\x00")
    with pytest.raises(CharRNNError, match=r"offset 10\)"):
        corpus.load(corpus.resolve(str(path)))


def test_non_utf8_names_byte_offset_and_latin1_works(tmp_path):
    path = tmp_path / "old.txt"
    path.write_bytes(b"caf\xe9 au lait\n")
    with pytest.raises(CharRNNError, match=r"not valid utf-8 \(byte offset 3\).*--encoding") as info:
        corpus.load(corpus.resolve(str(path)))
    assert str(path) in str(info.value)
    assert load_text(path, "latin-1") == "café au lait\n"


def test_truncated_utf8_at_end_of_file(tmp_path):
    path = tmp_path / "cut.txt"
    path.write_bytes("ab漢".encode()[:-1])
    with pytest.raises(CharRNNError, match=r"byte offset 2\)"):
        corpus.load(corpus.resolve(str(path)))


def test_a_folder_leaves_out_files_not_valid_in_the_encoding_and_says_so(tmp_path):
    """Issue 25 item 1: one undecodable header among thousands no longer stops a folder."""
    (tmp_path / "a.txt").write_text("fine\n")
    (tmp_path / "X11" / "extensions").mkdir(parents=True)
    (tmp_path / "X11" / "extensions" / "Xge.h").write_bytes(b"/* \xa9 1999 */\n")
    (tmp_path / "z.txt").write_bytes(b"ok \xff")
    (tmp_path / "empty.h").write_bytes(b"")
    source = corpus.resolve(str(tmp_path))
    assert [p.name for p in source.files] == ["a.txt"]
    assert load_text(tmp_path) == "fine\n"
    assert corpus.skipped_summary(source) == (
        f"skipped 3 files of {tmp_path.name}: 2 not valid utf-8 (X11/extensions/Xge.h, z.txt; --encoding latin-1 "
        "reads them), 1 empty (empty.h)")
    assert load_text(tmp_path, "latin-1") == "/* © 1999 */\nfine\nok ÿ"


def test_a_folder_of_files_none_valid_says_why_in_its_error(tmp_path):
    (tmp_path / "old.txt").write_bytes(b"caf\xe9")
    with pytest.raises(CharRNNError, match=r"no text files .*1 not valid utf-8 \(old\.txt; --encoding latin-1"):
        corpus.resolve(str(tmp_path))


def test_the_summary_names_the_first_few_files_of_each_reason(tmp_path):
    (tmp_path / "good.txt").write_text("text")
    for i in range(5):
        (tmp_path / f"bad{i}.txt").write_bytes(b"\xff")
    summary = corpus.skipped_summary(corpus.resolve(str(tmp_path)))
    assert "5 not valid utf-8 (bad0.txt, bad1.txt, bad2.txt, ...; --encoding latin-1 reads them)" in summary


def test_the_cache_follows_files_that_become_valid_or_invalid(tmp_path):
    """Issue 25 item 1: the files left out are part of the cache key."""
    (tmp_path / "a.txt").write_text("first\n")
    (tmp_path / "b.txt").write_bytes(b"caf\xe9\n")
    assert load_text(tmp_path) == "first\n"
    (tmp_path / "b.txt").write_text("café\n")  # fixed
    assert load_text(tmp_path) == "first\ncafé\n"
    (tmp_path / "a.txt").write_bytes(b"firs\xff\n")  # broken, same size
    assert load_text(tmp_path) == "café\n"


# ---------------------------------------------------------------- loading and the cache


def test_load_decodes_to_the_text(text_file):
    loaded = corpus.load(corpus.resolve(str(text_file)))
    assert loaded.name == "toy"
    assert loaded.vocab.decode(loaded.tokens) == text_file.read_text()


def test_directory_loads_as_files_concatenated_in_order(tmp_path):
    (tmp_path / "2.txt").write_text("second\r\n")
    (tmp_path / "1.txt").write_text("first\t😀\n", encoding="utf-8")
    assert load_text(tmp_path) == "first\t😀\nsecond\r\n"


def test_crlf_is_kept(tmp_path):
    path = tmp_path / "dos.txt"
    path.write_bytes(b"one\r\ntwo\r\n")
    assert load_text(path) == "one\r\ntwo\r\n"


def test_other_encodings(tmp_path):
    path = tmp_path / "wide.txt"
    path.write_text("héllo 😀\n", encoding="utf-16")
    assert load_text(path, "utf-16") == "héllo 😀\n"


def test_load_twice_uses_the_cache(small_file, monkeypatch):
    first = corpus.load(corpus.resolve(str(small_file)))

    def no_rebuild(*args):
        raise AssertionError("cache rebuilt")

    monkeypatch.setattr(corpus, "_build_cache", no_rebuild)
    second = corpus.load(corpus.resolve(str(small_file)))
    assert second.vocab == first.vocab
    assert np.array_equal(second.tokens, first.tokens)


def test_cache_goes_to_charrnn_cache_dir(small_file):
    corpus.load(corpus.resolve(str(small_file)))
    cache_dir = os.environ["CHARRNN_CACHE_DIR"]
    names = os.listdir(cache_dir)
    assert sorted(name.rsplit(".", 1)[1] for name in names) == ["json", "tokens"]


def test_cache_is_rebuilt_when_the_file_changes(small_file):
    before = corpus.load(corpus.resolve(str(small_file)))
    mtime = small_file.stat().st_mtime_ns
    small_file.write_text("a brand new text\n")
    os.utime(small_file, ns=(mtime + 10**9, mtime + 10**9))
    after = corpus.load(corpus.resolve(str(small_file)))
    assert after.vocab.decode(after.tokens) == "a brand new text\n"
    assert len(after.tokens) != len(before.tokens)


def test_cache_is_rebuilt_for_same_size_edit(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcd")
    assert load_text(path) == "abcd"
    mtime = path.stat().st_mtime_ns
    path.write_text("wxyz")
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
    assert load_text(path) == "wxyz"


def test_encoding_is_part_of_the_cache_key(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("é".encode())
    assert load_text(path, "utf-8") == "é"
    assert load_text(path, "latin-1") == "Ã©"


def test_tokens_are_uint8_memmap_for_small_vocab(small_file):
    tokens = corpus.load(corpus.resolve(str(small_file))).tokens
    assert isinstance(tokens, np.memmap)
    assert tokens.dtype == np.uint8
    assert not tokens.flags.writeable


def test_tokens_are_uint16_for_more_than_256_chars(tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(300)) * 2 + "\n"
    path = tmp_path / "cjk.txt"
    path.write_text(text, encoding="utf-8")
    loaded = corpus.load(corpus.resolve(str(path)))
    assert isinstance(loaded.tokens, np.memmap)
    assert loaded.tokens.dtype == np.uint16
    assert len(loaded.vocab) == 301
    assert loaded.vocab.decode(loaded.tokens) == text


# ---------------------------------------------------------------- chunk boundaries


@pytest.fixture
def tiny_chunks(monkeypatch):
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 7)


@pytest.mark.parametrize("prefix", range(7))
def test_multibyte_characters_split_across_chunks(tmp_path, tiny_chunks, prefix):
    text = "x" * prefix + "é漢😀" * 5 + "\r\n" + make_text(50)
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    assert load_text(path) == text


def test_chunks_match_whole_file_decode(tmp_path, tiny_chunks):
    text = "ünïcödé 漢字 😀👩‍👩‍👧 e\u0301\n" * 20
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    chunks = list(corpus.read_chunks(corpus.resolve(str(path))))
    assert len(chunks) > 10
    assert "".join(chunks) == text


@pytest.mark.parametrize("data, offset", [
    (b"abcdef\xff", 6),                 # last byte of the first chunk
    (b"abcdefg\xff", 7),                # first byte of the second chunk
    (b"abcdef\xe6\x97", 6),             # a sequence cut off by the end of the file
    (b"abcdef\xe6A", 6),                # a lead byte ends the chunk, no continuation follows
    (b"abcde\xe6\x97A", 5),             # two bytes of a three-byte sequence end the chunk
    ("abcde漢".encode() + b"\xff", 8),  # a valid character across the boundary, then a bad byte
    (b"abcdefg" * 3 + b"\x80", 21),     # a stray continuation byte three chunks in
])
def test_invalid_byte_offset_is_exact_at_chunk_boundaries(tmp_path, tiny_chunks, data, offset):
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    with pytest.raises(CharRNNError, match=rf"byte offset {offset}\)"):
        corpus.load(corpus.resolve(str(path)))


@pytest.mark.parametrize("data, offset", [
    (b"abcdef\x00", 6),
    (b"abcdefg\x00", 7),
    ("abcdef漢".encode() + b"\x00", 9),
    ("abcde😀".encode() + b"xyz\x00", 12),
])
def test_nul_offset_is_exact_at_chunk_boundaries(tmp_path, tiny_chunks, data, offset):
    path = tmp_path / "t.bin"
    path.write_bytes(data)
    with pytest.raises(CharRNNError, match=rf"NUL byte at offset {offset}\)"):
        corpus.load(corpus.resolve(str(path)))


def test_tiny_chunks_give_the_same_cache_as_large_ones(tmp_path, monkeypatch):
    text = make_text(3000) + "漢字😀é\n"
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "cache-a"))
    whole = corpus.load(corpus.resolve(str(path)))
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 5)
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "cache-b"))
    chunked = corpus.load(corpus.resolve(str(path)))
    assert chunked.vocab == whole.vocab
    assert np.array_equal(chunked.tokens, whole.tokens)


# ---------------------------------------------------------------- issue 11: corpora found by a new user


def test_binary_file_is_called_binary_before_any_encoding_advice(tmp_path):
    """Issue 11 item 16: a binary file is named as binary at once, not sent round via --encoding."""
    path = tmp_path / "data.bin"
    path.write_bytes(bytes([0x89, 0xFF, 0xFE, 0x00, 0x10, 0x80]) * 100)
    for encoding in ("utf-8", "latin-1"):
        with pytest.raises(CharRNNError, match="looks binary") as info:
            corpus.load(corpus.resolve(str(path), encoding))
        assert "--encoding" not in str(info.value)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_utf16_and_utf32_files_in_a_directory_are_read_not_skipped(tmp_path, encoding):
    """Issue 11 item 17: wide encodings are full of NUL bytes; their byte-order mark says what they are."""
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "wide.txt").write_text("漢字 and text\n", encoding=encoding)  # with a BOM
    (tmp_path / "books" / "plain.txt").write_text("plain\n", encoding="utf-8")
    assert load_text(tmp_path / "books") == "plain\n漢字 and text\n"
    (tmp_path / "books" / "plain.txt").unlink()
    assert load_text(tmp_path / "books", encoding) == "漢字 and text\n"
    (tmp_path / "books" / "wide.txt").write_bytes("no mark".encode(encoding + "-le"))
    with pytest.raises(CharRNNError, match=rf"1 {encoding} without a byte-order mark \(wide.txt\)"):
        load_text(tmp_path / "books", encoding)


def test_a_utf8_byte_order_mark_is_not_a_character(tmp_path):
    """Issue 11 item 18: a leading BOM is dropped, so it never enters the vocabulary."""
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfhello\n")
    loaded = corpus.load(corpus.resolve(str(path)))
    assert "\ufeff" not in loaded.vocab and loaded.vocab.decode(loaded.tokens) == "hello\n"


def test_messages_for_an_empty_file_and_a_folder_without_text_say_what_is_wrong(tmp_path):
    """Issue 11 item 19: no 'corpus empty is empty'; no '.txt only' advice where .md files count."""
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(CharRNNError) as info:
        corpus.load(corpus.resolve(str(tmp_path / "empty.txt")))
    assert "empty.txt" in str(info.value) and "empty is empty" not in str(info.value)
    (tmp_path / "folder").mkdir()
    with pytest.raises(CharRNNError) as info:
        corpus.resolve(str(tmp_path / "folder"))
    assert ".txt files" not in str(info.value) and "text files" in str(info.value)
