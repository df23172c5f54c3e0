"""What the benchmarks (and tests) share: the benchmark corpus, a generated text, a trainer built
from its parts, and headless Chromium."""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from charrnn.config import TrainConfig
from charrnn.data import StreamBatches
from charrnn.model import CharRNN
from charrnn.runs import RunDir
from charrnn.trainer import Trainer
from charrnn.vocab import Vocab

REPO = Path(__file__).resolve().parent.parent
SHAKESPEARE = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")  # Debian's packages
# Headless, and nothing that reaches for the network (this machine has none to reach).
BROWSER_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")


def cpu_name() -> str:
    """The CPU's model name, as lscpu gives it: every benchmark row names its machine."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def make_text(n_chars: int = 20_000) -> str:
    """A repetitive but not trivial English-like text, built deterministically."""
    words = ("the quick brown fox jumps over the lazy dog and then it rests in the warm sun "
             "while a small bird sings a song of summer days").split()
    out, i, size = [], 0, 0
    while size < n_chars:
        out.append(words[(i * 7 + i // 3) % len(words)] + (".\n" if i % 11 == 10 else " "))
        size, i = size + len(out[-1]), i + 1
    return "".join(out)[:n_chars]


def make_cjk_text(n_chars: int = 22_450, seed: int = 0) -> str:
    """A Chinese-like text of made-up words (1-3 CJK characters, Zipf-distributed) in sentences:
    a large vocabulary and little text, the corpus on which a model overfits within a few passes."""
    rng = np.random.default_rng(seed)
    chars = [chr(0x4E00 + 13 * i) for i in range(1500)]  # within CJK Unified Ideographs
    words = ["".join(rng.choice(chars, rng.integers(1, 4))) for _ in range(800)]
    weights = 1 / np.arange(1, len(words) + 1)
    out, size = [], 0
    while size < n_chars:
        sentence = "".join(rng.choice(words, rng.integers(4, 14), p=weights / weights.sum()))
        out.append(sentence + ("。\n" if rng.random() < 0.3 else "，"))
        size += len(out[-1])
    return "".join(out)[:n_chars]

def start_browser(profile: Path, *extra_flags: str, console_log: bool = False):
    """Debian's Chromium under selenium, with a fresh profile; nothing is downloaded."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*BROWSER_FLAGS, *extra_flags, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    if console_log:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def trainer_from_parts(config: TrainConfig, vocab_size: int = 65, n_chars: int = 1_000_000) -> Trainer:
    """A Trainer on random text of `vocab_size` characters: times a step without loading a corpus."""
    tokens = np.random.default_rng(0).integers(0, vocab_size, n_chars).astype(np.uint8)
    vocab = Vocab([chr(33 + i) for i in range(vocab_size)])
    model = CharRNN(replace(config.model, vocab_size=vocab_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.99))
    batches = StreamBatches(tokens, config.batch_size, config.seq_length)
    return Trainer(config, model, optimizer, batches, tokens[:10_000], vocab, RunDir(Path("."), writes=False))


# Made-up surnames by language, for the tests of items and labels (no third-party list needed).
SYLLABLES = {"Russian": ["ov", "ev", "in", "sky", "ko", "va", "ich", "mir"],
             "German": ["berg", "mann", "stein", "hof", "er", "lich", "bach"],
             "Italian": ["ini", "elli", "etti", "ucci", "ano", "ari", "ola"]}


def make_names(label: str, n: int = 120, seed: int = 0) -> list[str]:
    """Distinct surnames from a label's syllables, sorted, as the PyTorch tutorial's files are."""
    rng, names = random.Random(f"{label}{seed}"), set()
    while len(names) < n:
        names.add("".join(rng.choice(SYLLABLES[label]) for _ in range(rng.randint(2, 3))).capitalize())
    return sorted(names)


def names_folder(root: Path) -> Path:
    """root/names/<Label>.txt, one surname a line: the tutorial's data/names layout."""
    folder = root / "names"
    folder.mkdir()
    for label in SYLLABLES:
        (folder / f"{label}.txt").write_text("\n".join(make_names(label)) + "\n", encoding="utf-8")
    return folder
