"""The exported web page (headless Chromium) next to Python's sampler, for every size a budget picks.

For each model (the LSTMs of the size ladder and a GRU; 65 characters, embedding 64; random
weights, as speed does not depend on them), one stream at temperature 1, each figure the median
of --repeats runs:

- page: a generation in the page, as a click on Generate makes it (the page opened once, then
  --repeats clicks), through its WebAssembly step, drawing every shaded character as it comes;
- page sampler only: the page's own sample() loop with nothing drawn, WebAssembly step;
- page, plain JavaScript: the same loop through the fallback step (at most 500 characters: slow);
- Python: charrnn.sample.generate, the sampler behind generate.py, in the same run;
- the time the page's score view takes over 10,000 characters.

Then the export's size per dtype, and with --checkpoint (a trained model) how far the page's score
of --text lies from Python's for each dtype.

    python bench/web_speed.py --length 3000 --checkpoint checkpoints/tinyshakespeare/best.pt
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import torch

import charrnn
from charrnn.model import CharRNN, ModelConfig
from charrnn.sample import SampleConfig, generate
from charrnn.vocab import Vocab
from charrnn.web import DTYPES, export_web
from common import SHAKESPEARE, cpu_name, start_browser

PRIME = "ROMEO:\n"
CHARS = sorted(set("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))  # tinyshakespeare's 65
SHAPES = (("lstm", 2, 256), ("lstm", 2, 384), ("lstm", 2, 512), ("lstm", 3, 512), ("gru", 2, 256))
PLAIN_LENGTH = 500  # characters through the plain JavaScript step, 20x slower
SCORED_CHARS = 10_000


def wait(driver, script: str, timeout: float = 900):
    deadline = time.monotonic() + timeout
    while not (value := driver.execute_script(f"return {script}")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page did not finish: {script}")
        time.sleep(0.05)
    return value


def open_page(driver, index: Path, **query) -> None:
    driver.get(f"{index.as_uri()}?{urlencode(query, quote_via=quote)}")
    wait(driver, "document.body.dataset.model === 'ready'")


def page_chars_per_sec(driver, length: int) -> float:
    """A click on Generate in the open page; the page reports its own speed on #output."""
    driver.find_element("id", "generate").click()  # the page's state is "running" once this returns
    wait(driver, "document.getElementById('output').dataset.state === 'done'")
    return float(driver.execute_script("return document.getElementById('output').dataset.charsPerSec"))


def sampler_only_chars_per_sec(driver, length: int, step: str | None = None) -> float:
    """The page's sample() loop (model step, softmax, top five, draw) with no drawing; step as loadModel's."""
    return driver.execute_async_script("""
        const [length, prime, step, done] = arguments;
        (async () => {
            const model = await loadModel(window.CHARRNN_MODEL, step);
            const settings = {prime, temperature: 1, topK: null, topP: null, length, seed: 0};
            const start = performance.now();
            let n = 0;
            await sample(model, settings, {stopped: false}, () => { n++; });
            done(n / ((performance.now() - start) / 1000));
        })();
    """, length, PRIME, step)


def page_score(driver, index: Path, text: str) -> tuple[float, float]:
    """The score view over `text`: (bits per character, seconds it took)."""
    open_page(driver, index, view="score")
    driver.execute_script("document.getElementById('score-text').value = arguments[0]", text)
    start = time.perf_counter()
    driver.find_element("id", "score-run").click()
    bpc = float(wait(driver, "document.getElementById('score-total').dataset.bpc"))
    return bpc, time.perf_counter() - start


def python_chars_per_sec(model, vocab, length: int) -> float:
    start = time.perf_counter()
    texts, _ = generate(model, vocab, SampleConfig(length=length, temperature=1.0, seed=0), PRIME)
    return len(texts[0]) / (time.perf_counter() - start)


def median(measure, repeats: int) -> float:
    return statistics.median(measure() for _ in range(repeats))


def speed_row(root: Path, shape: tuple, args) -> list[str]:
    """Speeds of one model's page and of Python's sampler, and the page's time to score 10,000 characters.
    Each model gets a fresh browser, as a user opening its page would, so that no model's figures
    depend on the pages run before it in the same browser."""
    driver = start_browser(root / f"profile-{'x'.join(map(str, shape))}")
    try:
        return speed_figures(driver, root, shape, args)
    finally:
        driver.quit()


def speed_figures(driver, root: Path, shape: tuple, args) -> list[str]:
    cell, layers, size = shape
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=len(CHARS), model=cell, rnn_size=size, num_layers=layers, embedding_size=64)
    model = CharRNN(config).eval()
    ckpt = {"vocab": CHARS, "model_config": dataclasses.asdict(config), "model": model.state_dict()}
    index = export_web(ckpt, root / f"{cell}{layers}x{size}")
    open_page(driver, index, prime=PRIME, temperature=1, length=args.length, seed=0)
    page = median(lambda: page_chars_per_sec(driver, args.length), args.repeats)
    only = median(lambda: sampler_only_chars_per_sec(driver, args.length), args.repeats)
    plain = median(lambda: sampler_only_chars_per_sec(driver, min(args.length, PLAIN_LENGTH), "js"), args.repeats)
    scored = "".join(generate(model, Vocab(CHARS), SampleConfig(length=SCORED_CHARS, seed=1), "")[0])
    score_seconds = median(lambda: page_score(driver, index, scored)[1], args.repeats)
    vocab = Vocab(CHARS)
    python_chars_per_sec(model, vocab, 100)  # warm-up: first-call costs are not sampling speed
    python = median(lambda: python_chars_per_sec(model, vocab, args.length), args.repeats)
    return [f"{cell} {layers}x{size}", f"{page:,.0f}", f"{only:,.0f}", f"{plain:,.0f}", f"{python:,.0f}",
            f"{page / python:.2f}", f"{score_seconds:.1f} s"]


def size_row(root: Path, shape: tuple) -> list[str]:
    """model.js's size in MB for each dtype."""
    cell, layers, size = shape
    config = ModelConfig(vocab_size=len(CHARS), model=cell, rnn_size=size, num_layers=layers, embedding_size=64)
    ckpt = {"vocab": CHARS, "model_config": dataclasses.asdict(config), "model": CharRNN(config).state_dict()}
    return [f"{(export_web(ckpt, root / f'size-{dtype}', dtype=dtype).parent / 'model.js').stat().st_size / 1e6:.2f}"
            for dtype in DTYPES]


def score_rows(driver, root: Path, checkpoint: Path, text: str) -> list[list[str]]:
    """Python's score of `text` and the page's for each dtype."""
    model = charrnn.load(checkpoint)
    python_bpc = model.score(text).bits
    rows = [["Python (generate.py --score)", f"{python_bpc:.4f}", ""]]
    for dtype in DTYPES:
        bpc, _ = page_score(driver, model.export_web(root / f"score-{dtype}", dtype=dtype), text)
        rows.append([f"page, {dtype}", f"{bpc:.4f}", f"{bpc - python_bpc:+.4f}"])
    return rows


def table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=3000, help="characters per run (default 3000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is shown (default 3)")
    parser.add_argument("--models", default=",".join(f"{c}{n}x{h}" for c, n, h in SHAPES),
                        help="which models, e.g. lstm2x256,gru2x256 (default: all)")
    parser.add_argument("--busy", action="store_true", help="measure beside one busy process (while True: pass)")
    parser.add_argument("--checkpoint", type=Path, help="a trained model: adds the score difference per dtype")
    parser.add_argument("--text", type=Path, default=SHAKESPEARE,
                        help=f"the last {SCORED_CHARS:,} characters of this file are scored (default tinyshakespeare)")
    args = parser.parse_args()

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        driver = start_browser(root / "profile")
        try:
            browser = driver.capabilities.get("browserVersion", "?")
            shapes = [shape for shape in SHAPES if "{}{}x{}".format(*shape) in args.models.split(",")]
            speeds = [speed_row(root, shape, args) for shape in shapes]
            sizes = [[f"{cell} {layers}x{size}", *size_row(root, (cell, layers, size))] for cell, layers, size in shapes]
            scores = (score_rows(driver, root, args.checkpoint, args.text.read_text()[-SCORED_CHARS:])
                      if args.checkpoint else None)
        finally:
            driver.quit()
            if busy:
                busy.kill()

    print(f"one stream, temperature 1, {args.length} characters, median of {args.repeats}; vocabulary {len(CHARS)}, "
          f"embedding 64, random weights" + ("; beside one busy process" if args.busy else ""))
    print(f"CPU: {cpu_name()}; Chromium {browser} (headless); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    table(["model", "page chars/s", "page sampler only", f"plain JS sampler ({PLAIN_LENGTH} chars)",
           "Python chars/s", "page / Python", f"page: score {SCORED_CHARS:,} chars"], speeds)
    table(["model", *(f"model.js MB, {dtype}" for dtype in DTYPES)], sizes)
    if scores:
        print(f"score of the last {SCORED_CHARS:,} characters of {args.text.name}, model {args.checkpoint}:\n")
        table(["scorer", "bits/char", "minus Python's"], scores)


if __name__ == "__main__":
    main()
