"""The HTTP server under load: 1, 8 and 32 streaming clients against the in-process sampler, and a fuzz run.

Starts `python -m charrnn.serve` on a free loopback port and talks to it with real HTTP clients
(http.client, one thread each, in this process). Each client streams `--length` characters
(`"stream": true`); a round starts N clients at once and ends when all are done. Per round: total
characters per second (all clients' characters over the round's wall time) and every client's
time to first character (from sending the request to reading the first text event). The
in-process rates are bench/sampling.py's measures, taken in the same run, each right before the
server's round of the same size: generate() with one stream and with --num-samples 32 (and 8, for
the 8 clients); both sides are the median of their rounds. Then all of it again beside one busy process
(`while True: pass`). The 32 clients share one prime, as a chat bot's or a name generator's do
(the server makes its forward pass once); a last round gives each its own.

The fuzz run sends malformed JSON, wrong types, huge values, truncated bodies and streams left
mid-way, then checks that seeded requests still get exactly what charrnn.load(...).generate(...)
gives. Everything is bounded: a fixed number of requests, each with a timeout; loopback only.

    python bench/serve_load.py --checkpoint /tmp/serve-bench-run
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import torch
from sampling import charrnn_chars_per_sec, one_step_checkpoint

import charrnn

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 60  # seconds any one request may take before the benchmark gives up on it
CLIENTS = (1, 8, 32)
# numpy's BLAS threads spin on after a call (here a core stayed busy for 100-150 ms after an
# in-process measure), which would take a core from the server's round that follows it
SETTLE = 0.3
LINE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak."  # distinct primes


def start_server(checkpoint: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "charrnn.serve", str(checkpoint), "--port", "0", *extra],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if line.startswith("serving on http://127.0.0.1:"):
            return proc, int(line.split(":")[2].split()[0])
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("the server did not start")


def stream_once(port: int, body: dict) -> tuple[float, int, list[str]]:
    """(seconds to the first text event, characters made, final texts) of one streamed request."""
    start = time.perf_counter()
    first, final = None, None
    with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)) as conn:
        conn.request("POST", "/v1/generate", json.dumps({**body, "stream": True}))
        response = conn.getresponse()
        name = None
        for raw in response:
            line = raw.decode()
            if line.startswith("event: "):
                name = line[7:].strip()
            elif line.startswith("data: "):
                if name == "text" and first is None:
                    first = time.perf_counter() - start
                if name == "done":
                    final = json.loads(line[6:])
    if final is None:
        raise RuntimeError(f"no final event for {body}")
    return first, final["chars"], final["texts"]


def load_round(port: int, clients: int, length: int, seed: int, distinct: bool = False) -> tuple[float, list[float]]:
    """N clients at once: (total characters per second, each client's time to first character).

    They share one prime (whose forward pass the server then makes once), or with `distinct` each
    has its own.
    """
    results = [None] * clients
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        prime = LINE[:8 + i] if distinct else "ROMEO:\n"
        barrier.wait()
        results[i] = stream_once(port, {"prime": prime, "length": length, "seed": seed + i})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    elapsed = time.perf_counter() - start
    if any(r is None for r in results):
        raise RuntimeError("a client did not finish")
    return sum(r[1] for r in results) / elapsed, [r[0] for r in results]


def measure(port: int, model, length: int, repeats: int) -> dict:
    """The server's rates, 1, 8 and 32 clients, each beside its in-process rate (bench/sampling.py's
    measures), the two interleaved round by round so that the machine's drift falls on both; the
    median of each."""
    net, vocab = model.net, model.vocab
    inprocess = {1: lambda: charrnn_chars_per_sec(net, vocab, 20_000, 1),
                 8: lambda: charrnn_chars_per_sec(net, vocab, 10_000, 8),
                 32: lambda: charrnn_chars_per_sec(net, vocab, 20_000 // 32 * 4, 32)}
    load_round(port, 4, 50, seed=0)  # warm up: the worker thread's first torch call sets up its threads
    kinds = (*CLIENTS, "32d")  # "32d": 32 clients, each with its own prime
    local, served, firsts = {n: [] for n in inprocess}, {k: [] for k in kinds}, {k: [] for k in kinds}
    for r in range(repeats):
        for kind in kinds:
            if kind in inprocess:
                local[kind].append(inprocess[kind]())
                time.sleep(SETTLE)
            rate, ttfc = load_round(port, int(str(kind).rstrip("d")), length, seed=1000 * r, distinct=kind == "32d")
            served[kind].append(rate)
            firsts[kind] += ttfc
    row = {f"inprocess_{n}": statistics.median(rates) for n, rates in local.items()}
    for kind in kinds:
        row[f"server_{kind}"] = statistics.median(served[kind])
        row[f"ttfc_median_ms_{kind}"] = 1000 * statistics.median(firsts[kind])
        row[f"ttfc_p99_ms_{kind}"] = 1000 * float(np.percentile(firsts[kind], 99))
    return row


# ---------------------------------------------------------------------------- fuzz
def raw_request(port: int, data: bytes, read: bool = True) -> int | None:
    """Send bytes as they are; the status line's code, or None when the server closed or we left."""
    with closing(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)) as sock:
        sock.sendall(data)
        if not read:
            return None
        reply = sock.recv(64)
    return int(reply.split()[1]) if reply.startswith(b"HTTP/1.1 ") else None


def post_bytes(body: bytes, length: int | None = None) -> bytes:
    return (b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n".encode()
            + body)


def fuzz(port: int, model, count: int, seed: int = 0) -> dict:
    """Malformed, mistyped, huge, truncated and abandoned requests; then seeded requests checked."""
    rng = np.random.default_rng(seed)
    fields = ["prime", "length", "temperature", "top_k", "top_p", "stop", "seed", "num_samples", "stream", "bogus"]
    values = [None, True, -1, 0, 1e308, -1e308, 2**70, "x" * 300, "€", [], {}, "NaN", 0.5, 10**9, "", "\x00"]
    sent, statuses = {"malformed": 0, "wrong types and huge values": 0, "truncated": 0, "left mid-stream": 0}, {}
    for i in range(count):
        kind = i % 4
        if kind == 0:
            good = json.dumps({"length": 20, "seed": int(rng.integers(1000))}).encode()
            cut = int(rng.integers(0, len(good)))
            body = good[:cut] + bytes(rng.integers(0, 256, int(rng.integers(0, 8)), dtype=np.uint8)) + good[cut:]
            status = raw_request(port, post_bytes(body))
            sent["malformed"] += 1
        elif kind == 1:
            body = {str(rng.choice(fields)): values[int(rng.integers(len(values)))]
                    for _ in range(int(rng.integers(1, 4)))}
            status = raw_request(port, post_bytes(json.dumps(body, allow_nan=True).encode()))
            sent["wrong types and huge values"] += 1
        elif kind == 2:
            body = json.dumps({"length": 30}).encode()
            status = raw_request(port, post_bytes(body[:5], length=len(body)), read=False)
            sent["truncated"] += 1
        else:
            with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)) as conn:
                conn.request("POST", "/v1/generate", json.dumps({"length": 2000, "stream": True}))
                conn.getresponse().readline()
                conn.sock.shutdown(socket.SHUT_RDWR)
            status = None
            sent["left mid-stream"] += 1
        statuses[status] = statuses.get(status, 0) + 1
    checked = correct = 0
    for s in range(16):
        body = {"prime": "ROMEO:\n", "length": 200, "seed": 7000 + s, "temperature": 0.9}
        _, _, texts = stream_once(port, body) if s % 2 else (0, 0, post_json(port, body)["texts"])
        checked += 1
        correct += texts == [model.generate("ROMEO:\n", length=200, seed=7000 + s, temperature=0.9)]
    return {"sent": sent, "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
            "later_requests": checked, "later_correct": correct}


def post_json(port: int, body: dict) -> dict:
    with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)) as conn:
        conn.request("POST", "/v1/generate", json.dumps(body))
        return json.loads(conn.getresponse().read())


# ---------------------------------------------------------------------------- report
def table(rows: dict[str, dict]) -> str:
    lines = ["| load | clients | server chars/s | in-process chars/s | ratio | first char median | p99 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, r in rows.items():
        for clients in (*CLIENTS, "32d"):
            streams = 32 if clients == "32d" else clients
            base = r[f"inprocess_{streams}"]
            basis = "one stream" if streams == 1 else f"{streams} streams"
            shown = "32, each its own prime" if clients == "32d" else clients
            lines.append(f"| {label} | {shown} | {r[f'server_{clients}']:,.0f} | {base:,.0f} ({basis}) | "
                         f"{r[f'server_{clients}'] / base:.0%} | {r[f'ttfc_median_ms_{clients}']:.0f} ms | "
                         f"{r[f'ttfc_p99_ms_{clients}']:.0f} ms |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="the model to serve (default: the default model, one step trained)")
    p.add_argument("--length", type=int, default=500, help="characters per client (default 500)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of each kind (default 3)")
    p.add_argument("--fuzz", type=int, default=200, help="fuzz requests (default 200)")
    p.add_argument("--exact", action="store_true", help="serve with --exact")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.checkpoint) if args.checkpoint else one_step_checkpoint(Path(tmp))
        model = charrnn.load(path)
        c = model.net.config
        print(f"model {c.model} {c.num_layers}x{c.rnn_size}, torch {torch.__version__}, numpy {np.__version__}, "
              f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the start), {args.length} characters "
              f"a client, median of {args.repeats} rounds, in-process rates interleaved")
        proc, port = start_server(model.path, *(["--exact"] if args.exact else []), "--max-concurrent", "64")
        try:
            rows = {"as found": measure(port, model, args.length, args.repeats)}
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                rows["plus a busy process"] = measure(port, model, args.length, args.repeats)
            finally:
                busy.kill()
            fuzzed = fuzz(port, model, args.fuzz)
            health = post_json(port, {"length": 1, "seed": 0})
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
    print(table(rows))
    print(f"fuzz: {fuzzed}; a request after it: {'ok' if health.get('texts') else health}; "
          f"server exit code after SIGTERM: {code}")
    print(json.dumps({"rows": rows, "fuzz": fuzzed, "exit_code": code}))


if __name__ == "__main__":
    main()
