"""The HTTP server, over real HTTP on a free loopback port: answers equal charrnn's own, alone and
under concurrency; bad requests get their 400/413/503; disconnects, the token and SIGTERM."""
import http.client
import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import charrnn  # noqa: E402
from charrnn.errors import CharRNNError  # noqa: E402
from charrnn.serve import check_access  # noqa: E402
from conftest import REPO  # noqa: E402

START_TIMEOUT = 60  # seconds for a server to import torch, load and listen on a busy machine


class Server:
    """A charrnn-serve child process and a way to talk to it."""

    def __init__(self, checkpoint, *extra):
        self.proc = subprocess.Popen([sys.executable, "-m", "charrnn.serve", str(checkpoint), "--port", "0", *extra],
                                     cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline, self.port = time.monotonic() + START_TIMEOUT, None
        while self.port is None:
            line = self.proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"the server did not start: {self.proc.stderr.read()[-2000:]}")
            if line.startswith("serving on http://127.0.0.1:"):
                self.port = int(line.split(":")[2].split()[0])

    def connect(self, timeout: float = 30) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, http.client.HTTPMessage, bytes]:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        with closing(self.connect()) as conn:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.headers, response.read()

    def post(self, path: str, body, headers=None) -> tuple[int, dict]:
        status, _, data = self.request("POST", path, body, headers)
        return status, json.loads(data)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    s = Server(tiny_checkpoint, "--max-length", "400", "--max-batch", "4", "--max-body", "4096",
               "--max-concurrent", "40")
    yield s
    s.proc.kill()
    s.proc.wait()


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return charrnn.load(tiny_checkpoint)


def read_events(response) -> list[tuple[str, dict]]:
    """The Server-Sent Events of a response: (event name, data) pairs."""
    events, name = [], None
    for raw in response:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def stream(server: Server, body: dict) -> list[tuple[str, dict]]:
    with closing(server.connect()) as conn:
        conn.request("POST", "/v1/generate", json.dumps({**body, "stream": True}))
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
        return read_events(response)


# A spread of requests: options, primes, stop strings and several samples.
CASES = [dict(prime="the ", length=300, seed=s, temperature=(0.8, 1.0, 0.5, 0)[s % 4],
              top_k=5 if s % 5 == 1 else None, top_p=0.9 if s % 5 == 2 else None,
              stop=". " if s % 7 == 3 else None, num_samples=3 if s % 6 == 5 else None) for s in range(32)]


def expected(model, case: dict) -> list[str]:
    options = {k: v for k, v in case.items() if k != "prime"}
    texts = model.generate(case["prime"], **options)
    return texts if isinstance(texts, list) else [texts]


def test_a_request_alone_gets_what_generate_gives(server, model):
    for case in CASES[:6]:
        status, answer = server.post("/v1/generate", {k: v for k, v in case.items() if v is not None})
        assert status == 200, answer
        assert answer["texts"] == expected(model, case) and answer["text"] == answer["texts"][0]
        assert answer["settings"]["seed"] == case["seed"] and answer["chars"] == sum(
            len(t) - len(case["prime"]) for t in answer["texts"])


def test_32_requests_at_once_get_what_generate_gives_alone(server, model):
    def ask(case):
        body = {k: v for k, v in case.items() if v is not None}
        if case["seed"] % 2:  # half stream, half wait for the whole answer
            events = stream(server, body)
            assert [name for name, _ in events][-1] == "done"
            pieces = ["".join(parts) for parts in zip(*(data["texts"] for name, data in events if name == "text"))]
            final = events[-1][1]
            assert [case["prime"] + p for p in pieces] == final["texts"]  # the events add up to the text
            return final["texts"]
        status, answer = server.post("/v1/generate", body)
        assert status == 200, answer
        return answer["texts"]

    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(ask, CASES))
    assert got == [expected(model, case) for case in CASES]


def test_exact_mode_under_concurrency(tiny_checkpoint, model):
    s = Server(tiny_checkpoint, "--exact")
    try:
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda c: s.post("/v1/generate", {k: v for k, v in c.items() if v is not None})[1]
                                ["texts"], CASES[:16]))
        assert got == [expected(model, case) for case in CASES[:16]]
    finally:
        assert s.stop() == 0


def test_a_drawn_seed_is_returned_and_makes_the_same_text_again(server):
    status, first = server.post("/v1/generate", {"prime": "a", "length": 50})
    assert status == 200 and isinstance(first["settings"]["seed"], int)
    _, again = server.post("/v1/generate", {"prime": "a", "length": 50, "seed": first["settings"]["seed"]})
    assert again["texts"] == first["texts"]


def test_score_info_health_and_page(server, model):
    status, answer = server.post("/v1/score", {"text": "the lazy dog rests."})
    expected_score = model.score("the lazy dog rests.")
    assert status == 200 and answer["chars"] == expected_score.chars
    assert answer["nats"] == pytest.approx(expected_score.nats) and answer["bits"] == pytest.approx(expected_score.bits)
    status, _, body = server.request("GET", "/v1/info")
    info = json.loads(body)
    assert status == 200 and info["vocab_size"] == len(model.vocab) and info["summary"] == model.describe()
    assert server.request("GET", "/healthz")[:1] == (200,)
    status, headers, page = server.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b'src="model.js"' in page
    status, _, script = server.request("GET", "/model.js")
    assert status == 200 and script.startswith(b"// charrnn web export")
    assert server.request("GET", "/../best.pt")[0] == 404


@pytest.mark.parametrize("body, field", [
    ({"top_k": 0}, "top_k"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"length": 0}, "length"),
    ({"length": 401}, "length"),              # over --max-length
    ({"length": 1e300}, "length"),
    ({"length": "10"}, "length"),
    ({"length": True}, "length"),
    ({"temperature": "hot"}, "temperature"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"num_samples": 5}, "num_samples"),      # over --max-batch
    ({"num_samples": 0}, "num_samples"),
    ({"prime": 7}, "prime"),
    ({"prime": "€"}, "prime"),                # not in the vocabulary
    ({"stop": ["x"]}, "stop"),
    ({"stream": "yes"}, "stream"),
    ({"checkpoint": "/etc/passwd"}, "checkpoint"),  # unknown fields are refused: no request names a file
    ({"path": "x"}, "path"),
])
def test_bad_values_get_a_400_naming_the_field(server, body, field):
    status, answer = server.post("/v1/generate", body)
    assert status == 400 and answer["field"] == field
    assert "\n" not in answer["error"] and f"--{field.replace('_', '-')} " not in answer["error"], answer


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b"null", b"\xff\xfe", b'{"length": NaN}', b'{"seed": 1e999}',
                                 b'{"length": 1' + b"0" * 400 + b"}", b"{}" * 3, b""],
                         ids=["truncated", "array", "null", "not-utf8", "nan", "inf", "huge-int", "two-objects",
                              "empty"])
def test_malformed_bodies_get_a_400(server, raw):
    status, _, body = server.request("POST", "/v1/generate", raw, {"Content-Type": "application/json"})
    assert status == 400 and "error" in json.loads(body)


def test_score_refuses_what_it_cannot_score(server):
    assert server.post("/v1/score", {})[1]["field"] == "text"
    assert server.post("/v1/score", {"text": "t"})[1]["field"] == "text"  # fewer than 2 characters
    assert server.post("/v1/score", {"text": "the €"})[1]["field"] == "text"


def test_a_large_body_gets_413_and_a_truncated_one_harms_nothing(server):
    status, _, _ = server.request("POST", "/v1/generate", json.dumps({"prime": "a" * 5000}))
    assert status == 413
    with closing(server.connect()) as conn:  # says 1000 bytes, sends 10, leaves
        conn.putrequest("POST", "/v1/generate")
        conn.putheader("Content-Length", "1000")
        conn.endheaders(b'{"length":')
    assert server.post("/v1/generate", {"length": 5, "seed": 1})[0] == 200


def test_limits_token_and_disconnects(tiny_checkpoint):
    s = Server(tiny_checkpoint, "--token", "s3cret", "--max-concurrent", "2", "--max-length", "100000")
    auth = {"Authorization": "Bearer s3cret"}
    try:
        assert s.request("GET", "/healthz")[0] == 401
        assert s.request("GET", "/v1/info", headers={"Authorization": "Bearer s3cre"})[0] == 401
        assert s.post("/v1/generate", {"length": 5}, {"Authorization": "s3cret"})[0] == 401
        assert s.post("/v1/generate", {"length": 5}, auth)[0] == 200

        # two long streams fill the server; a third request is turned away
        conns = [s.connect() for _ in range(2)]
        for conn in conns:
            conn.request("POST", "/v1/generate", json.dumps({"length": 100000, "stream": True}), auth)
            response = conn.getresponse()
            assert response.status == 200
            response.readline()  # the first event has come: the stream runs
        status, headers, body = s.request("POST", "/v1/generate", json.dumps({"length": 5}), auth)
        assert status == 503 and headers["Retry-After"] == "1" and "max-concurrent" in json.loads(body)["error"]

        # a client that leaves mid-stream frees its place at once
        for conn in conns:
            conn.sock.shutdown(2)
            conn.close()
        deadline = time.monotonic() + 5
        while (status := s.post("/v1/generate", {"length": 5}, auth)[0]) == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status == 200
    finally:
        assert s.stop() == 0


def test_sigterm_ends_a_stream_in_flight_and_exits_0(tiny_checkpoint):
    s = Server(tiny_checkpoint, "--max-length", "1000000")
    with closing(s.connect()) as conn:
        conn.request("POST", "/v1/generate", json.dumps({"length": 1000000, "stream": True}))
        response = conn.getresponse()
        response.readline()
        start = time.monotonic()
        assert s.stop() == 0
        assert time.monotonic() - start < 10
    assert "stopped" in s.proc.stderr.read()


def test_non_loopback_needs_a_token_or_no_token():
    check_access("127.0.0.1", None, False)
    check_access("::1", None, False)
    check_access("0.0.0.0", "t", False)
    check_access("0.0.0.0", None, True)
    for host, token, no_token in [("0.0.0.0", None, False), ("192.168.1.5", None, False), ("::", None, False),
                                  ("127.0.0.1", "t", True), ("127.0.0.1", " ", False)]:
        with pytest.raises(CharRNNError):
            check_access(host, token, no_token)


def test_command_line_errors_are_one_line(tiny_checkpoint):
    def run(*args, code="from charrnn.serve import run; run()"):
        return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                              timeout=60)

    result = run(str(tiny_checkpoint), "--host", "0.0.0.0")
    assert result.returncode == 1 and result.stderr.startswith("error: --host 0.0.0.0") and "--token" in result.stderr
    result = subprocess.run([sys.executable, "generate.py", "--serve", "--length", "5"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.strip() == ("error: --length does not apply to --serve; "
                                                                 "drop one of them")
    # without the extra installed: one line that says how to install it
    result = run(str(tiny_checkpoint), code="import sys; sys.modules['uvicorn'] = None; "
                 "from charrnn.serve import run; sys.argv[0] = 'charrnn-serve'; run()")
    assert result.returncode == 1
    assert result.stderr.strip() == 'error: the server needs its extra: pip install -e ".[serve]"'


@pytest.mark.parametrize("copy", [False, True], ids=["plain", "copy attention"])
def test_long_texts_beside_31_others_equal_each_alone(model, copy_checkpoint, copy):
    """In process, longer: 32 seeded requests of 1,000 characters joining one batch at different steps
    (with the copy attention, each row carries its own memory)."""
    import threading

    from charrnn.batcher import Batcher, Job
    from charrnn.config import SampleConfig

    model = charrnn.load(copy_checkpoint) if copy else model
    batcher, finished, jobs = Batcher(model), threading.Semaphore(0), []
    batcher.start()
    try:
        for seed in range(32):
            jobs.append(Job(SampleConfig(length=1000, seed=seed), "the " * (seed % 3), 1,
                            lambda new, final: final and finished.release()))
            batcher.submit(jobs[-1])
            if seed % 8 == 7:  # the next ones join a batch already running
                time.sleep(0.01)
        assert all(finished.acquire(timeout=60) for _ in jobs)
    finally:
        batcher.stop()
    assert ["".join(job.texts[0]) for job in jobs] == [
        model.generate(job.prime, length=1000, seed=seed)[len(job.prime):] for seed, job in enumerate(jobs)]


def test_the_page_served_from_memory_runs_in_a_browser(server, model, tmp_path):
    """Chromium opens http://127.0.0.1:PORT/ and its greedy text is generate's."""
    pytest.importorskip("selenium")
    from common import CHROMIUM, start_browser
    from test_web import generated

    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium")

    class Served:  # what test_web.generated opens: here the server's page, not a file
        def as_uri(self):
            return f"http://127.0.0.1:{server.port}/"

    driver = start_browser(tmp_path / "profile", console_log=True)
    try:
        text = generated(driver, Served(), prime="the ", temperature=0, length=200)
    finally:
        driver.quit()
    assert text == model.generate("the ", length=200, temperature=0)


# -- a model of items and labels ----------------------------------------------------------------

@pytest.fixture(scope="module")
def names_server(tmp_path_factory):
    """A server of a small LSTM trained on three labelled lists of made-up surnames, and the model."""
    from charrnn.config import TrainConfig
    from charrnn.launch import train
    from conftest import names_folder

    root = tmp_path_factory.mktemp("names-serve")
    config = TrainConfig.from_options(corpus=str(names_folder(root)), items=True, labels="files", rnn_size=48,
                                      num_layers=1, embedding_size=16, batch_size=16, seq_length=16,
                                      learning_rate=1e-2, warmup_steps=0, max_steps=150, threads=1, sample_length=0,
                                      checkpoint_dir=str(root / "run"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHARRNN_CACHE_DIR", str(root / "cache"))
        mp.setattr("charrnn.trainer.plot_metrics", lambda *args: None)
        train(config)
    s = Server(root / "run", "--max-batch", "8")
    yield s, charrnn.load(root / "run")
    s.proc.kill()
    s.proc.wait()


ITEM_CASES = [dict(num_samples=n, seed=seed, label=label, prime=prime, length=30)
              for n, seed, label, prime in [(5, 1, "Russian", ""), (3, 2, None, "Ko"), (1, 3, "German", "B"),
                                            (8, 4, None, ""), (2, 5, "Italian", "E"), (4, 6, "German", "")]]


def test_items_and_labels_over_http_are_what_generate_gives(names_server):
    server, model = names_server

    def ask(case):
        status, answer = server.post("/v1/generate", {k: v for k, v in case.items() if v is not None})
        assert status == 200, answer
        return answer

    with ThreadPoolExecutor(len(ITEM_CASES)) as pool:  # at once: the items share the batch
        answers = list(pool.map(ask, ITEM_CASES))
    for case, answer in zip(ITEM_CASES, answers):
        draw = model.draw_items(charrnn.api.SampleConfig(length=30, seed=case["seed"]), case["prime"],
                                case["num_samples"], case["label"])
        assert answer["texts"] == draw.texts and answer["whole"] == draw.whole
        assert answer["labels"] == [model.labels[i] for i in draw.labels]
        assert all("\n" not in t and t.startswith(case["prime"]) for t in answer["texts"])


def test_new_items_only_and_bad_labels_over_http(names_server, server):
    names, model = names_server
    status, answer = names.post("/v1/generate", {"num_samples": 6, "novel": True, "label": "Russian", "seed": 7})
    assert status == 200 and len(answer["texts"]) == 6 and answer["shortfall"] is None
    assert answer["texts"] == model.generate(num_samples=6, novel=True, label="Russian", seed=7, length=500)
    for body, field, words in [({"label": "Klingon"}, "label", "this model knows German, Italian, Russian"),
                               ({"novel": True, "stream": True}, "stream", "novel cannot stream")]:
        status, answer = names.post("/v1/generate", body)
        assert status == 400 and answer["field"] == field and words in answer["error"]
    status, answer = server.post("/v1/generate", {"label": "x"})  # a model of running text
    assert status == 400 and answer["field"] == "label" and "trained on running text" in answer["error"]
    status, answer = names.post("/v1/score", {"text": "Ivanov\nKovamir\n", "label": "Russian"})
    assert status == 200 and answer["items"] == 2 and answer["nats_per_item"] > 0
