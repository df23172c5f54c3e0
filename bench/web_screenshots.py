"""Screenshots of the exported web page's three views, for the docs: docs/web-{write,score,neurons}.png.

Exports --checkpoint (a .pt file or run directory) to a temporary folder, opens it from disk in
headless Chromium and captures each view after it has done its work. For pictures worth showing,
train a small model first, e.g.:

    python train.py --corpus tinyshakespeare.txt --time-budget 2m --checkpoint-dir /tmp/webshots-run
    python bench/web_screenshots.py --checkpoint /tmp/webshots-run
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from charrnn import checkpoint
from charrnn.web import export_web
from common import REPO, start_browser

WIDTH = 1000
# Written for this script (not taken from any corpus): a short passage in the corpus's manner.
SCORE_TEXT = ("ROMEO:\nWhat light is this that breaks upon the wall?\nI would not speak, yet I must say my mind.\n\n"
              "JULIET:\nThen speak it, sir, and let the night be done.\n")


def wait_for(driver, script: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not driver.execute_script(f"return {script}"):
        if time.monotonic() > deadline:
            raise TimeoutError(script)
        time.sleep(0.1)


def open_page(driver, index: Path, **query) -> None:
    driver.get(f"{index.as_uri()}?{urlencode(query, quote_via=quote)}")
    wait_for(driver, "document.body.dataset.model === 'ready'")


def point_at(driver, selector: str, nth: int) -> None:
    """Select one shaded character, as a click would, so the candidates panel shows."""
    driver.execute_script("const s = document.querySelectorAll(arguments[0]); s[Math.min(arguments[1], s.length - 1)]"
                          ".click()", selector, nth)


def capture(driver, path: Path) -> None:
    """The whole page: grow the window to the document's height, then take the picture."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, height + 140)  # the window's frame is not part of the viewport
    driver.execute_script("window.scrollTo(0, 0); document.activeElement.blur()")
    time.sleep(0.3)
    driver.save_screenshot(str(path))
    driver.set_window_size(WIDTH, 900)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a .pt file or a run directory (its best.pt)")
    parser.add_argument("--out", default=str(REPO / "docs"), help="folder for the PNGs (default docs/)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint.load(checkpoint.resolve(args.checkpoint))
    with tempfile.TemporaryDirectory() as tmp:
        index = export_web(ckpt, Path(tmp) / "page")
        driver = start_browser(Path(tmp) / "profile", "--hide-scrollbars", "--force-device-scale-factor=1")
        driver.set_window_size(WIDTH, 900)
        try:
            open_page(driver, index, prime="ROMEO:\n", temperature=0.7, length=420, seed=3, run=1)
            wait_for(driver, "document.getElementById('output').dataset.state === 'done'")
            point_at(driver, "#output span[data-i]", 40)
            capture(driver, out / "web-write.png")

            open_page(driver, index, view="score")
            driver.execute_script("document.getElementById('score-text').value = arguments[0]", SCORE_TEXT)
            driver.find_element("id", "score-run").click()
            wait_for(driver, "document.getElementById('score-total').dataset.bpc")
            point_at(driver, "#score-output span[data-i]", 12)
            capture(driver, out / "web-score.png")

            open_page(driver, index, view="neurons")
            wait_for(driver, "document.getElementById('neuron-status').dataset.state === 'done'")
            driver.execute_script("document.querySelector('#top-units .feature:nth-child(3) button').click()")
            capture(driver, out / "web-neurons.png")
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
