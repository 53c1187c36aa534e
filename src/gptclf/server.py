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
``{"error": "..."}``: 413 for too many texts, characters or bytes; 422 for a malformed body or an
empty text; 500 only for a bug.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import logging
import queue
import re
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
    from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError
    from starlette.exceptions import HTTPException
except ImportError as exc:  # the CLI turns this into one line
    raise GptclfError(
        f"`gptclf serve` needs FastAPI and uvicorn: pip install 'gptclf[serve]' ({exc.name})"
    ) from None

log = logging.getLogger(__name__)


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
    classifier: Classifier, limits: Limits | None = None, batch_size: int = 32, ui: bool = True
) -> FastAPI:
    """The FastAPI application serving `classifier` (and, with `ui`, the page at /)."""
    limits = limits or Limits()
    batcher: Batcher | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal batcher
        batcher = Batcher(classifier, batch_size)
        yield
        await asyncio.to_thread(batcher.close)

    app = FastAPI(title="gptclf", version=_version(), lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    images = add_page(app, run_images(classifier.directory)) if ui else {}

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
        try:
            data = json.loads(await request.body())
        except ValueError as exc:  # includes UnicodeDecodeError
            raise HTTPException(422, f"the body is not valid JSON: {exc}") from None
        try:
            texts = ClassifyRequest.model_validate(data).texts
        except ValidationError as exc:
            raise HTTPException(422, _first_error(exc.errors())) from None
        if len(texts) > limits.max_texts:
            raise HTTPException(413, f"{len(texts)} texts; at most {limits.max_texts} per request")
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
        assert batcher is not None, "the lifespan starts the batcher"
        try:
            preds: list[Prediction] = await asyncio.wrap_future(batcher.submit(texts))
        except GptclfError as exc:  # e.g. a text that encodes to no tokens
            raise HTTPException(422, str(exc)) from None
        return {"predictions": [p.to_dict() for p in preds]}

    return app


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
    info = classifier.info
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
        "model": {
            "base": info.base,
            "train_model": info.train_config.get("model"),
            "pool": info.pool,
            "max_length": info.max_length,
            "truncation": classifier.truncation,
            "trainable": info.train_config.get("trainable"),
        },
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
    """ASGI middleware: read the request body up to `max_bytes` (413 above), then replay it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_json(send, 413, {"error": f"request body over {self.max_bytes} bytes"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await _send_json(send, 413, {"error": f"request body over {self.max_bytes} bytes"})
                return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as usual

        await self.app(scope, replay, send)


async def _send_json(send, status: int, data: dict[str, Any]) -> None:
    payload = json.dumps(data).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


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
) -> None:
    """Load the classifier in `directory` and serve it until interrupted (`gptclf serve`)."""
    app = create_app(Classifier.load(directory), limits, batch_size, ui)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
    except OSError as exc:  # e.g. the port is taken
        raise GptclfError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


@contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` with uvicorn in a background thread (port 0: an ephemeral one); yields its URL.

    For tests and notebooks: the socket is bound before the thread starts, so the URL is valid
    as soon as it is yielded, and the server is stopped when the block exits.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
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
