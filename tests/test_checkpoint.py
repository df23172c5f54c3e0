"""Checkpoints: atomic writes, safe and checked loading, round trips, finding the file to use."""
import errno
import os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from charrnn import checkpoint, files
from charrnn.errors import CharRNNError
from charrnn.model import CharRNN, ModelConfig
from charrnn.vocab import Vocab

VOCAB = list("abcdefgh ")


def payload(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    config = ModelConfig(len(VOCAB), "gru", rnn_size=16, num_layers=1, embedding_size=8)
    return {"vocab": VOCAB, "model_config": asdict(config), "model": CharRNN(config).state_dict()}


def one_line_error(path: Path) -> str:
    with pytest.raises(CharRNNError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_round_trip_gives_identical_log_probs(tmp_path):
    data = payload()
    checkpoint.save(data, tmp_path / "m.pt")
    model, vocab = checkpoint.build_model(checkpoint.load(tmp_path / "m.pt"))
    original = CharRNN(ModelConfig(**data["model_config"]))
    original.load_state_dict(data["model"])
    x = torch.tensor([vocab.encode("badge cafe")])
    assert vocab == Vocab(VOCAB) and not model.training
    assert torch.equal(model(x)[0], original.eval()(x)[0])


def test_a_checkpoint_from_before_the_copy_attention_loads_without_it(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(len(VOCAB), "lstm", rnn_size=16, num_layers=1, embedding_size=8, copy_memory=0)
    old = CharRNN(config).eval()
    saved = {k: v for k, v in asdict(config).items() if k != "copy_memory"}  # as saved before the option
    checkpoint.save({"vocab": VOCAB, "model_config": saved, "model": old.state_dict()}, tmp_path / "old.pt")
    model, vocab = checkpoint.build_model(checkpoint.load(tmp_path / "old.pt"))
    x = torch.tensor([vocab.encode("badge cafe")])
    assert model.config.copy_memory == 0 and torch.equal(model(x)[0], old(x)[0])


def test_save_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "last.pt"
    checkpoint.save(payload(0), path)
    checkpoint.save(payload(1), path)
    assert os.listdir(path.parent) == ["last.pt"]
    assert torch.equal(checkpoint.load(path)["model"]["head.bias"], payload(1)["model"]["head.bias"])


def test_crash_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save(payload(0), path)
    before = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        checkpoint.save(payload(1), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]


def test_disk_full_is_a_one_line_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    checkpoint.save(payload(0), path)
    before = path.read_bytes()

    def full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(CharRNNError) as info:
        checkpoint.save(payload(1), path)
    assert "No space left on device" in str(info.value) and "\n" not in str(info.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["best.pt"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_real_disk_full_from_torch_save(tmp_path, monkeypatch):
    """torch.save's own writer hitting ENOSPC (/dev/full) becomes a CharRNNError, not a traceback."""
    path = tmp_path / "last.pt"
    checkpoint.save(payload(0), path)
    before = path.read_bytes()
    real_fdopen = os.fdopen

    def to_dev_full(fd, mode="r", *args, **kwargs):
        os.close(fd)
        return real_fdopen(os.open("/dev/full", os.O_WRONLY), mode)

    monkeypatch.setattr(files.os, "fdopen", to_dev_full)
    with pytest.raises(CharRNNError, match="space"):
        checkpoint.save(payload(1), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return open, (str(marker), "w")

    path = tmp_path / "evil.pt"
    torch.save({"format": "charrnn", "version": 1, **payload(), "x": Evil()}, path)
    assert "not plain data" in one_line_error(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control: loaded unsafely, the payload does run
    assert marker.exists()


def _truncated(path: Path) -> None:
    checkpoint.save(payload(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [
    _truncated,
    lambda p: p.write_bytes(b""),
    lambda p: p.write_bytes(bytes(range(256)) * 8),
    lambda p: p.write_bytes(os.urandom(3000)),
], ids=["truncated", "empty", "byte-ramp", "random"])
def test_damaged_file_is_a_one_line_error(tmp_path, damage):
    path = tmp_path / "bad.pt"
    damage(path)
    assert "corrupt" in one_line_error(path)


def test_state_dict_from_another_project_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.ones(3, 3)}, path)
    assert "not a charrnn checkpoint" in one_line_error(path)


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": "charrnn", "version": checkpoint.VERSION + 1, **payload()}, path)
    assert "upgrade" in one_line_error(path)


def test_missing_file_is_a_one_line_error(tmp_path):
    one_line_error(tmp_path / "nope.pt")


def test_build_model_refuses_a_checkpoint_without_weights(tmp_path):
    data = payload()
    del data["model"]
    with pytest.raises(CharRNNError, match="usable model"):
        checkpoint.build_model(data)


@pytest.mark.parametrize("field, value", [("rnn_size", 10**6), ("embedding_size", 10**8), ("num_layers", 3),
                                          ("vocab_size", 10**8), ("model", "lstm"), ("model", "transformer")])
def test_build_model_refuses_sizes_its_weights_do_not_have_before_allocating(field, value):
    data = payload()
    data["model_config"][field] = value  # a tiny file claiming a huge model must not allocate it
    with pytest.raises(CharRNNError, match="usable model"):
        checkpoint.build_model(data)


def test_resolve_file_and_directory(tmp_path):
    for name in ("best.pt", "last.pt"):
        checkpoint.save(payload(), tmp_path / name)
    assert checkpoint.resolve(tmp_path / "last.pt") == tmp_path / "last.pt"
    assert checkpoint.resolve(str(tmp_path)) == tmp_path / "best.pt"
    assert checkpoint.resolve(tmp_path, prefer="last.pt") == tmp_path / "last.pt"
    (tmp_path / "best.pt").unlink()
    assert checkpoint.resolve(tmp_path) == tmp_path / "last.pt"
    (tmp_path / "last.pt").unlink()
    with pytest.raises(CharRNNError, match="no checkpoint"):
        checkpoint.resolve(tmp_path)


def test_resolve_none_takes_the_newest_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_CHECKPOINTS_DIR", str(tmp_path))
    with pytest.raises(CharRNNError, match="no checkpoint"):
        checkpoint.resolve(None)
    for i, run in enumerate(["old", "new", "older"]):
        for name in ("best.pt", "last.pt"):
            checkpoint.save(payload(), tmp_path / run / name)
            os.utime(tmp_path / run / name, (1000 + i, {"old": 2000, "new": 3000, "older": 1000}[run]))
    assert checkpoint.resolve(None) == tmp_path / "new" / "best.pt"
    assert checkpoint.resolve(None, prefer="last.pt") == tmp_path / "new" / "last.pt"


def test_a_small_text_file_as_a_checkpoint_names_no_internal_exception(tmp_path):
    """Issue 11 item 19: 'corrupt or truncated', not 'corrupt or truncated (KeyError)'."""
    path = tmp_path / "notes.pt"
    path.write_text("hello\n")
    with pytest.raises(CharRNNError) as info:
        checkpoint.load(path)
    assert "Error" not in str(info.value) and "notes.pt" in str(info.value)
