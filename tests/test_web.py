"""The web export (charrnn.web) in real headless Chromium: the page must compute what Python does.

One browser serves the whole module. Models are tiny (2x32) and trained a few dozen steps here, so
their greedy text is not a flat tie-break between near-equal characters.
"""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
import torch
import torch.nn.functional as F

from charrnn import checkpoint
from charrnn.errors import CharRNNError
from charrnn.model import CharRNN, ModelConfig
from charrnn.web import export_web
from common import CHROMEDRIVER, CHROMIUM, SYLLABLES, make_names, names_folder, start_browser

REPO = Path(__file__).resolve().parent.parent
INSTALL = "apt-get install -y chromium chromium-driver && pip install selenium"
try:
    from selenium.webdriver.common.keys import Keys
except ImportError:  # pragma: no cover
    Keys = None
if Keys is None or not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(f"the web tests need Chromium, chromedriver and selenium: {INSTALL}", allow_module_level=True)

TEXT = ('the quick brown fox (a "red" one) jumps over the lazy dog.\n'
        'a small bird sings "a song" of summer (and rain) days.\n') * 40


def make_checkpoint(cell: str, steps: int = 60, seed: int = 0, **sizes) -> dict:
    """A checkpoint dict of a small model trained `steps` steps on TEXT (a second or so)."""
    torch.manual_seed(seed)
    chars = sorted(set(TEXT))
    config = {"vocab_size": len(chars), "model": cell, "rnn_size": 32, "num_layers": 2, "embedding_size": 16,
              "dropout": 0.0, **sizes}
    model = CharRNN(ModelConfig(**config))
    data = torch.tensor([chars.index(c) for c in TEXT])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 33, (16,)).tolist()
        x = torch.stack([data[s:s + 32] for s in starts])
        y = torch.stack([data[s + 1:s + 33] for s in starts])
        loss = F.nll_loss(model(x)[0].flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {"vocab": chars, "model_config": config, "model": model.state_dict(),
            "corpus": {"name": "toy", "length": len(TEXT)},
            "progress": {"step": steps, "elapsed": 1.0, "best_val_loss": loss.item()}}


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir())


def generate_py(ckpt_path: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "generate.py", "--checkpoint", str(ckpt_path), "--threads", "1", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def torch_one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models, 2 busy cores
    yield
    torch.set_num_threads(previous)


# sizes that are not multiples of 4: every remainder path of the WebAssembly product
ODD_SIZES = {"rnn_size": 30, "embedding_size": 13}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, torch_one_thread):
    """name -> (checkpoint path, index.html path) of a small trained model, exported once in float32."""
    root = tmp_path_factory.mktemp("web")
    out = {}
    for name, cell, sizes in [("rnn", "rnn", {}), ("lstm", "lstm", {}), ("gru", "gru", {}), ("gru-odd", "gru", ODD_SIZES),
                              ("lstm-copy", "lstm", {"copy_memory": 24})]:
        ckpt = make_checkpoint(cell, **sizes)
        checkpoint.save(ckpt, root / f"{name}.pt")
        out[name] = (root / f"{name}.pt", export_web(ckpt, root / f"{name}-page", dtype="float32"))
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = start_browser(tmp_path_factory.mktemp("chromium-profile"), console_log=True)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 60):
    """Poll a JavaScript expression until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script}")
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {script}")


def open_page(driver, index: Path, **query) -> None:
    """Load the page from disk with these URL settings, wait for the model, and check the console
    and the step it runs: WebAssembly with relaxed SIMD (Chromium has it), unless step=simd forces
    the build without or step=js the plain JavaScript one."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(index.as_uri() + ("?" + urlencode(query, quote_via=quote) if query else ""))
    assert wait_for(driver, "document.body.dataset.model !== 'loading' && document.body.dataset.model") == "ready"
    assert driver.execute_script("return document.body.dataset.step") == query.get("step", "wasm")
    assert_no_console_errors(driver)


def assert_no_console_errors(driver) -> None:
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors


def generated(driver, index: Path, **query) -> str:
    """Open the page with run=1 and these settings; the text it shows once it is done."""
    open_page(driver, index, run=1, **query)
    assert wait_for(driver, "['done', 'stopped', 'error'].includes(document.getElementById('output').dataset.state)"
                    " && document.getElementById('output').dataset.state") == "done"
    assert_no_console_errors(driver)
    return driver.execute_script("return document.getElementById('output').textContent")


def page_score(driver, index: Path, text: str, **query) -> tuple[float, int]:
    """Bits per character of `text` in the page's score view, and how many characters were scored."""
    open_page(driver, index, view="score", **query)
    driver.execute_script("document.getElementById('score-text').value = arguments[0]", text)
    driver.find_element("id", "score-run").click()
    bpc = float(wait_for(driver, "document.getElementById('score-total').dataset.bpc"))
    total = driver.find_element("id", "score-total").text
    return bpc, int(re.search(r"over ([\d,]+) characters", total)[1].replace(",", ""))


@pytest.mark.parametrize("step", ["wasm", "simd", "js"])
@pytest.mark.parametrize("model, prime", [("rnn", "a small bird"), ("lstm", "the "), ("gru", ""), ("gru-odd", "a "),
                                          ("lstm-copy", "the ")])
def test_greedy_text_is_generate_py_text(browser, exported, model, prime, step):
    ckpt_path, index = exported[model]
    expected = generate_py(ckpt_path, "--prime", prime, "--length", "300", "--temperature", "0")
    text = generated(browser, index, prime=prime, temperature=0, length=300, **({} if step == "wasm" else {"step": step}))
    assert text == expected[:-1]  # print's newline


def python_score(ckpt_path: Path, text: str, tmp_path: Path) -> tuple[float, int]:
    """generate.py --score's bits per character of `text`, and how many characters it scored."""
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    line = generate_py(ckpt_path, "--score", str(tmp_path / "text.txt"))
    bpc, count = re.search(r"([\d.]+) bits/char over ([\d,]+) characters", line).groups()
    return float(bpc), int(count.replace(",", ""))


SCORED = TEXT[:700] + "the lazy bird (in the sun) sings.\n"


@pytest.mark.parametrize("step", ["wasm", "simd", "js"])
@pytest.mark.parametrize("model", ["rnn", "lstm", "gru", "gru-odd", "lstm-copy"])
def test_score_matches_generate_py(browser, exported, model, step, tmp_path):
    ckpt_path, index = exported[model]
    expected_bpc, expected_count = python_score(ckpt_path, SCORED, tmp_path)
    bpc, count = page_score(browser, index, SCORED, **({} if step == "wasm" else {"step": step}))
    assert count == expected_count == len(SCORED) - 1
    assert bpc == pytest.approx(expected_bpc, abs=0.001)
    shaded = browser.execute_script("return document.querySelectorAll('#score-output span[data-i]').length")
    assert shaded == count  # every character but the first is shaded by its surprisal


def test_same_seed_same_text_and_settings_change_it(browser, exported):
    index = exported["lstm"][1]
    first = generated(browser, index, prime="the", temperature=1.5, length=200, seed=7)
    assert generated(browser, index, prime="the", temperature=1.5, length=200, seed=7) == first
    assert generated(browser, index, prime="the", temperature=1.5, length=200, seed=8) != first
    assert len(first) == 3 + 200 and first.startswith("the")
    greedy = generated(browser, index, prime="the", temperature=0, length=100)
    assert generated(browser, index, prime="the", temperature=1.5, top_k=1, length=100, seed=3) == greedy
    assert generated(browser, index, prime="the", temperature=1.5, top_p=0.001, length=100, seed=3) == greedy
    assert generated(browser, index, prime="the", temperature=5, top_k=3, top_p=0.9, length=100, seed=3) != greedy


def test_stop_button_ends_a_long_generation(browser, exported):
    index = exported["lstm"][1]
    open_page(browser, index, prime="the", temperature=1, length=10_000_000, run=1)
    wait_for(browser, "document.getElementById('output').textContent.length > 50")
    browser.find_element("id", "stop").click()
    assert wait_for(browser, "document.getElementById('output').dataset.state") in ("running", "stopped")
    wait_for(browser, "document.getElementById('output').dataset.state === 'stopped'", timeout=10)
    shown = len(browser.execute_script("return document.getElementById('output').textContent"))
    time.sleep(0.3)
    assert len(browser.execute_script("return document.getElementById('output').textContent")) == shown < 1_000_000
    assert browser.find_element("id", "stop").get_attribute("disabled")


def test_keyboard_generates_and_inspects_characters(browser, exported):
    index = exported["lstm"][1]
    open_page(browser, index)
    prime = browser.find_element("id", "prime")
    prime.click()
    prime.send_keys("the ")
    browser.find_element("id", "temperature").clear()
    browser.find_element("id", "temperature").send_keys("0")
    browser.find_element("id", "length").clear()
    browser.find_element("id", "length").send_keys("40")
    prime.send_keys(Keys.CONTROL, Keys.ENTER)
    wait_for(browser, "document.getElementById('output').dataset.state === 'done'")
    assert browser.execute_script("return document.getElementById('output').textContent").startswith("the ")
    share = browser.find_element("id", "share").get_attribute("href")
    assert "prime=the" in share and "temperature=0" in share and "run=1" in share
    # Tab moves from the Generate button past Stop (disabled) and the link to the text itself
    browser.find_element("id", "generate").send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "share"
    browser.switch_to.active_element.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "output"
    first = browser.find_element("id", "write-info").text
    assert first.startswith("'")
    assert browser.execute_script("return document.querySelectorAll('#write-info li').length") == 5
    browser.switch_to.active_element.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    assert browser.execute_script("return document.querySelector('#output .current').dataset.i") == "2"
    assert_no_console_errors(browser)


def test_neuron_view_lists_units_and_colours_text(browser, exported):
    index = exported["gru"][1]
    open_page(browser, index, view="neurons")
    wait_for(browser, "document.getElementById('neuron-status').dataset.state === 'done'")
    buttons = browser.find_elements("css selector", "#top-units button")
    assert len(buttons) >= 4 * 3  # three units for each of the four features
    features = browser.find_element("id", "top-units").text
    assert "inside double quotes" in features and "right after a newline" in features
    before = browser.execute_script("return document.getElementById('neuron-output').innerHTML")
    assert browser.execute_script("return document.querySelectorAll('#neuron-output span[style]').length") > 100
    buttons[-1].click()
    assert browser.execute_script("return document.getElementById('neuron-output').innerHTML") != before
    assert_no_console_errors(browser)


def test_summary_names_the_model(browser, exported):
    open_page(browser, exported["lstm"][1])
    summary = browser.find_element("id", "summary").text
    assert "toy" in summary and "LSTM 2×32" in summary and "parameters" in summary and "bits/char" in summary


def test_default_size_export_sizes_by_dtype(browser, tmp_path, torch_one_thread):
    torch.manual_seed(0)
    config = {"vocab_size": 65, "model": "lstm", "rnn_size": 256, "num_layers": 2, "embedding_size": 64,
              "dropout": 0.2}
    ckpt = {"vocab": [chr(32 + i) for i in range(64)] + ["\n"], "model_config": config,
            "model": CharRNN(ModelConfig(**config)).state_dict()}
    full = export_web(ckpt, tmp_path / "f32", dtype="float32").parent
    half = export_web(ckpt, tmp_path / "f16").parent  # the default
    quarter = export_web(ckpt, tmp_path / "i8", dtype="int8").parent
    assert folder_size(full) < 4_000_000
    assert 0.4 < folder_size(half) / folder_size(full) < 0.6
    assert 0.2 < folder_size(quarter) / folder_size(full) < 0.35
    for folder in (full, half, quarter):
        assert len(generated(browser, folder / "index.html", prime="ab", temperature=0.8, length=20, seed=1)) == 22


# int8's bound on these small models; the README gives the difference measured on a trained 2x256
@pytest.mark.parametrize("dtype, bound", [("float16", 0.001), ("int8", 0.01)])
@pytest.mark.parametrize("model", ["lstm", "gru-odd"])
def test_smaller_dtypes_score_close_to_generate_py(browser, exported, model, dtype, bound, tmp_path):
    ckpt_path = exported[model][0]
    index = export_web(checkpoint.load(ckpt_path), tmp_path / dtype, dtype=dtype)
    expected_bpc, _ = python_score(ckpt_path, SCORED, tmp_path)
    assert page_score(browser, index, SCORED)[0] == pytest.approx(expected_bpc, abs=bound)


def test_long_texts_show_progress_and_finish(browser, exported):
    index = exported["lstm"][1]
    page_score(browser, index, TEXT * 2)
    assert browser.execute_script("return document.getElementById('score-progress').max") == len(TEXT * 2)
    assert not browser.find_element("id", "score-progress").is_displayed()  # hidden again once done
    open_page(browser, index, view="neurons")
    wait_for(browser, "document.getElementById('neuron-status').dataset.state === 'done'")
    browser.execute_script("document.getElementById('neuron-text').value = arguments[0]", TEXT * 2)
    browser.find_element("id", "neuron-run").click()
    wait_for(browser, "document.getElementById('neuron-status').dataset.state === 'done'")
    assert browser.find_element("id", "neuron-status").text == f"Read {len(TEXT * 2):,} characters."
    assert browser.execute_script("return document.getElementById('neuron-progress').max") == len(TEXT * 2)


def test_export_refuses_bad_dtype_and_foreign_folders(tmp_path):
    ckpt = make_checkpoint("rnn", steps=0)
    with pytest.raises(CharRNNError, match="float32, float16, int8"):
        export_web(ckpt, tmp_path / "page", dtype="int4")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CharRNNError, match="not empty"):
        export_web(ckpt, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("")
    with pytest.raises(CharRNNError, match="not a folder"):
        export_web(ckpt, tmp_path / "file")
    index = export_web(ckpt, tmp_path / "page")
    assert export_web(ckpt, tmp_path / "page") == index  # an earlier export is overwritten
    assert sorted(os.listdir(index.parent)) == ["app.js", "index.html", "kernel.js", "model.js", "style.css"]
    (tmp_path / "empty").mkdir()
    assert export_web(ckpt, tmp_path / "empty").is_file()
    broken = {**ckpt, "model_config": {**ckpt["model_config"], "rnn_size": 64}}
    with pytest.raises(CharRNNError, match="usable model"):
        export_web(broken, tmp_path / "broken")


def test_a_page_without_its_model_says_so(browser, exported, tmp_path):
    page = tmp_path / "page"
    shutil.copytree(exported["rnn"][1].parent, page)
    (page / "model.js").unlink()
    browser.get_log("browser")
    browser.get((page / "index.html").as_uri())
    assert wait_for(browser, "document.body.dataset.model === 'error'")
    assert "model.js" in browser.find_element("id", "summary").text
    browser.get_log("browser")  # the missing script is logged as an error, rightly


@pytest.fixture(scope="module")
def items_page(tmp_path_factory, torch_one_thread):
    """(run folder, index.html) of a small LSTM trained on three labelled lists of made-up surnames."""
    from charrnn.config import TrainConfig
    from charrnn.launch import train

    root = tmp_path_factory.mktemp("items-web")
    config = TrainConfig.from_options(corpus=str(names_folder(root)), items=True, labels="files", rnn_size=48,
                                      num_layers=1, embedding_size=16, seq_length=16, batch_size=16, learning_rate=1e-2,
                                      warmup_steps=0, max_steps=150, checkpoint_dir=str(root / "run"), threads=1,
                                      sample_length=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHARRNN_CACHE_DIR", str(root / "cache"))
        mp.setattr("charrnn.trainer.plot_metrics", lambda *args: None)
        train(config)
    import charrnn

    return root / "run", charrnn.load(root / "run").export_web(root / "page")


def page_items(driver, index: Path, **query) -> list[tuple[str, bool]]:
    """Open the items view with run=1 and these settings: (text, whole) of each item it lists."""
    open_page(driver, index, run=1, **query)
    assert wait_for(driver, "document.getElementById('item-list').dataset.state === 'done'")
    assert_no_console_errors(driver)
    return [(li.text.removesuffix(" (cut)"), "cut" not in li.get_attribute("class"))
            for li in driver.find_elements("css selector", "#item-list li")]


@pytest.mark.parametrize("label, prime", [("Russian", ""), ("German", "B"), ("Italian", "El")])
def test_the_items_view_makes_generate_py_greedy_items(browser, items_page, label, prime):
    run, index = items_page
    expected = generate_py(run, "--label", label, "--prime", prime, "--temperature", "0", "--length", "30")
    assert page_items(browser, index, label=label, prime=prime, temperature=0, count=1, length=30,
                      novel=0) == [(expected.rstrip("\n"), True)]
    tabs = [t.get_attribute("data-view") for t in browser.find_elements("css selector", ".tab") if t.is_displayed()]
    assert tabs == ["items"]


def test_the_items_view_keeps_only_new_items_without_the_list(browser, items_page):
    run, index = items_page
    made = page_items(browser, index, count=12, seed=3, novel=1, temperature=1)
    known = {n.lower() for label in SYLLABLES for n in make_names(label)}
    assert len(made) == 12 and not {t.lower() for t, _ in made} & known and len({t for t, _ in made}) == 12
    status = browser.find_element("id", "items-status").text
    assert "seed 3" in status and "left out" in status
    checks = browser.execute_async_script(
        "const done = arguments[arguments.length - 1]; const known = knownItems(window.CHARRNN_MODEL.items);"
        "Promise.all(arguments[0].map((t) => isKnown(known, t))).then(done);",
        [f"  {make_names('German')[0].upper()} ", make_names("Russian")[5], "Zzyzx"])
    assert checks == [True, True, False]
    assert make_names("German")[0] not in (index.parent / "model.js").read_text()  # fingerprints, not the list
