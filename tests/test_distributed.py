"""Data-parallel training with torchrun on CPU (gloo): two ranks, one model."""
import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from charrnn import checkpoint
from charrnn.config import TrainConfig
from conftest import REPO, build_trainer, make_text

pytestmark = pytest.mark.slow
TIMEOUT = 240


def torchrun(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "toy.txt"
    path.write_text(make_text(30_000))
    return path


def test_two_ranks_see_different_data_keep_identical_weights_and_match_one_process(tmp_path, corpus_file):
    # fp32: under bf16 (the default on CPUs that have it) 2x4 rows and 8 round differently
    config = TrainConfig.from_options(corpus=str(corpus_file), rnn_size=24, embedding_size=8, seq_length=16, batch_size=4,
                                      warmup_steps=2, max_steps=8, dropout=0.0, threads=1, dtype="float32")
    out = tmp_path / "ddp.json"
    run = torchrun(str(REPO / "tests" / "ddp_worker.py"), json.dumps(asdict(config)), str(out), "8")
    assert run.returncode == 0, run.stderr[-2000:]
    ddp = json.loads(out.read_text())
    assert ddp["world"] == 2 and ddp["different_data"] and ddp["identical"]

    # One process with the same global batch (2 x 4 rows) takes the same steps.
    single = build_trainer(config.with_options(batch_size=8, checkpoint_dir=str(tmp_path / "one")))
    losses = [single.train_step() for _ in range(8)]
    assert losses == pytest.approx(ddp["losses"], abs=1e-4)
    for name, value in single.model.state_dict().items():
        assert torch.allclose(value, torch.tensor(ddp["weights"][name]), atol=1e-4), name


def test_torchrun_checkpoint_samples_and_resumes_in_one_process(tmp_path, corpus_file):
    ckpt_dir = tmp_path / "run"
    flags = ["--corpus", str(corpus_file), "--rnn-size", "16", "--embedding-size", "8", "--seq-length", "16",
             "--batch-size", "4", "--eval-every", "5", "--checkpoint-dir", str(ckpt_dir)]
    run = torchrun(str(REPO / "train.py"), *flags, "--max-steps", "10")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("done: step 10") == 1  # rank 0 alone reports
    assert "per rank x 2 ranks = 8 rows" in run.stdout
    ckpt = checkpoint.load(ckpt_dir / "last.pt")
    assert ckpt["progress"]["step"] == 10 and ckpt["hidden"][0].shape[1] == 8  # the global batch's state

    resumed = subprocess.run([sys.executable, "train.py", "--resume", str(ckpt_dir), "--max-steps", "14"],
                             cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert checkpoint.load(ckpt_dir / "last.pt")["progress"]["step"] == 14

    # ...and a single-process checkpoint resumes under torchrun.
    again = torchrun(str(REPO / "train.py"), "--resume", str(ckpt_dir), "--max-steps", "18")
    assert again.returncode == 0, again.stderr[-2000:]
    assert checkpoint.load(ckpt_dir / "last.pt")["progress"]["step"] == 18


def test_under_a_time_budget_every_rank_follows_rank_0s_clock(tmp_path, corpus_file):
    """Issue 11 item 9: the ranks' learning rates agree to the last digit, step after step."""
    config = TrainConfig.from_options(corpus=str(corpus_file), rnn_size=24, embedding_size=8, seq_length=16,
                                      batch_size=4, warmup_steps=2, time_budget=4.0, eval_every=10**6,
                                      sample_length=0, threads=1, checkpoint_dir=str(tmp_path / "run"))
    out = tmp_path / "rates.json"
    run = torchrun(str(REPO / "tests" / "ddp_worker.py"), json.dumps(asdict(config)), str(out), "0")
    assert run.returncode == 0, run.stderr[-2000:]
    rates = json.loads(out.read_text())["rates"]
    assert len(rates[0]) > 5 and rates[0] == rates[1]
