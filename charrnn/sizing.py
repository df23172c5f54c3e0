"""The model a time budget affords: the largest of a measured ladder of sizes that still makes
enough passes over the corpus in the budget, timed on this machine before training starts.

Why: on a fixed budget a small model wins when it can see the text few times, and loses once it
has seen it often enough to overfit (a 2x256 LSTM stops improving on tinyshakespeare after about
ten passes, bench/RESULTS.md). How many passes a budget buys depends on the machine (2-3x between
CPU generations, up to 1.8x more where the CPU has bf16 instructions) and on the corpus, so the
choice is made from a measured speed, not from the budget alone. When even the chosen shape would
see the text many times (a small corpus, or a long budget), the run adds DropConnect and averaged
weights (config.REGULARISATION), which let it keep improving where it would overfit.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import replace

import torch

from charrnn.config import (COPY_MAX_PASSES, COPY_MEMORY, COPY_MIN_STEPS, COPY_REGULARISATION, MIN_PASSES,
                            MIN_STEPS, REGULARISATION, SIZE_LADDER, ModelConfig, TrainConfig)
from charrnn.distributed import World, sum_all
from charrnn.model import CharRNN

# A guard, not a measurement: a rung is only considered where it has at most this many parameters
# per training character, so a small corpus keeps the first rung whatever the budget. The largest
# shape measured to gain, an hour's 3x768 on tinyshakespeare, has 12.0; where the copy attention may
# be added its layer counts too, and an hour's 3x512 with it (5.8 a character) gained over a 2x512.
MAX_PARAMETERS_PER_CHAR = 12.5
SHAPE_OPTIONS = {"rnn_size", "num_layers", "dropout"}


def wanted(config: TrainConfig, given: dict | None) -> bool:
    """Whether a new run is sized: only on a time budget alone, when the options the user `given`
    are known and name no shape (a whole ModelConfig from Python counts as naming it)."""
    return (given is not None and bool(config.time_budget) and not (config.max_steps or config.max_epochs)
            and not SHAPE_OPTIONS & set(given) and not isinstance(given.get("model"), ModelConfig))


def chars_per_second(config: TrainConfig, vocab_size: int, device: torch.device,
                     amp: torch.dtype | None, steps: int = 3) -> float:
    """Training speed of a fresh model of this config: the median of a few full steps on random text."""
    model = CharRNN(replace(config.model, vocab_size=vocab_size)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(vocab_size, (config.batch_size, config.seq_length + 1), device=device)
    times = []
    for _ in range(steps + 1):  # the first step pays for allocation and kernel choice
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logp, _ = model(x[:, :-1])
        loss = torch.nn.functional.nll_loss(logp.flatten(0, 1), x[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type in ("cuda", "mps"):  # their kernels run asynchronously
            getattr(torch, device.type).synchronize()
        times.append(time.perf_counter() - start)
    return config.batch_size * config.seq_length / statistics.median(times[1:])


def size_for_budget(config: TrainConfig, train_chars: int, vocab_size: int, device: torch.device,
                    amp: torch.dtype | None, world: World = World(), regularise: bool = True,
                    copy: bool = False) -> tuple[TrainConfig, str]:
    """The config with the largest affordable shape of SIZE_LADDER, and a line saying why. With
    `copy`, the shape gets the copy attention where the budget buys it COPY_MIN_STEPS steps and
    at most COPY_MAX_PASSES passes with it. With `regularise`, a shape that the budget gives enough
    passes to overfit also gets REGULARISATION's options for that many passes (COPY_REGULARISATION's
    with the copy)."""

    def measure(candidate: TrainConfig) -> tuple[float, float]:
        """Passes over the text and steps that the budget buys `candidate` on this machine."""
        # every rank trains its own rows: the run's speed is the ranks' sum, the same on every rank,
        # so that all of them stop at the same shape
        speed = sum_all(world, [chars_per_second(candidate, vocab_size, device, amp)], device)[0]
        return (speed * config.time_budget / train_chars,
                speed * config.time_budget / (config.batch_size * config.seq_length * world.size))

    start, chosen, passes, timed = time.perf_counter(), config, 0.0, []
    enough = f"{MIN_PASSES:g} passes over the text and {MIN_STEPS:,} steps in the budget on this machine"
    limit = f"no larger size makes {enough}"
    for rung, (layers, size, dropout) in enumerate(SIZE_LADDER):
        candidate = config.with_options(num_layers=layers, rnn_size=size, dropout=dropout)
        counted = candidate.with_options(copy_memory=COPY_MEMORY) if copy else candidate  # the copy layer's too
        if rung and parameters(counted, vocab_size) > MAX_PARAMETERS_PER_CHAR * train_chars:
            limit = (f"the largest size for {train_chars:,} characters of text, at most "
                     f"{MAX_PARAMETERS_PER_CHAR:g} parameters a character")
            break
        affordable, steps = measure(candidate)
        timed.append(f"{layers}x{size} {affordable:.1f} ({steps:,.0f} steps)")
        if rung and (affordable < MIN_PASSES or steps < MIN_STEPS):
            break
        if rung:
            limit = f"the largest size that makes {enough}"
        chosen, passes = candidate, affordable
    copied = ""
    if copy:
        with_copy = chosen.with_options(copy_memory=COPY_MEMORY)
        copy_passes, copy_steps = measure(with_copy)
        if copy_steps >= COPY_MIN_STEPS and copy_passes <= COPY_MAX_PASSES:
            chosen, passes = with_copy, copy_passes
            copied = (f"; with a copy attention over {COPY_MEMORY:,} characters, {copy_passes:.1f} passes in "
                      f"{copy_steps:,.0f} steps")
        else:
            copied = (f"; no copy attention: it would make {copy_steps:,.0f} steps and {copy_passes:.1f} passes, "
                      f"where it needs {COPY_MIN_STEPS:,} steps and at most {COPY_MAX_PASSES:g} passes")
    m = chosen.model
    why = (f"model {m.num_layers}x{m.rnn_size}, dropout {m.dropout}: {limit} (measured in "
           f"{time.perf_counter() - start:.0f} s, passes: {', '.join(timed)}){copied}; --rnn-size, --num-layers, "
           "--dropout or --copy-memory choose it yourself")
    table = COPY_REGULARISATION if m.copy_memory else REGULARISATION
    added = next((options for least, options in table if passes >= least), None)
    if regularise and added:
        chosen = chosen.with_options(**added)
        flags = [f"--{name.replace('_', '-')} {value}" for name, value in added.items()]
        why += f". {passes:.0f} passes would overfit it: {', '.join(flags[:-1])} and {flags[-1]} added"
    return chosen, why


def parameters(config: TrainConfig, vocab_size: int) -> int:
    """The parameter count of a model of this config (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        return CharRNN(replace(config.model, vocab_size=vocab_size)).num_parameters()
