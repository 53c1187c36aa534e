"""HTTP JSON service over `api.Classifier` (FastAPI + uvicorn; `pip install 'gptclf[serve]'`).

    POST /classify  {"texts": ["...", ...]}  → {"predictions": [{"label", "probability",
                                                                 "probabilities"}, ...]}
                                                (multi-label: [{"labels", "probabilities"}])
    GET  /health                              → {"status": "ok"}
    GET  /info                                → model, labels, text columns, limits, metrics
    GET  /                                    → a page to try the model (off with --no-ui)
    GET  /run/{image}                         → the run's report plots, for that page

A thin adapter: validation and limits here, prediction in `Classifier.predict`. Requests queue for
one worker thread (`Batcher`) that classifies the texts of all waiting requests together, so the
model is never called concurrently and concurrent requests share batches. Errors are JSON
``{"error": "..."}``: 400 for a request that is not HTTP; 408 for a body not received within the
client timeout; 413 for too many texts, characters or bytes (refused while the body arrives, before
it is all in memory); 422 for any other body that is not a request (`parse_texts`: not UTF-8, not
JSON, nested thousands deep, a wrong type or null anywhere, an empty text); 500 only for a bug.

What the internet sends is bounded in time as well as size: a client has `client_timeout` seconds
to send its headers (`GuardedHTTP`; uvicorn's own keep-alive timeout ends at a connection's first
byte) and as many for its body (`BodyLimit`), so stalled or trickling clients lose their
connection without holding anyone else's request; the model's worker only ever sees complete,
valid requests. SIGTERM stops taking connections, lets requests in flight finish, and `gptclf
serve` exits 0.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import logging
import math
import queue
import re
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gptclf.api import Classifier, Prediction
from gptclf.errors import GptclfError

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from pydantic import BaseModel, ConfigDict, StrictStr
    from starlette.exceptions import HTTPException
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
except ImportError as exc:  # the CLI turns this into one line
    raise GptclfError(
        f"`gptclf serve` needs FastAPI and uvicorn: pip install 'gptclf[serve]' ({exc.name})"
    ) from None

log = logging.getLogger(__name__)

CLIENT_TIMEOUT = 30.0  # seconds a client has for its request's headers, and as many for its body


@dataclass
class Limits:
    """Per-request limits; above them the answer is 413."""

    max_texts: int = 64
    max_chars: int = 100_000  # all texts of one request together

    def __post_init__(self) -> None:
        if self.max_texts < 1 or self.max_chars < 1:
            raise GptclfError("--max-texts and --max-chars must be at least 1")

    @property
    def max_body_bytes(self) -> int:
        # A JSON-escaped character takes at most 6 bytes (\\uXXXX, or 12 for a surrogate pair
        # that stands for 2 UTF-16 units); plus quotes and commas per text and some slack.
        return 6 * self.max_chars + 8 * self.max_texts + 4096


class ClassifyRequest(BaseModel):
    """The body of POST /classify, for the OpenAPI schema; `parse_texts` checks bodies by hand."""

    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr]


CLASSIFY_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ClassifyRequest.model_json_schema()}},
    }
}


class Batcher:
    """One worker thread runs the model; `submit` queues texts and returns a Future.

    The worker takes every request waiting (up to `max_batch_texts` texts) and classifies them in
    one `predict` call. If that fails, each request is retried alone so one bad request cannot
    fail the others.
    """

    def __init__(self, classifier: Classifier, batch_size: int = 32, max_batch_texts: int = 256):
        self.classifier, self.batch_size, self.max_batch_texts = (
            classifier,
            batch_size,
            max_batch_texts,
        )
        self._queue: queue.Queue[tuple[list[str], Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="gptclf-batcher", daemon=True)
        self._thread.start()

    def submit(self, texts: list[str]) -> Future:
        future: Future = Future()
        self._queue.put((texts, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            items = [item]
            total = len(item[0])
            while total < self.max_batch_texts:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                items.append(nxt)
                total += len(nxt[0])
            self._run(items)

    def _run(self, items: list[tuple[list[str], Future]]) -> None:
        try:
            preds = self.classifier.predict(
                [t for texts, _ in items for t in texts], self.batch_size
            )
        except Exception as exc:
            if len(items) == 1:
                items[0][1].set_exception(exc)
                return
            for one in items:  # isolate the failing request
                self._run([one])
            return
        start = 0
        for texts, future in items:
            future.set_result(preds[start : start + len(texts)])
            start += len(texts)


def create_app(
    classifier: Classifier,
    limits: Limits | None = None,
    batch_size: int = 32,
    ui: bool = True,
    client_timeout: float = CLIENT_TIMEOUT,
) -> FastAPI:
    """The FastAPI application serving `classifier` (and, with `ui`, the page at /).

    `client_timeout`: seconds a client has to send a request's body (408 after); `serve` and
    `running` give it as long for the headers (`app.state.client_timeout`)."""
    limits = limits or Limits()
    check_client_timeout(client_timeout)
    batcher: Batcher | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal batcher
        batcher = Batcher(classifier, batch_size)
        yield
        await asyncio.to_thread(batcher.close)

    app = FastAPI(title="gptclf", version=_version(), lifespan=lifespan)
    app.state.client_timeout = client_timeout
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout=client_timeout)
    images = add_page(app, run_images(classifier.directory)) if ui else {}
    add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return describe(classifier, limits, images)

    @app.post("/classify", openapi_extra=CLASSIFY_OPENAPI)
    async def classify(request: Request) -> dict[str, Any]:
        # The body is parsed here rather than by FastAPI so that any content type works
        # (`curl -d` sends form-encoded) and every error is one clear line.
        texts = parse_texts(await request.body(), limits)
        assert batcher is not None, "the lifespan starts the batcher"
        try:
            preds: list[Prediction] = await asyncio.wrap_future(batcher.submit(texts))
        except GptclfError as exc:  # e.g. a text that encodes to no tokens
            raise HTTPException(422, str(exc)) from None
        return {"predictions": [p.to_dict() for p in preds]}

    return app


def check_client_timeout(seconds: float) -> None:
    if not (math.isfinite(seconds) and seconds > 0):
        raise GptclfError(f"--client-timeout must be a number of seconds above 0, got {seconds:g}")


def add_error_handlers(app: FastAPI) -> None:
    """Every error as JSON ``{"error": "..."}`` (the page shows it as one line)."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _first_error(exc.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return JSONResponse({"error": "internal error"}, status_code=500)


def parse_texts(body: bytes, limits: Limits) -> list[str]:
    """The texts of a /classify body, else an HTTPException: 413 over `limits`, 422 otherwise.

    Any bytes get one of the two, never another exception, and in time linear in their length
    (the event loop parses them, so a slow parse would hold every other client's request)."""
    texts = _texts_of(load_json(body), limits.max_texts)
    chars = sum(len(t) for t in texts)
    if chars > limits.max_chars:
        raise HTTPException(413, f"{chars} characters; at most {limits.max_chars} per request")
    if not texts:
        raise HTTPException(422, "texts is empty: send at least one text")
    for i, text in enumerate(texts):
        if not text.strip():
            raise HTTPException(422, f"texts[{i}] is empty")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate such as "\ud800"
            raise HTTPException(422, f"texts[{i}] is not valid Unicode") from None
    return texts


def load_json(body: bytes) -> Any:
    """`body` as JSON, strictly: UTF-8 (RFC 8259; a leading BOM is ignored), no NaN or Infinity,
    no key twice in one object; 422 for anything else, including nesting too deep to parse."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HTTPException(
            422, f"the body is not valid JSON: not UTF-8 (byte {exc.start}); send UTF-8"
        ) from None
    try:
        # No number is ever valid in a request: float() parses one of any length in linear time,
        # where int() refuses 4,300 digits with advice for Python programmers.
        return json.loads(
            text, parse_int=float, parse_constant=_not_json, object_pairs_hook=_unique_keys
        )
    except RecursionError:  # e.g. 100,000 "[": the parser recurses once per level
        raise HTTPException(422, "the body is JSON nested too deeply to be a request") from None
    except ValueError as exc:
        raise HTTPException(422, f"the body is not valid JSON: {exc}") from None


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:  # parsers disagree on which of the two counts: refuse to guess
            raise HTTPException(422, f"invalid request: key {_short(key)!r} appears twice")
        seen.add(key)
    return dict(pairs)


def _texts_of(data: Any, max_texts: int) -> list[str]:
    """`data["texts"]` checked as `ClassifyRequest` would, in its words, but stopping at the first
    problem (after the count): pydantic lists them all, and 300,000 numbers took it 1.4 s."""
    if not isinstance(data, dict):
        raise HTTPException(422, 'invalid request: expected a JSON object like {"texts": ["..."]}')
    if "texts" not in data:
        raise HTTPException(422, "invalid request: texts: Field required")
    texts = data["texts"]
    if not isinstance(texts, list):
        raise HTTPException(422, "invalid request: texts: Input should be a valid list")
    if len(texts) > max_texts:
        raise HTTPException(413, f"{len(texts)} texts; at most {max_texts} per request")
    for i, text in enumerate(texts):
        if not isinstance(text, str):  # null included
            raise HTTPException(422, f"invalid request: texts.{i}: Input should be a valid string")
    extra = next((key for key in data if key != "texts"), None)
    if extra is not None:
        raise HTTPException(
            422, f"invalid request: {_short(extra)}: Extra inputs are not permitted"
        )
    return texts


def _short(key: str) -> str:
    """A client's key as an error message quotes it: at most 40 characters."""
    return key if len(key) <= 40 else key[:40] + "..."


def _first_error(errors: list[dict[str, Any]]) -> str:
    """One line from pydantic's error list, e.g. ``texts.2: Input should be a valid string``."""
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = first.get("msg", "invalid request")
    if first.get("type") == "model_type":
        message = 'expected a JSON object like {"texts": ["..."]}'
    return f"invalid request: {where}: {message}" if where else f"invalid request: {message}"


def describe(
    classifier: Classifier, limits: Limits, images: dict[str, Path] | None = None
) -> dict[str, Any]:
    """What GET /info returns: model, labels, text columns, limits, headline metrics and the
    names of the run's plots served under /run/ (empty without the page)."""
    metrics = classifier.metrics or {}
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "pr_auc", "n")
    multi = {}
    if classifier.multi_label:
        keys = ("subset_accuracy", "micro_f1", "macro_f1", "hamming_loss", "roc_auc", "n")
        multi = {
            "multi_label": True,
            "thresholds": dict(zip(classifier.labels, classifier.thresholds, strict=True)),
            "label_sep": classifier.label_sep,  # the page's CSV joins labels as predict_file does
        }
    return {
        "model": classifier.model_card(),
        "labels": classifier.labels,
        **multi,
        "text_columns": classifier.text_columns,
        "limits": asdict(limits),
        "metrics": {
            split: {k: metrics[split].get(k) for k in keys}
            for split in ("validation", "test")
            if isinstance(metrics.get(split), dict)
        },
        "images": sorted(images or {}),
        "version": _version(),
    }


# The report plots (run_report.PLOTS) the page may show. Only these names are served, each from the
# run directory: no part of a request's path ever reaches the file system.
RUN_IMAGES = ("confusion_matrix.png", "roc.png", "pr.png", "loss.png", "accuracy.png")


def run_images(directory: Path | None) -> dict[str, Path]:
    """The plots in RUN_IMAGES that `directory` holds, by file name."""
    if directory is None:
        return {}
    return {name: directory / name for name in RUN_IMAGES if (directory / name).is_file()}


def add_page(app: FastAPI, images: dict[str, Path]) -> dict[str, Path]:
    """GET / (static/index.html, shipped in the package) and GET /run/{name} (its images);
    returns `images`."""
    page = resources.files("gptclf").joinpath("static/index.html").read_text(encoding="utf-8")
    zipped = gzip.compress(page.encode(), mtime=0)  # readable source, a few KB on the wire
    headers = {
        "content-security-policy": page_policy(page),
        "x-content-type-options": "nosniff",
        "vary": "accept-encoding",
    }

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        if "gzip" in request.headers.get("accept-encoding", ""):
            return HTMLResponse(zipped, headers={**headers, "content-encoding": "gzip"})
        return HTMLResponse(page, headers=headers)

    @app.get("/run/{name}", include_in_schema=False)
    async def run_image(name: str) -> FileResponse:
        if name not in images:
            raise HTTPException(404, f"no image {name!r} in this run")
        return FileResponse(images[name], media_type="image/png")

    return images


def page_policy(page: str) -> str:
    """A Content-Security-Policy allowing the page's own inline script and style (by hash) and
    requests to this server only: the browser itself enforces that the page loads nothing else
    (no CDN, no font) and runs no injected script."""

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in bodies)
        return " ".join(f"'sha256-{d}'" for d in digests)

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


class BodyLimit:
    """ASGI middleware: read the whole request body, then replay it to the app.

    At most `max_bytes` (413 as soon as more arrives, chunked or not: the rest is never kept) within
    `timeout` seconds (408: a client that stalls, or trickles its body a byte at a time, gets its
    connection closed instead of holding a request open)."""

    def __init__(self, app, max_bytes: int, timeout: float = CLIENT_TIMEOUT):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        try:
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise HTTPException(413, f"request body over {self.max_bytes} bytes")
            body = await asyncio.wait_for(self._read(receive), self.timeout)
        except HTTPException as exc:
            await _send_json(send, exc.status_code, {"error": exc.detail})
            return
        except asyncio.TimeoutError:  # TimeoutError from Python 3.11; its own class in 3.10
            error = {"error": f"request body not received within {self.timeout:g} seconds"}
            await _send_json(send, 408, error, close=True)
            return
        if body is None:  # the client left
            return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as usual

        await self.app(scope, replay, send)

    async def _read(self, receive) -> bytes | None:
        """The body (None if the client disconnected); HTTPException 413 past `max_bytes`."""
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                raise HTTPException(413, f"request body over {self.max_bytes} bytes")
        return bytes(body)


async def _send_json(send, status: int, data: dict[str, Any], close: bool = False) -> None:
    payload = json.dumps(data).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if close:  # uvicorn closes the connection after this response
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class GuardedHTTP(AutoHTTPProtocol):
    """uvicorn's HTTP protocol (h11, or httptools where installed), with a deadline for headers
    and JSON for the 400 it answers a request that is not HTTP.

    uvicorn closes an idle connection after `timeout_keep_alive`, but only until its first byte:
    a client that then sends its headers slowly, or stops, would hold the connection forever
    (slowloris). Here a connection waiting for a request's headers is closed `client_timeout`
    seconds after it opened or after its last response; the body has its own deadline in
    `BodyLimit`. Subclass with `guarded_http(seconds)`."""

    client_timeout: float = CLIENT_TIMEOUT
    _headers_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._await_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._headers_deadline is not None:
            self._headers_deadline.cancel()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        if self._headers_deadline is not None:
            self._headers_deadline.cancel()
        self._headers_deadline = self.loop.call_later(
            self.client_timeout, self._headers_overdue, self.cycle
        )

    def _headers_overdue(self, cycle) -> None:
        # `cycle` is the request that was current when the clock started: the same one, answered,
        # means no new request's headers have arrived since.
        waiting = self.cycle is cycle and (cycle is None or cycle.response_complete)
        if waiting and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        payload = json.dumps({"error": "not a valid HTTP request"}).encode()
        head = (
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + payload)
        self.transport.close()


def guarded_http(client_timeout: float) -> type[GuardedHTTP]:
    """`GuardedHTTP` with `client_timeout` seconds for a request's headers."""
    return type("GuardedHTTP", (GuardedHTTP,), {"client_timeout": client_timeout})


def server_config(app: FastAPI, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for `app`: `app.state.client_timeout` seconds for headers (as for
    the body), and as long for requests in flight to finish on SIGTERM or Ctrl+C."""
    timeout = getattr(app.state, "client_timeout", CLIENT_TIMEOUT)
    return uvicorn.Config(
        app, http=guarded_http(timeout), timeout_graceful_shutdown=math.ceil(timeout), **options
    )


def _version() -> str:
    from gptclf import __version__

    return __version__


def serve(
    directory: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    batch_size: int = 32,
    ui: bool = True,
    client_timeout: float = CLIENT_TIMEOUT,
) -> None:
    """Load the classifier in `directory` and serve it until interrupted (`gptclf serve`).

    SIGTERM (a service manager's stop) is a clean exit: uvicorn stops taking connections, waits up
    to `client_timeout` seconds for requests in flight, and this returns."""
    check_client_timeout(client_timeout)
    app = create_app(Classifier.load(directory), limits, batch_size, ui, client_timeout)
    server = uvicorn.Server(server_config(app, host=host, port=port, log_level="info"))
    try:
        with sigterm_stops(server):
            server.run()
    except OSError as exc:
        raise GptclfError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    except SystemExit:  # uvicorn's way out when it cannot listen, after logging why
        if server.started:
            raise
        raise GptclfError(
            f"cannot serve on {host}:{port}: the port is taken or the address is not this "
            "machine's (uvicorn's error above)"
        ) from None


@contextmanager
def sigterm_stops(server: uvicorn.Server) -> Iterator[None]:
    """While the block runs, SIGTERM asks `server` to stop, and that is all it does.

    uvicorn takes SIGTERM for its graceful shutdown, then raises it again once done, so that the
    process dies of it (exit 143) under whatever handler was there before: with this one there,
    the stop that was asked for, and happened, ends in exit 0."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(
        signal.SIGTERM, lambda signum, frame: server.handle_exit(signum, frame)
    )
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` with uvicorn in a background thread (port 0: an ephemeral one); yields its URL.

    For tests and notebooks: the socket is bound before the thread starts, so the URL is valid
    as soon as it is yielded, and the server is stopped when the block exits.
    """
    # IPPROTO_TCP spelled out: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say so, and
    # with Nagle on, a response written in two parts waits for a delayed ACK (40 ms a request)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(server_config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            threading.Event().wait(0.01)
        if not server.started:
            raise RuntimeError("the server did not start")
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
