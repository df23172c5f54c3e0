"""Where the model runs: device choice, autocast dtype, CPU threads."""
from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

from charrnn.config import DTYPES
from charrnn.errors import CharRNNError


def pick_device(name: str = "auto") -> torch.device:
    """auto: cuda, then mps, then cpu. Asking for one that is absent is an error, not a fallback."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        return torch.device(next(d for d, ok in available.items() if ok))
    if name not in available:
        raise CharRNNError(f"unknown --device {name!r}; choose auto, cpu, cuda or mps")
    if not available[name]:
        raise CharRNNError(f"--device {name} is not available on this machine; use --device cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype | None:
    """The lower precision to autocast to, or None for plain fp32.

    auto picks bf16 on CUDA and on CPUs where oneDNN runs it natively (AVX512-BF16 or AMX): there
    a 2x256 LSTM trains up to 1.8x faster and its loss per step matches fp32's (bench/RESULTS.md).
    Elsewhere bf16 is emulated, far slower than fp32, and refused. Weights, optimizer and loss
    stay fp32 either way.
    """
    if dtype not in DTYPES:
        raise CharRNNError(f"unknown --dtype {dtype!r}; choose auto, float32 or bfloat16")
    if dtype == "float32":
        return None
    native = (device.type == "cuda" and torch.cuda.is_bf16_supported()) or (device.type == "cpu" and cpu_has_bf16())
    if dtype == "bfloat16" and not native:
        raise CharRNNError("--dtype bfloat16 needs a CUDA GPU with bf16 support or a CPU with bf16 "
                           "instructions (AVX512-BF16 or AMX); use --dtype float32")
    return torch.bfloat16 if native else None


def cpu_has_bf16() -> bool:
    """True where oneDNN runs bf16 natively on this CPU (the check PyTorch's own RNN code makes)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def set_threads(threads: int | None, processes_per_machine: int = 1) -> int:
    """Use every core by default, shared evenly between the processes on this machine."""
    n = threads or max(1, (os.cpu_count() or 1) // processes_per_machine)
    torch.set_num_threads(n)
    return n


class ThreadGovernor:
    """Keeps torch's thread count at the cores other processes leave free, re-read every few seconds.

    Why: torch's OpenMP threads meet at a barrier after every operation. With a busy neighbour on
    a 2-core machine, one of two threads is often descheduled and the other waits for it, so two
    threads train at about half the speed of one. Others' load is what /proc/stat says the
    machine did, minus what this process did (os.times), over the last interval. Niced work is not
    counted (it yields to us). The thread count can change a small model's results in the last
    bits, so only runs that already follow the clock (a --time-budget) are governed; a run to
    --max-steps or --max-epochs keeps its threads and stays exactly reproducible.
    """

    def __init__(self, most: int, interval: float = 2.0, apply: Callable[[int], object] = torch.set_num_threads,
                 start: int | None = None):
        self.most, self.interval, self.apply = most, interval, apply  # apply(n): use n threads
        self.threads = start or most  # what the caller set before the first look
        self._last = self._reading()
        self._due = 0.0 if self._last is None else self._last[0] + interval  # when to look next

    @staticmethod
    def _reading() -> tuple[float, float, float] | None:
        """(wall seconds, CPU seconds busy on the whole machine, CPU seconds of this process)."""
        try:
            with open("/proc/stat") as f:
                ticks = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None  # not Linux: keep every core
        user, _nice, system, _idle, _iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
        own = os.times()
        return (time.monotonic(), (user + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"),
                own.user + own.system)

    def restart(self, look_after: float) -> None:
        """Begin a new interval, keeping the thread count, and look after `look_after` seconds:
        what the machine did before now is not counted."""
        self._last = self._reading()
        if self._last is not None:
            self._due = self._last[0] + look_after

    def __call__(self, *_) -> None:
        """Cheap when called every step: re-decides once per interval."""
        if self._last is None or time.monotonic() < self._due:
            return
        now = self._reading()
        wall, busy, own = (b - a for a, b in zip(self._last, now))
        self._last, self._due = now, now[0] + self.interval
        others = max(0.0, (busy - own) / wall)
        free = self.most - others
        # a band of +-0.15 around the halfway mark, so that a neighbour at 50% does not flip us
        if free < self.threads - 0.65 or free > self.threads + 0.65:
            self.threads = max(1, min(self.most, round(free)))
            self.apply(self.threads)
