"""Training throughput: charrnn's trainer against the plain loop, a few model sizes, fp32 and bf16.

For each size, with the plain loop's batch (64 x 128) and no dropout, charrnn's
Trainer.train_step (batches, schedule, forward, backward, clipping, AdamW, state carry) and
bench/baseline.py's plain loop take turns, --repeats blocks of --steps
steps each after a warm-up, so that drift in the machine's speed hits both alike; the median
block is shown. GFLOP/s counts 6 FLOPs per weight per character for the matrix products
(forward 2, backward 4), beside the measured peak of a large matrix multiply. Example:

    python bench/throughput.py
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from baseline import PlainLoop, parser as baseline_parser
from charrnn.config import TrainConfig
from charrnn.device import cpu_has_bf16
from common import trainer_from_parts

SIZES = [(2, 128), (2, 256), (2, 512), (3, 256)]  # (layers, width)


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of the best of `repeats` n x n matrix products."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def flops_per_char(model: torch.nn.Module) -> int:
    """6 x the weights that take part in matrix products (not the lookup table, not biases)."""
    return 6 * sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "embed" not in name)


def chars_per_sec(step, chars_per_step: int, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * chars_per_step / (time.perf_counter() - start)


def measure(layers: int, width: int, bf16: bool, args) -> dict:
    base_args = baseline_parser().parse_args(["--rnn-size", str(width), "--num-layers", str(layers)]
                                             + (["--bf16"] if bf16 else []))
    # the same work on both sides: the plain loop's batch shape, no dropout
    config = TrainConfig.from_options(rnn_size=width, num_layers=layers, seq_length=base_args.seq_length,
                                      batch_size=base_args.batch_size, dropout=0.0)
    trainer = trainer_from_parts(config)  # random text: a step costs the same whatever the characters
    trainer.amp = torch.bfloat16 if bf16 else None
    plain = PlainLoop(trainer.batches.tokens, len(trainer.vocab), base_args)
    for _ in range(args.warmup):  # the plain loop first: where bf16 fails, it fails here, saying why
        plain.step()
    for _ in range(args.warmup):
        trainer.train_step()
    chars = config.batch_size * config.seq_length
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(chars_per_sec(trainer.train_step, chars, args.steps))
        theirs.append(chars_per_sec(plain.step, chars, args.steps))
    flops = flops_per_char(trainer.model)
    ours, theirs = statistics.median(ours), statistics.median(theirs)
    return {"size": f"{layers}x{width}", "dtype": "bf16" if bf16 else "fp32", "charrnn_chars_per_sec": round(ours),
            "baseline_chars_per_sec": round(theirs), "ratio": round(ours / theirs, 3),
            "charrnn_gflops": round(ours * flops / 1e9, 1), "baseline_gflops": round(theirs * flops / 1e9, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="steps per timed block (default 8)")
    p.add_argument("--repeats", type=int, default=3, help="timed blocks per trainer (default 3)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--sizes", default=",".join(f"{l}x{w}" for l, w in SIZES), help="layers x width, comma-separated")
    args = p.parse_args()
    # without bf16 instructions a bf16 product is emulated, about 100x slower: measure a small one
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16, 2048 if cpu_has_bf16() else 512, 2)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, matmul peak fp32 {peaks['fp32']:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16']:.0f} GFLOP/s")
    rows = []
    print("\n| size | dtype | charrnn chars/s | baseline chars/s | charrnn / baseline | charrnn GFLOP/s "
          "(% of matmul peak) | baseline GFLOP/s |\n| --- | --- | --- | --- | --- | --- | --- |")
    for size in args.sizes.split(","):
        layers, width = map(int, size.split("x"))
        for bf16 in (False, True):
            if bf16 and not cpu_has_bf16():
                print(f"| {size} | bf16 | not run: this CPU has no bf16 instructions (AVX512-BF16 or AMX) | | | | |")
                rows.append({"size": size, "dtype": "bf16", "error": "no bf16 instructions"})
                continue
            try:
                row = measure(layers, width, bf16, args)
            except Exception as e:  # bf16 is refused or unsupported where the CPU lacks it
                row = {"size": size, "dtype": "bf16" if bf16 else "fp32", "error": str(e).splitlines()[0][:150]}
            rows.append(row)
            if "error" in row:
                print(f"| {size} | {row['dtype']} | not run: {row['error']} | | | | |", flush=True)
                continue
            peak = peaks[row["dtype"]]
            print(f"| {size} | {row['dtype']} | {row['charrnn_chars_per_sec']:,} | {row['baseline_chars_per_sec']:,} | "
                  f"{row['ratio']:.3f} | {row['charrnn_gflops']} ({100 * row['charrnn_gflops'] / peak:.0f}%) | "
                  f"{row['baseline_gflops']} |", flush=True)
    print(json.dumps({"matmul_peak_gflops": {k: round(v) for k, v in peaks.items()}, "rows": rows}))


if __name__ == "__main__":
    main()
