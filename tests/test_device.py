"""The CUDA path's decisions, checked on a CPU: device choice, autocast dtype, moving checkpoints."""
import os

import pytest
import torch

from charrnn import checkpoint, device
from charrnn.device import autocast_dtype, pick_device, set_threads
from charrnn.errors import CharRNNError
from charrnn.model import CharRNN, ModelConfig


@pytest.fixture
def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch, no_accelerators):
    assert pick_device("auto").type == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto").type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto").type == "cuda"


def test_an_absent_or_unknown_device_is_an_error_not_a_fallback(no_accelerators):
    with pytest.raises(CharRNNError, match="--device cuda is not available"):
        pick_device("cuda")
    with pytest.raises(CharRNNError, match="unknown --device"):
        pick_device("tpu")


def test_bf16_autocast_by_default_on_cuda_with_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = torch.device("cuda")
    assert autocast_dtype(cuda, "auto") is torch.bfloat16
    assert autocast_dtype(cuda, "bfloat16") is torch.bfloat16
    assert autocast_dtype(cuda, "float32") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(cuda, "auto") is None


def test_bf16_on_cpu_by_default_only_where_the_cpu_runs_it_natively(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    assert autocast_dtype(cpu, "auto") is None
    with pytest.raises(CharRNNError, match="needs a CUDA GPU with bf16 support or a CPU with bf16"):
        autocast_dtype(cpu, "bfloat16")
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    assert autocast_dtype(cpu, "bfloat16") is torch.bfloat16
    assert autocast_dtype(cpu, "auto") is torch.bfloat16
    assert autocast_dtype(cpu, "float32") is None


def test_threads_are_shared_between_processes_on_a_machine():
    before = torch.get_num_threads()
    try:
        assert set_threads(None, processes_per_machine=os.cpu_count()) == 1
        assert set_threads(3) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_a_checkpoint_loads_onto_another_device(tmp_path):
    """Tensors are mapped to the CPU on load and the model moved where asked ('meta' stands in for a GPU)."""
    model = CharRNN(ModelConfig(vocab_size=5, rnn_size=8, embedding_size=4))
    checkpoint.save({"vocab": list("abcde"), "model_config": {"vocab_size": 5, "rnn_size": 8, "embedding_size": 4},
                     "model": model.state_dict()}, tmp_path / "m.pt")
    ckpt = checkpoint.load(tmp_path / "m.pt")
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())
    moved, _ = checkpoint.build_model(ckpt, "meta")
    assert {p.device.type for p in moved.parameters()} == {"meta"}


def test_only_runs_that_follow_the_clock_have_their_threads_governed(tmp_path):
    """A thread count can change a small model's last bits: a --max-steps run keeps its threads."""
    from charrnn.config import TrainConfig
    from conftest import build_trainer, make_text

    corpus = tmp_path / "t.txt"
    corpus.write_text(make_text(3000))
    options = dict(corpus=str(corpus), rnn_size=8, batch_size=4, checkpoint_dir=str(tmp_path / "run"))
    governed = [any(isinstance(c, device.ThreadGovernor) for c in build_trainer(config).callbacks)
                for config in (TrainConfig.from_options(**options, max_steps=5, threads=None),
                               TrainConfig.from_options(**options, time_budget=5.0, threads=2),
                               TrainConfig.from_options(**options, time_budget=5.0, threads=None))]
    assert governed == [False, False, os.cpu_count() > 1]


def test_thread_governor_follows_the_cores_others_leave_free(monkeypatch):
    before = torch.get_num_threads()
    readings = iter([(0.0, 0.0, 0.0),       # (wall, machine busy, this process)
                     (10.0, 20.0, 20.0),    # quiet: all the machine's work was ours -> 2
                     (20.0, 37.0, 30.0),    # a neighbour took 0.7 of a core -> 1
                     (30.0, 56.0, 40.0),    # it goes on taking a whole core -> stays 1
                     (40.0, 61.0, 45.0),    # it stopped -> 2
                     (50.0, 80.0, 60.0)])   # half a core, inside the band -> stays 2
    monkeypatch.setattr(device.ThreadGovernor, "_reading", staticmethod(lambda: next(readings)))
    monkeypatch.setattr(device.time, "monotonic", lambda: 1e9)
    try:
        governor = device.ThreadGovernor(2, interval=1.0)
        seen = []
        for _ in range(5):
            governor()
            seen.append(torch.get_num_threads())
        assert seen == [before, 1, 1, 2, 2]
    finally:
        torch.set_num_threads(before)


def test_thread_governor_restart_leaves_out_the_time_before_it(monkeypatch):
    # a neighbour used both cores for 10 s while the server waited; then 1 s of our own work
    monkeypatch.setattr(device.time, "monotonic", lambda: 1e9)
    for restart, expected in ((False, [1]), (True, [])):
        readings = iter([(0.0, 0.0, 0.0), *([(10.0, 20.0, 0.0)] if restart else []), (11.0, 22.0, 2.0)])
        monkeypatch.setattr(device.ThreadGovernor, "_reading", staticmethod(lambda: next(readings)))
        chosen = []
        governor = device.ThreadGovernor(2, interval=1.0, apply=chosen.append)
        if restart:
            governor.restart(look_after=0.1)
        governor()
        assert chosen == expected  # without the restart the neighbour's 10 s count, and it drops to 1


def test_thread_governor_looks_first_after_the_restart_delay(monkeypatch):
    clock = [10.0]  # and a neighbour on both cores all along
    monkeypatch.setattr(device.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(device.ThreadGovernor, "_reading", staticmethod(lambda: (clock[0], 2 * clock[0], 0.0)))
    chosen = []
    governor = device.ThreadGovernor(2, interval=0.5, apply=chosen.append)
    governor.restart(look_after=0.1)
    for now, expected in ((10.05, []), (10.1, [1])):
        clock[0] = now
        governor()
        assert chosen == expected
