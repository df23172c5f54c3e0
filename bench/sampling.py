"""Sampling speed: characters per second for one stream and for a batch, and time to first character.

Uses --checkpoint if given; otherwise trains the default model for one step on the benchmark
corpus (speed does not depend on what the weights are). Beside charrnn it times the naive loop a
user would write first: one nn.LSTM call and one torch.multinomial per character. The time to
first character runs `generate.py` in a child process and reads its output until the first
generated character arrives: interpreter start-up, imports, checkpoint load and the prime. Example:

    python bench/sampling.py --length 20000
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from charrnn import checkpoint  # noqa: E402
from charrnn.sample import SampleConfig, generate, make_generator  # noqa: E402

SHAKESPEARE = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"
PRIME = "ROMEO:\n"


def one_step_checkpoint(folder: Path) -> Path:
    corpus = str(SHAKESPEARE) if SHAKESPEARE.exists() else "stdlib"
    subprocess.run([sys.executable, str(REPO / "train.py"), "--corpus", corpus, "--max-steps", "1",
                    "--checkpoint-dir", str(folder)], check=True, stdout=subprocess.DEVNULL)
    return folder / "last.pt"


def charrnn_chars_per_sec(model, vocab, length: int, num_samples: int) -> float:
    config = SampleConfig(length=length, temperature=1.0)
    start = time.perf_counter()
    texts, _ = generate(model, vocab, config, PRIME, num_samples=num_samples, generator=make_generator(0))
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a checkpoint to sample from (default: the default model, one step trained)")
    p.add_argument("--length", type=int, default=20_000, help="characters per timing (default 20000)")
    p.add_argument("--batch", type=int, default=32, help="samples at once for the batch row (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="timings of each kind; the median is shown")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.checkpoint) if args.checkpoint else one_step_checkpoint(Path(tmp))
        model, vocab = checkpoint.build_model(checkpoint.load(path))
        c = model.config
        print(f"model {c.model} {c.num_layers}x{c.rnn_size}, vocabulary {c.vocab_size}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")

        def median(measure) -> float:
            return statistics.median(measure() for _ in range(args.repeats))

        results = {
            "single_stream_chars_per_sec": median(lambda: charrnn_chars_per_sec(model, vocab, args.length, 1)),
            f"batch{args.batch}_chars_per_sec": median(
                lambda: charrnn_chars_per_sec(model, vocab, max(1, args.length // args.batch) * 4, args.batch)),
            "naive_single_stream_chars_per_sec": median(lambda: naive_chars_per_sec(model, vocab, args.length // 10)),
            "time_to_first_char_s": median(lambda: time_to_first_char(path)),
        }
    rows = [("charrnn, one stream", f"{results['single_stream_chars_per_sec']:,.0f} chars/s"),
            (f"charrnn, --num-samples {args.batch} (total)", f"{results[f'batch{args.batch}_chars_per_sec']:,.0f} chars/s"),
            ("naive nn.LSTM loop, one stream", f"{results['naive_single_stream_chars_per_sec']:,.0f} chars/s"),
            ("generate.py time to first character", f"{results['time_to_first_char_s']:.2f} s")]
    print("\n| measure | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))


if __name__ == "__main__":
    main()
