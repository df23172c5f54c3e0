"""`charrnn-serve CHECKPOINT` and `python generate.py --serve`: the model over HTTP, JSON in and out.

    POST /v1/generate  {"prime": "ROMEO:", "length": 200, "seed": 1}      texts and the settings used
    POST /v1/generate  {..., "stream": true}                             Server-Sent Events
    POST /v1/score     {"text": "..."}                                   nats and bits per character
    GET  /v1/info, /healthz, / (the --export-web page, from memory)

Starlette on uvicorn (the `serve` extra); the requests in flight are stepped together by
batcher.Batcher. Every value is checked as the command line checks it (SampleConfig), and a bad
one is a 400 naming its field. Nothing a request holds names a file: the model is the one loaded
at start-up. Out of scope: TLS (put a reverse proxy in front), more than one model per process.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import math
import re
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charrnn import flags
from charrnn.config import POSITIVE_INT, Range, SampleConfig
from charrnn.errors import CharRNNError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from charrnn.api import Model

PORT = Range(0, 65535, words="a port from 0 to 65535 (0: any free one)")
SHUTDOWN_S = 3  # on SIGINT/SIGTERM, streams in flight get this long to finish before they are ended
WEB_TYPES = {"index.html": "text/html", "app.js": "text/javascript", "kernel.js": "text/javascript",
             "style.css": "text/css", "model.js": "text/javascript"}  # web.py's PAGE_FILES and MODEL_FILE
INSTALL = 'the server needs its extra: pip install -e ".[serve]"'
HOST, DEFAULT_PORT = "127.0.0.1", 8000


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how many may run at once."""
    max_length: int = 2000
    max_batch: int = 32
    max_concurrent: int = 64
    max_body: int = 262_144


def add_flags(group: argparse._ActionsContainer) -> None:
    """The server's flags, shared by charrnn-serve and generate.py --serve."""
    group.add_argument("--host", help=f"address to listen on (default {HOST}: this machine only; "
                       "any other needs --token or --no-token)")
    group.add_argument("--port", type=flags.checked(int, PORT), help=f"port to listen on (default {DEFAULT_PORT})")
    group.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on every request")
    group.add_argument("--no-token", action="store_true", default=None,
                       help="serve a non-loopback --host without a token (anyone who can reach it may use it)")
    group.add_argument("--max-length", type=flags.checked(int, POSITIVE_INT),
                       help=f"the most characters a request may ask for (default {Limits.max_length})")
    group.add_argument("--max-batch", type=flags.checked(int, POSITIVE_INT),
                       help=f"the most samples one request may ask for (default {Limits.max_batch})")
    group.add_argument("--max-concurrent", type=flags.checked(int, POSITIVE_INT),
                       help=f"requests served at once; more get 503 and Retry-After (default {Limits.max_concurrent})")
    group.add_argument("--max-body", type=flags.checked(int, POSITIVE_INT),
                       help=f"the largest request body in bytes; larger get 413 (default {Limits.max_body})")
    group.add_argument("--exact", action="store_true", default=None,
                       help="give every request a stream of its own: texts bit for bit as charrnn's "
                       "generate makes them, at about one stream's speed in total (see charrnn/batcher.py)")


SERVER_FLAGS = ("host", "port", "token", "no_token", "max_length", "max_batch", "max_concurrent", "max_body",
                "exact")


# ---------------------------------------------------------------------------- request bodies
@dataclass(frozen=True)
class Field:
    """One JSON field a request may hold: the JSON types it takes (named for the error message),
    and the range of a value that SampleConfig does not check itself."""
    types: tuple[type, ...]
    words: str
    check: Range | None = None


NUMBER, INTEGER = Field((int, float), "a number"), Field((int,), "an integer")
TEXT, SWITCH = Field((str,), "a string"), Field((bool,), "true or false")
# Each endpoint's fields, named as the flags are. Those that are SampleConfig's go to it and get
# its checks; `label` and `novel` are for a model of items.
GENERATE_FIELDS = {"prime": TEXT, "length": INTEGER, "temperature": NUMBER, "top_k": INTEGER, "top_p": NUMBER,
                   "stop": TEXT, "seed": INTEGER, "num_samples": Field((int,), "an integer", POSITIVE_INT),
                   "skip_unknown": SWITCH, "stream": SWITCH, "label": TEXT, "novel": SWITCH}
SCORE_FIELDS = {"text": TEXT, "skip_unknown": SWITCH, "label": TEXT}
SAMPLE_OPTIONS = {f.name for f in fields(SampleConfig)}


class BadRequest(Exception):
    """A request the server refuses: the HTTP status, a one-line message, the field at fault."""

    def __init__(self, message: str, field: str | None = None, status: int = 400):
        super().__init__(message)
        self.field, self.status = field, status


def read_fields(body: Any, table: dict[str, Field]) -> dict[str, Any]:
    """The fields of a JSON object body, type-checked; unknown fields are refused. null: not given."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    for name, value in body.items():
        if name not in table:
            raise BadRequest(f"unknown field {name!r}; the fields are {', '.join(table)}", name)
        field = table[name]
        if value is not None and (not isinstance(value, field.types)
                                  or (isinstance(value, bool) and bool not in field.types)):
            raise BadRequest(f"{name} must be {field.words}, not {json.dumps(value)[:40]}", name)
        if isinstance(value, int) and abs(value) >= 2**64:  # config.Range would fail to make it a float
            raise BadRequest(f"{name} is out of range: a number of {len(str(value))} digits", name)
        if value is not None and field.check is not None and value not in field.check:
            raise BadRequest(f"{name} must be {field.check.words}, not {value}", name)
    return {k: v for k, v in body.items() if v is not None}


def as_field_error(error: CharRNNError, field: str | None = None) -> BadRequest:
    """A command-line message ('--top-k must be ...') in the JSON field names ('top_k must be ...'),
    naming `field`, or else the first flag the message names."""
    message = str(error)
    names = [name.replace("-", "_") for name in re.findall(r"--([a-z][a-z-]*)", message)]
    message = re.sub(r"--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), message)
    return BadRequest(message, field or (names[0] if names else None))


def sample_request(given: dict, limits: Limits) -> tuple[SampleConfig, int]:
    """The SampleConfig and number of samples a /v1/generate body asks for, checked and capped."""
    options = {k: v for k, v in given.items() if k in SAMPLE_OPTIONS}
    options.setdefault("length", min(SampleConfig.length, limits.max_length))
    try:
        config = SampleConfig(**options)
    except CharRNNError as e:
        raise as_field_error(e) from None
    n = given.get("num_samples", 1)
    if config.length > limits.max_length:
        raise BadRequest(f"length must be at most {limits.max_length} on this server (--max-length)", "length")
    if n > limits.max_batch:
        raise BadRequest(f"num_samples must be at most {limits.max_batch} on this server (--max-batch)",
                         "num_samples")
    if config.seed is None:  # drawn here, and returned, so that any answer can be made again
        import numpy as np
        config = SampleConfig(**{**asdict(config), "seed": int(np.random.SeedSequence().entropy % 2**63)})
    return config, n


def plain(value: Any) -> Any:
    """JSON-safe: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------- the application
class Server:
    """The loaded model, its batcher and the page, behind the endpoints."""

    def __init__(self, model: Model, limits: Limits, exact: bool = False):
        from charrnn.batcher import Batcher

        self.model, self.limits = model, limits
        self.batcher = Batcher(model, exact=exact)
        self.page: dict[str, bytes] | None = None
        self.in_flight = 0

    def app(self, token: str | None):
        """The ASGI application: routes, wrapped in the token check and the access log."""
        from starlette.applications import Starlette
        from starlette.routing import Route

        routes = [Route("/v1/generate", self.generate, methods=["POST"]),
                  Route("/v1/score", self.score, methods=["POST"]),
                  Route("/v1/info", self.info, methods=["GET"]),
                  Route("/healthz", self.health, methods=["GET"]),
                  Route("/", self.web, methods=["GET"]),
                  Route("/{name:str}", self.web, methods=["GET"])]
        return Guard(Starlette(routes=routes, exception_handlers={BadRequest: refuse}), token, self)

    async def read_json(self, request: Request, table: dict[str, Field]) -> dict[str, Any]:
        """The body as checked fields: 413 past --max-body, 400 for anything that is not JSON."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limits.max_body:
            raise BadRequest(f"the body is over {self.limits.max_body} bytes (--max-body)", status=413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.limits.max_body:
                raise BadRequest(f"the body is over {self.limits.max_body} bytes (--max-body)", status=413)
        try:
            parsed = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError, as are huge ints
            raise BadRequest(f"the body is not JSON: {str(e).splitlines()[0][:80]}") from None
        return read_fields(parsed, table)

    async def generate(self, request: Request) -> Response:
        from starlette.responses import JSONResponse, StreamingResponse

        from charrnn.batcher import Job

        given = await self.read_json(request, GENERATE_FIELDS)
        config, n = sample_request(given, self.limits)
        prime, skip = given.get("prime", ""), given.get("skip_unknown", False)
        try:
            shown = self.model.seen_prime(prime, skip)
        except CharRNNError as e:
            raise as_field_error(e, "prime") from None
        label = self.label(given)
        settings = {"prime": shown, **asdict(config), "num_samples": n, "label": given.get("label"),
                    "novel": given.get("novel", False)}
        if given.get("novel"):
            return await self.novel(request, config, prime, n, settings, skip)
        loop, news, start = asyncio.get_running_loop(), asyncio.Queue(), time.perf_counter()
        job = Job(config, prime, n, lambda new, final: loop.call_soon_threadsafe(news.put_nowait, (new, final)),
                  stream=given.get("stream", False), skip_unknown=skip, label=label,
                  num_labels=len(self.model.labels))

        def totals() -> dict:
            texts = [shown + "".join(t) for t in job.texts]
            chars = sum(map(len, job.texts))
            request.state.chars = chars
            answer = {"texts": texts, "text": texts[0], "settings": settings, "chars": chars,
                      "ms": round((time.perf_counter() - start) * 1000, 1)}
            if self.model.vocab.items:  # whole: ended before the length cap, as generate.py says
                answer["whole"] = [len(t) < config.length for t in job.texts]
            if job.labels is not None:
                answer["labels"] = [self.model.labels[i] for i in job.labels]
            return answer

        if not job.stream:
            self.batcher.submit(job)
            try:
                while not (await news.get())[1]:
                    pass
            finally:
                self.batcher.cancel(job)  # no-op once finished; frees the rows if this handler is cancelled
            if job.error:
                return JSONResponse({"error": job.error, "field": None}, status_code=500)
            return JSONResponse(totals())

        async def events():
            request.state.chars = 0
            self.batcher.submit(job)  # here, not before: a stream that never starts holds no rows
            try:
                while True:
                    new, final = await news.get()
                    if any(new):
                        request.state.chars = request.state.chars + sum(map(len, new))
                        yield f"event: text\ndata: {json.dumps({'texts': new}, ensure_ascii=False)}\n\n"
                    if final:
                        name, end = ("error", {"error": job.error}) if job.error else ("done", totals())
                        yield f"event: {name}\ndata: {json.dumps(end, ensure_ascii=False)}\n\n"
                        return
            finally:
                self.batcher.cancel(job)  # the client left: its rows leave the batch at the next step

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def label(self, given: dict) -> int | None:
        """The index of the label asked for; `label` and `novel` need a model of items."""
        for name in ("label", "novel"):
            if given.get(name) and not self.model.vocab.items:
                raise BadRequest(f"{name} needs a model trained on a list (train.py --items); this one was "
                                 "trained on running text", name)
        if given.get("novel") and given.get("stream"):
            raise BadRequest("novel cannot stream: an item is known to be new only once it is whole; drop "
                             "stream", "stream")
        try:
            return self.model.label_index(given.get("label"))
        except CharRNNError as e:
            raise as_field_error(e, "label") from None

    async def novel(self, request: Request, config: SampleConfig, prime: str, n: int, settings: dict,
                    skip: bool) -> Response:
        """New items only: drawn apart from the batch, in rounds until there are `n` (generate_items)."""
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse

        start = time.perf_counter()
        draw = await run_in_threadpool(self.model.draw_items, config, prime, n, settings["label"], True, skip)
        request.state.chars = sum(map(len, draw.texts))
        return JSONResponse({"texts": draw.texts, "text": (draw.texts or [""])[0], "whole": draw.whole,
                             "labels": [None if i is None else self.model.labels[i] for i in draw.labels],
                             "settings": settings, "chars": request.state.chars, "draws": draw.draws,
                             "copies": draw.copies, "repeats": draw.repeats, "shortfall": draw.shortfall(n),
                             "ms": round((time.perf_counter() - start) * 1000, 1)})

    async def score(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse

        given = await self.read_json(request, SCORE_FIELDS)
        if "text" not in given:
            raise BadRequest("text is missing: the text to score", "text")
        self.label(given)
        try:
            score = await run_in_threadpool(self.model.score, given["text"], given.get("skip_unknown", False),
                                            given.get("label"))
        except CharRNNError as e:
            raise as_field_error(e, "label" if "label" in str(e) else "text") from None
        request.state.chars = score.chars
        answer = {"nats": score.nats, "bits": score.bits, "chars": score.chars}
        if score.items:
            answer.update(items=score.items, nats_per_item=score.nats_per_item)
        return JSONResponse(answer)

    async def info(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        return JSONResponse(plain({**self.model.info, "summary": self.model.describe()}))

    async def health(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        error = self.batcher.error or (None if self.batcher.thread.is_alive() else "the sampler is not running")
        return JSONResponse({"ok": not error, "error": error}, status_code=503 if error else 200)

    async def web(self, request: Request) -> Response:
        """The --export-web page, exported once on first use and kept in memory."""
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import Response

        name = request.path_params.get("name", "index.html")
        if name not in WEB_TYPES:
            raise BadRequest(f"no page {name!r} here; see / and /v1/", status=404)
        if self.page is None:
            self.page = await run_in_threadpool(self._export_page)
        return Response(self.page[name], media_type=WEB_TYPES[name])

    def _export_page(self) -> dict[str, bytes]:
        with tempfile.TemporaryDirectory() as folder:
            self.model.export_web(folder)
            return {name: (Path(folder) / name).read_bytes() for name in WEB_TYPES}


async def refuse(request: Request, error: BadRequest) -> Response:
    """A refused request's answer: {"error": one line, "field": the field at fault or null}."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": str(error), "field": error.field}, status_code=error.status)


class Guard:
    """ASGI middleware: the bearer token, the --max-concurrent limit, one access-log line a request."""

    LIMITED = ("/v1/generate", "/v1/score")

    def __init__(self, app, token: str | None, server: Server):
        self.app, self.token, self.server = app, token, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]
        state = scope.setdefault("state", {})

        async def logged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        limited = scope["path"] in self.LIMITED
        try:
            if self.token is not None and not self.authorized(scope):
                await self.answer(scope, receive, logged, 401, "a bearer token is required: "
                                  "send 'Authorization: Bearer TOKEN'", {"WWW-Authenticate": "Bearer"})
            elif limited and self.server.in_flight >= self.server.limits.max_concurrent:
                await self.answer(scope, receive, logged, 503, f"busy: {self.server.in_flight} requests in "
                                  "flight (--max-concurrent); retry shortly", {"Retry-After": "1"})
            else:
                self.server.in_flight += limited
                try:
                    await self.app(scope, receive, logged)
                finally:
                    self.server.in_flight -= limited
        finally:
            print(f"{scope['method']} {scope['path']} {status[0] or '-'} {state.get('chars', 0)} chars "
                  f"{(time.perf_counter() - start) * 1000:.0f} ms", file=sys.stderr, flush=True)

    def authorized(self, scope) -> bool:
        given = dict(scope["headers"]).get(b"authorization", b"")
        # compare_digest: the time taken does not tell how much of a guess was right
        return hmac.compare_digest(given, b"Bearer " + self.token.encode())

    @staticmethod
    async def answer(scope, receive, send, status: int, message: str, headers: dict) -> None:
        from starlette.responses import JSONResponse

        await JSONResponse({"error": message, "field": None}, status, headers)(scope, receive, send)


# ---------------------------------------------------------------------------- start and stop
def check_access(host: str, token: str | None, no_token: bool) -> None:
    """Loopback serves without a token; any other address needs --token, or --no-token said aloud."""
    if token is not None and no_token:
        raise CharRNNError("--token and --no-token contradict each other; drop one")
    if token is not None and not token.strip():
        raise CharRNNError("--token must not be empty")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and token is None and not no_token:
        raise CharRNNError(f"--host {host} can be reached from other machines: give --token SECRET (clients "
                           "send 'Authorization: Bearer SECRET'), or --no-token to serve without one")


def serve(checkpoint: str | None, args: dict) -> int:
    """Load the model, listen, answer until SIGINT or SIGTERM, then stop cleanly (exit 0)."""
    host, port = args.get("host", HOST), args.get("port", DEFAULT_PORT)
    check_access(host, args.get("token"), bool(args.get("no_token")))
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise CharRNNError(INSTALL) from None
    import signal

    import charrnn

    limits = Limits(**{k: args[k] for k in ("max_length", "max_batch", "max_concurrent", "max_body") if k in args})
    model = charrnn.load(checkpoint)
    server = Server(model, limits, exact=bool(args.get("exact")))
    try:  # bound here, so that port 0 can say which port it got
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise CharRNNError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port") from None
    bound = sock.getsockname()[1]
    print(model.describe())
    print(f"serving on http://{host if ':' not in host else f'[{host}]'}:{bound} "
          f"(POST /v1/generate, /v1/score; GET /v1/info, /healthz, /); Ctrl-C stops", flush=True)
    config = uvicorn.Config(server.app(args.get("token")), log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=SHUTDOWN_S, server_header=False)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # uvicorn passes the signal on when done
    server.batcher.start()
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        server.batcher.stop()
    print("stopped", file=sys.stderr)
    return 0


def build_parser() -> flags.Parser:
    p = flags.Parser(prog="charrnn-serve", description="Serve a checkpoint over HTTP: generate, stream, score "
                     "and the web page, many clients stepped together as one batch.")
    p.add_argument("checkpoint", nargs="?", help="a .pt file, or a run folder (its best.pt). Default: the run "
                   "under checkpoints/ written most recently")
    add_flags(p)
    return p


def main() -> int:
    args = flags.given(build_parser().parse_args())
    return serve(args.pop("checkpoint", None), args)


def run() -> None:
    """The console script's entry point."""
    flags.run_main(main)


if __name__ == "__main__":  # python -m charrnn.serve, as charrnn-serve
    run()
