"""Shared fixtures. ``http_server``: a loopback file server (ephemeral port) for download tests."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest


@dataclass
class FileServer:
    """A running ``serve_dir`` server: state and knobs. Paths are ``root``-relative, '/'-separated.

    Knobs (mutate them between requests):
    - ``drop_after[path] = k``: the next GET of ``path`` sends ``k`` body bytes, then closes the
      connection (one-shot: the entry is removed when used).
    - ``status[path] = code``: answer ``code`` (e.g. 404, 401) with an empty body.
    - ``bad_etag``: paths whose ``ETag`` is a wrong (but well-formed) sha256.
    - ``redirect[path] = target``: answer 302 to ``target`` with HF-style ``X-Linked-Etag``/-Size.
    - ``ranges = False``: ignore ``Range`` headers (always answer 200 with the whole file).
    ``requests`` records ``(method, path, range_header_or_None)`` for every request received.
    """

    root: Path
    url: str = ""
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    drop_after: dict[str, int] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    bad_etag: set[str] = field(default_factory=set)
    redirect: dict[str, str] = field(default_factory=dict)
    ranges: bool = True

    def add(self, path: str, data: bytes) -> str:
        """Write ``data`` to ``root/path`` and return its URL."""
        file = self.root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)
        return f"{self.url}/{path}"

    def add_hf_file(self, repo_id: str, filename: str, data: bytes, revision: str = "main") -> str:
        """Lay out a file as the hub serves it: ``{repo_id}/resolve/{revision}/{filename}``."""
        return self.add(f"{repo_id}/resolve/{revision}/{filename}", data)

    def gets(self, path: str) -> list[str | None]:
        """Range headers of the GET requests received for ``path`` (None: no Range)."""
        return [r for method, p, r in self.requests if method == "GET" and p == path]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer  # with a ``.state: FileServer`` attribute

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def do_GET(self) -> None:
        self._respond(body=True)

    def _respond(self, body: bool) -> None:
        state: FileServer = self.server.state
        path = unquote(urlsplit(self.path).path).lstrip("/")
        range_header = self.headers.get("Range")
        state.requests.append((self.command, path, range_header))
        file = state.root / state.redirect.get(path, path)
        if file.is_dir():  # a directory URL serves its index.html (e.g. a PyPI simple index)
            file = file / "index.html"
        if path in state.status or not file.is_file() or ".." in Path(path).parts:
            self.send_response(state.status.get(path, 404))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = file.read_bytes()
        if path in state.redirect:  # like the hub: the redirect carries the LFS file's hash
            self.send_response(302)
            self.send_header("Location", f"{state.url}/{state.redirect[path]}")
            self.send_header("X-Linked-Etag", f'"{_sha256(data)}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end, code = 0, len(data) - 1, 200
        if range_header and state.ranges and range_header.startswith("bytes="):
            first, _, last = range_header.removeprefix("bytes=").partition("-")
            start = int(first)
            end = min(int(last), end) if last else end
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            code = 206
        payload = data[start : end + 1]
        self.send_response(code)
        self.send_header("Content-Length", str(len(payload)))
        # pip only reads index pages served as HTML
        html = file.suffix == ".html"
        self.send_header("Content-Type", "text/html" if html else "application/octet-stream")
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        if data:
            etag = _sha256(b"wrong" + data) if path in state.bad_etag else _sha256(data)
            self.send_header("ETag", f'"{etag}"')
        self.end_headers()
        if not body:
            return
        if self.command == "GET" and path in state.drop_after:
            payload = payload[: state.drop_after.pop(path)]
            self.close_connection = True
        self.wfile.write(payload)


@contextmanager
def serve_dir(root: Path) -> Iterator[FileServer]:
    """Serve ``root`` over HTTP on 127.0.0.1 (ephemeral port) in a thread until the block exits."""
    state = FileServer(root=Path(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = state
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def http_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A ``FileServer`` serving the (initially empty) directory ``tmp_path / "www"``."""
    # A proxy configured in the environment must not intercept loopback requests.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    with serve_dir(root) as server:
        yield server


@pytest.fixture(scope="session")
def reviews_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classifier trained through the CLI, flags only, on a 3-class review CSV with
    unfamiliar column names (``fixtures_tool.py``); shared by the API, CLI and server tests."""
    from fixtures_tool import train_reviews

    return train_reviews(tmp_path_factory.mktemp("reviews"))


@pytest.fixture(scope="session")
def multilabel_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny multi-label classifier (topics, tuned thresholds) trained through the CLI
    (``fixtures_multilabel.py``); shared by the multi-label and page tests."""
    from fixtures_multilabel import train_topics

    return train_topics(tmp_path_factory.mktemp("multilabel"))
