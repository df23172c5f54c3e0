"""Sampling speed against the machine's floor, for one stream and for a batch; time to first character.

A character must read each big weight matrix once: for a 2-layer LSTM, layer 0's hidden-to-hidden
and layer 1's input-to-hidden and hidden-to-hidden, three H x 4H float32 matrices (layer 0's input
product is a row of a precomputed table); with the copy attention, also the M x 64 keys of its
memory. The floor is those products alone, in
numpy, on random matrices of the model's sizes: (1, H) @ (H, G*H) each, for one stream, and
(B, H) @ (H, G*H) for B streams, best of --repeats. charrnn's speed is generate() end to end (the
prime, the step, the draw, the loop), best of --repeats; the two are measured in turn in the same
run, so that a busy machine slows both alike, and the ratio is charrnn's time per character over
the floor's.

Uses --checkpoint if given; otherwise trains the default model for one step on the benchmark
corpus (speed does not depend on what the weights are). Beside charrnn it times the naive loop a
user would write first: one nn.LSTM call and one torch.multinomial per character. Through the
command: `generate.py` as a user runs it, its output read from a pseudo-terminal, start-up left out
by timing a run of --length characters and one of a tenth of that (for the batch, --length / 2
characters a sample: shorter runs leave a difference of a second or two, which the start-up's own
jitter swamps); each such pair is taken right after a floor measure of its own, and the median of
the ratios is shown. The time to first character runs `generate.py` in a child process and reads
its output until the first generated character arrives: interpreter start-up, imports, checkpoint
load and the prime.

numpy's BLAS (OpenBLAS) starts as many threads as there are cores, and both the floor and charrnn
use them. On a machine shared with other work a second thread can cost more than it gives: set
OPENBLAS_NUM_THREADS=1 to measure (and to sample) on one. Example:

    OPENBLAS_NUM_THREADS=1 python bench/sampling.py --length 20000
"""
from __future__ import annotations

import argparse
import json
import os
import pty
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import SHAKESPEARE

from charrnn import checkpoint
from charrnn.config import SampleConfig
from charrnn.model import COPY_KEY, GATE_ORDER
from charrnn.sample import generate

REPO = Path(__file__).resolve().parent.parent
PRIME = "ROMEO:\n"


def one_step_checkpoint(folder: Path) -> Path:
    corpus = str(SHAKESPEARE) if SHAKESPEARE.exists() else "stdlib"
    subprocess.run([sys.executable, str(REPO / "train.py"), "--corpus", corpus, "--max-steps", "1",
                    "--checkpoint-dir", str(folder)], check=True, stdout=subprocess.DEVNULL)
    return folder / "last.pt"


def floor_chars_per_sec(config, streams: int, seconds: float = 1.0) -> float:
    """Characters per second if a step cost only its big products: every layer's (B, H) @ (H, G*H)
    hidden-to-hidden and every layer but the first's input-to-hidden, into a buffer made once;
    with the copy attention, also its read of the memory's keys, (B, M, D) @ (B, D, 1)."""
    h, g = config.rnn_size, len(GATE_ORDER[config.model]) * config.rnn_size
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((h, g), dtype=np.float32) for _ in range(2 * config.num_layers - 1)]
    x = rng.standard_normal((streams, h), dtype=np.float32)
    out = np.empty((streams, g), np.float32)
    keys = rng.standard_normal((streams, config.copy_memory, COPY_KEY), dtype=np.float32)
    query = rng.standard_normal((streams, COPY_KEY, 1), dtype=np.float32)
    scores = np.empty((streams, config.copy_memory, 1), np.float32)
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(10):
            for w in weights:
                np.matmul(x, w, out=out)
            if config.copy_memory:
                np.matmul(keys, query, out=scores)
        steps += 10
    return steps * streams / elapsed


def charrnn_chars_per_sec(model, vocab, length: int, num_samples: int) -> float:
    config = SampleConfig(length=length, temperature=1.0)
    start = time.perf_counter()
    texts, _ = generate(model, vocab, config, PRIME, num_samples=num_samples, generator=np.random.default_rng(0))
    return sum(map(len, texts)) / (time.perf_counter() - start)


@torch.no_grad()
def naive_chars_per_sec(model, vocab, length: int) -> float:
    """The first loop a user writes: the whole model once per character, torch.multinomial."""
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    log_probs, state = model(torch.tensor([vocab.encode(PRIME)]))
    for _ in range(length):
        idx = torch.multinomial(log_probs[0, -1].exp(), 1, generator=generator)
        log_probs, state = model(idx.view(1, 1), state)
    return length / (time.perf_counter() - start)


def command_seconds(path: Path, length: int, num_samples: int) -> float:
    """Wall seconds of `generate.py` making `num_samples` samples of `length` characters, its
    output read from a pseudo-terminal, as a user's terminal would show it."""
    cmd = [sys.executable, str(REPO / "generate.py"), "--checkpoint", str(path), "--prime", PRIME,
           "--length", str(length), "--seed", "0", "--temperature", "1", "--num-samples", str(num_samples)]
    reader, writer = pty.openpty()
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=writer, stderr=subprocess.DEVNULL)
    os.close(writer)
    try:
        while os.read(reader, 1 << 16):
            pass
    except OSError:  # EIO: the child has closed the terminal
        pass
    finally:
        os.close(reader)
    if child.wait():
        raise SystemExit(f"{' '.join(cmd)} failed")
    return time.perf_counter() - start


def command_chars_per_sec(path: Path, length: int, num_samples: int) -> float:
    """`generate.py`'s characters per second through the command, start-up left out: a run of
    `length` characters a sample less one of a tenth of that, over the characters between them."""
    short, long = command_seconds(path, length // 10, num_samples), command_seconds(path, length, num_samples)
    return (length - length // 10) * num_samples / (long - short)


def time_to_first_char(path: Path) -> float:
    """Seconds from launching generate.py until its first generated character can be read."""
    cmd = [sys.executable, str(REPO / "generate.py"), "--checkpoint", str(path), "--prime", PRIME,
           "--length", "2000", "--seed", "0"]
    start = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE) as child:
        seen = b""
        while len(seen.decode(errors="ignore")) <= len(PRIME):
            chunk = child.stdout.read1(4096)
            if not chunk:
                raise SystemExit(f"generate.py wrote nothing after its prime: {seen!r}")
            seen += chunk
        elapsed = time.perf_counter() - start
        child.kill()
    return elapsed


def speeds(model, vocab, length: int, batch: int, repeats: int) -> dict[str, float]:
    """Floor and charrnn, one stream and `batch` streams, interleaved; the best of `repeats` each."""
    measures = {
        "floor_single_stream_chars_per_sec": lambda: floor_chars_per_sec(model.config, 1),
        "single_stream_chars_per_sec": lambda: charrnn_chars_per_sec(model, vocab, length, 1),
        f"floor_batch{batch}_chars_per_sec": lambda: floor_chars_per_sec(model.config, batch),
        f"batch{batch}_chars_per_sec": lambda: charrnn_chars_per_sec(
            model, vocab, max(1, length // batch) * 4, batch),
    }
    runs = {name: [] for name in measures}
    for _ in range(repeats):
        for name, measure in measures.items():
            runs[name].append(measure())
    return {name: max(values) for name, values in runs.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a checkpoint to sample from (default: the default model, one step trained)")
    p.add_argument("--length", type=int, default=20_000, help="characters per timing (default 20000)")
    p.add_argument("--batch", type=int, default=32, help="samples at once for the batch row (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="timings of each kind: the best (median for the "
                   "naive loop and the time to first character) is shown")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.checkpoint) if args.checkpoint else one_step_checkpoint(Path(tmp))
        model, vocab = checkpoint.build_model(checkpoint.load(path))
        c = model.config
        print(f"model {c.model} {c.num_layers}x{c.rnn_size}, vocabulary {c.vocab_size}, torch {torch.__version__} "
              f"({torch.get_num_threads()} threads), numpy {np.__version__} "
              f"(OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, {os.cpu_count()} cores)")

        def median(measure) -> float:
            return statistics.median(measure() for _ in range(args.repeats))

        results = speeds(model, vocab, args.length, args.batch, args.repeats)
        # through the command, beside the floor again: the floor moves with the machine between measures
        for streams, length, key in ((1, args.length, "single_stream"),
                                     (args.batch, max(1, args.length // 2), f"batch{args.batch}")):
            runs = [(floor_chars_per_sec(c, streams), command_chars_per_sec(path, length, streams))
                    for _ in range(args.repeats)]
            results[f"command_{key}_x_floor"] = statistics.median(floor / command for floor, command in runs)
            results[f"command_{key}_chars_per_sec"] = statistics.median(command for _, command in runs)
        results["naive_single_stream_chars_per_sec"] = median(lambda: naive_chars_per_sec(model, vocab, args.length // 50))
        results["time_to_first_char_s"] = median(lambda: time_to_first_char(path))
    one, many = results["single_stream_chars_per_sec"], results[f"batch{args.batch}_chars_per_sec"]
    floor_one, floor_many = results["floor_single_stream_chars_per_sec"], results[f"floor_batch{args.batch}_chars_per_sec"]
    results["single_stream_x_floor"] = floor_one / one  # time per character over the floor's
    results[f"batch{args.batch}_x_floor"] = floor_many / many
    rows = [("floor (the big products alone), one stream", f"{floor_one:,.0f} chars/s"),
            ("charrnn, one stream", f"{one:,.0f} chars/s ({floor_one / one:.2f}x the floor's time)"),
            (f"floor, {args.batch} streams (total)", f"{floor_many:,.0f} chars/s"),
            (f"charrnn, --num-samples {args.batch} (total)",
             f"{many:,.0f} chars/s ({floor_many / many:.2f}x the floor's time)"),
            ("generate.py in a terminal, one stream", f"{results['command_single_stream_chars_per_sec']:,.0f} "
             f"chars/s ({results['command_single_stream_x_floor']:.2f}x the floor's time)"),
            (f"generate.py in a terminal, --num-samples {args.batch} (total)",
             f"{results[f'command_batch{args.batch}_chars_per_sec']:,.0f} chars/s "
             f"({results[f'command_batch{args.batch}_x_floor']:.2f}x the floor's time)"),
            ("naive nn.LSTM loop, one stream", f"{results['naive_single_stream_chars_per_sec']:,.0f} chars/s"),
            ("generate.py time to first character", f"{results['time_to_first_char_s']:.2f} s")]
    print("\n| measure | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))


if __name__ == "__main__":
    main()
