"""Sampling speed of the exported web page (headless Chromium) next to Python's sampler.

One stream of the default model (2x256 LSTM, embedding 64, 65 characters; random weights, as speed
does not depend on them), temperature 1. Three figures, each the median of --repeats runs:

- page: a full generation in the page (run=1), drawing every shaded character as it comes;
- page sampler only: the page's own sample() loop with nothing drawn;
- Python: charrnn.sample.generate, the sampler behind generate.py.

    python bench/web_speed.py --length 5000
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import torch

from charrnn.model import CharRNN, ModelConfig
from charrnn.sample import SampleConfig, generate
from charrnn.vocab import Vocab
from charrnn.web import export_web
from common import start_browser

PRIME = "ROMEO:\n"
CHARS = sorted(set("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))  # tinyshakespeare's 65


def page_chars_per_sec(driver, index: Path, length: int) -> float:
    """A generation with run=1; the page reports its own speed on #output."""
    query = urlencode({"prime": PRIME, "temperature": 1, "length": length, "seed": 0, "run": 1}, quote_via=quote)
    driver.get(f"{index.as_uri()}?{query}")
    deadline = time.monotonic() + 600
    while driver.execute_script("return document.getElementById('output').dataset.state") != "done":
        if time.monotonic() > deadline:
            raise TimeoutError("the page did not finish")
        time.sleep(0.05)
    return float(driver.execute_script("return document.getElementById('output').dataset.charsPerSec"))


def sampler_only_chars_per_sec(driver, length: int) -> float:
    """The page's sample() loop (model step, softmax, top five, draw) with no drawing."""
    return driver.execute_async_script("""
        const [length, prime, done] = arguments;
        (async () => {
            const model = await loadModel(window.CHARRNN_MODEL);
            const settings = {prime, temperature: 1, topK: null, topP: null, length, seed: 0};
            const start = performance.now();
            let n = 0;
            await sample(model, settings, {stopped: false}, () => { n++; });
            done(n / ((performance.now() - start) / 1000));
        })();
    """, length, PRIME)


def python_chars_per_sec(model, vocab, length: int) -> float:
    start = time.perf_counter()
    texts, _ = generate(model, vocab, SampleConfig(length=length, temperature=1.0, seed=0), PRIME)
    return len(texts[0]) / (time.perf_counter() - start)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=5000, help="characters per run (default 5000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is shown (default 3)")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=len(CHARS), model="lstm", rnn_size=256, num_layers=2, embedding_size=64)
    model = CharRNN(config).eval()
    ckpt = {"vocab": CHARS, "model_config": dataclasses.asdict(config), "model": model.state_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        index = export_web(ckpt, Path(tmp) / "page")
        driver = start_browser(Path(tmp) / "profile")
        try:
            page = [page_chars_per_sec(driver, index, args.length) for _ in range(args.repeats)]
            only = [sampler_only_chars_per_sec(driver, args.length) for _ in range(args.repeats)]
            browser = driver.capabilities.get("browserVersion", "?")
        finally:
            driver.quit()
    vocab = Vocab(CHARS)
    python_chars_per_sec(model, vocab, 100)  # warm-up: first-call costs are not sampling speed
    python = [python_chars_per_sec(model, vocab, args.length) for _ in range(args.repeats)]

    print(f"default model: lstm 2x256, embedding 64, vocabulary {len(CHARS)}, {model.num_parameters():,} parameters; "
          f"one stream, temperature 1, {args.length} characters, median of {args.repeats}")
    print(f"CPU: {cpu_name()}; Chromium {browser} (headless); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print(f"| {'sampler':<40} | {'chars/s':>8} |")
    print(f"|{'-' * 42}|{'-' * 10}|")
    for name, runs in (("web page, text drawn as it comes", page), ("web page, sampler only (no drawing)", only),
                       ("Python (charrnn.sample.generate)", python)):
        print(f"| {name:<40} | {statistics.median(runs):>8,.0f} |")


if __name__ == "__main__":
    main()
