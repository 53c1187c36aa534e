"""`gptclf serve` against requests as the internet sends them: raw sockets that stall, trickle,
lie about their length or are not HTTP; bodies over the limit sent in chunks; SIGTERM with a
request in flight; 1,000 requests from 50 clients, some malformed; and property tests of the
request parser (any JSON value, any bytes: a 4xx or the texts, never an exception)."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.exceptions import HTTPException

from gptclf import Classifier
from gptclf.server import Limits, create_app, parse_texts, running

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import serve_load  # noqa: E402

LIMITS = Limits(max_texts=8, max_chars=2000)
TIMEOUT = 1.5  # the served app's --client-timeout, short so that stalls are cut off quickly
LATE = (
    5 * TIMEOUT
)  # a stall cut off after this long was not cut off by the timeout (slow CI allowed)


@pytest.fixture(scope="module")
def clf(reviews_run: Path) -> Classifier:
    return Classifier.load(reviews_run)


@pytest.fixture(scope="module")
def url(clf: Classifier) -> Iterator[str]:
    with running(create_app(clf, LIMITS, client_timeout=TIMEOUT)) as base:
        yield base


@pytest.fixture(scope="module")
def roomy_url(clf: Classifier) -> Iterator[str]:
    """The default client timeout (30 s): stalled clients stay connected while others are served,
    and no good request of a loaded CI machine runs into the short one."""
    with running(create_app(clf, LIMITS)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as c:
        yield c


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def read_all(sock: socket.socket, limit: float = 30) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and the seconds that took."""
    start, data = time.monotonic(), b""
    sock.settimeout(limit)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic() - start


def json_error(response: bytes) -> tuple[int, dict]:
    """The status and JSON body of one raw HTTP response."""
    head, _, body = response.partition(b"\r\n\r\n")
    assert re.search(rb"content-type: application/json", head, re.I), response
    return int(head.split()[1]), json.loads(body)


def post_head(length: int | None = None, chunked: bool = False) -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    size += "Transfer-Encoding: chunked\r\n" if chunked else ""
    return f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{size}\r\n".encode()


def good_requests_answered(url: str, n: int = 10) -> bool:
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as c:
        replies = [c.post("/classify", json={"texts": [f"It was fine {i}."]}) for i in range(n)]
    return all(r.status_code == 200 for r in replies)


def test_stalled_headers_are_cut_off_while_others_are_served(url: str) -> None:
    """Slowloris: 20 connections that send part of their headers and stop; good requests go
    through meanwhile, and the stalled connections are closed after the client timeout."""
    stalled = [connect(url) for _ in range(20)]
    for sock in stalled:
        sock.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\n")
    assert good_requests_answered(url)
    for sock in stalled:
        data, seconds = read_all(sock)
        assert data == b"" and seconds < LATE  # closed, not left open forever
        sock.close()


def test_trickled_headers_are_cut_off(url: str) -> None:
    """Headers a line every 0.4 s never end: the connection is closed after the client timeout
    (uvicorn's own timeout stops at a connection's first byte)."""
    sock = connect(url)
    sock.sendall(b"POST /classify HTTP/1.1\r\n")
    start, closed = time.monotonic(), False
    while not closed and time.monotonic() - start < 10 * TIMEOUT:
        time.sleep(0.4)
        if select.select([sock], [], [], 0)[0]:
            closed = sock.recv(1) == b""
        else:
            sock.sendall(b"X-Slow: yes\r\n")
    assert closed and time.monotonic() - start < LATE
    sock.close()


@pytest.mark.parametrize("sent", [0, 10], ids=["no-body", "part-of-the-body"])
def test_a_stalled_body_is_408(url: str, sent: int) -> None:
    """Content-Length says 40 bytes, fewer come: 408 with a JSON error after the client timeout,
    the connection closed; others are served meanwhile."""
    sock = connect(url)
    sock.sendall(post_head(40) + b'{"texts": ["It was fine."]}'[:sent])
    assert good_requests_answered(url)
    data, seconds = read_all(sock)
    assert json_error(data) == (
        408,
        {"error": f"request body not received within {TIMEOUT:g} seconds"},
    )
    assert seconds < LATE
    sock.close()


def test_a_trickled_body_is_408(url: str) -> None:
    """A body sent a byte every 0.2 s takes longer than the client timeout in all: 408."""
    body = b'{"texts": ["It was fine, really quite fine."]}'
    sock = connect(url)
    sock.sendall(post_head(len(body)))
    answered = b""
    for byte in body:
        if select.select([sock], [], [], 0)[0]:
            answered, _ = read_all(sock)
            break
        sock.sendall(bytes([byte]))
        time.sleep(0.2)
    assert answered, "the whole body went through: the deadline did not apply"
    assert json_error(answered)[0] == 408
    sock.close()


def test_a_keep_alive_connection_stalling_in_its_next_request_is_closed(url: str) -> None:
    sock = connect(url)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /hea")
    data, seconds = read_all(sock)
    assert data.endswith(b'{"status":"ok"}') and seconds < LATE
    sock.close()


def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(url: str) -> None:
    """No Content-Length, 64 KiB chunks: the 413 comes while the client is still sending, long
    before the 64 MiB it would send; what the server read is bounded by the limit."""
    sock = connect(url)
    sock.sendall(post_head(chunked=True) + b"5\r\n" + b'["xxx' + b"\r\n")
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    sent = 0
    sock.settimeout(5)
    while sent < 1024 and not select.select([sock], [], [], 0)[0]:
        try:
            sock.sendall(chunk)
        except OSError:
            break
        sent += 1
    assert sent < 1024, "the whole 64 MiB went out: nothing refused it while it arrived"
    data, _ = read_all(sock, limit=LATE)
    assert json_error(data) == (413, {"error": f"request body over {LIMITS.max_body_bytes} bytes"})
    sock.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"hello\r\n\r\n",
        b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
        b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"POST /classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["not-http", "negative-length", "two-lengths", "bad-chunk"],
)
def test_requests_that_are_not_http_get_a_json_400(url: str, request_bytes: bytes) -> None:
    sock = connect(url)
    sock.sendall(request_bytes)
    data, _ = read_all(sock)
    assert json_error(data) == (400, {"error": "not a valid HTTP request"})
    sock.close()


@pytest.mark.parametrize(
    ("tail", "statuses"), [(b"", [422]), (b"\r\n\r\n", [422, 400])], ids=["cut", "ends"]
)
def test_a_content_length_shorter_than_the_body(url: str, tail: bytes, statuses: list) -> None:
    """Content-Length 5 with a longer body: those 5 bytes are the request (422: not JSON); the
    rest is read as the next request on the connection: 400 (not HTTP) once it ends in a blank
    line, else it is an unfinished request, closed after the client timeout."""
    sock = connect(url)
    sock.sendall(post_head(5) + b'{"texts": ["It was fine."]}' + tail)
    data, seconds = read_all(sock)
    responses = [b"HTTP/1.1 " + r for r in data.split(b"HTTP/1.1 ")[1:]]
    assert [json_error(r)[0] for r in responses] == statuses
    assert seconds < LATE
    sock.close()


def test_a_body_of_300000_numbers_is_refused_quickly() -> None:
    """The body limit's worth of `1,` (default limits): 413 at once. pydantic, which used to
    check bodies, listed an error per number: 1.4 s with the event loop held."""
    body = b'{"texts": [' + b"1," * 299_000 + b"1]}"
    assert len(body) < Limits().max_body_bytes
    start = time.perf_counter()
    with pytest.raises(HTTPException) as caught:
        parse_texts(body, Limits())
    assert caught.value.status_code == 413 and time.perf_counter() - start < 0.5


def start_serve(run: Path, *flags: str) -> tuple[subprocess.Popen, int]:
    """`gptclf serve RUN --port 0` in its own process; returns it and its port."""
    env = {**os.environ, "NO_PROXY": "127.0.0.1"}
    cmd = [sys.executable, "-m", "gptclf", "serve", str(run), "--port", "0", *flags]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if match := re.search(r"running on http://127\.0\.0\.1:(\d+)", line):
            return proc, int(match.group(1))
        assert line or proc.poll() is None, "the server exited"
    proc.kill()
    raise AssertionError("the server did not start")


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(reviews_run: Path) -> None:
    """SIGTERM while a request is half sent: no new connections, the request completes with 200,
    then `gptclf serve` exits 0 (uvicorn re-raised the signal: the process died of it, -15)."""
    proc, port = start_serve(reviews_run, "--no-ui", "--client-timeout", "20")
    try:
        body = b'{"texts": ["It was great.", "It was awful."]}'
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(post_head(len(body)) + body[:10])
        time.sleep(0.2)  # the server has the headers: the request is in flight
        proc.send_signal(signal.SIGTERM)
        while "Shutting down" not in (line := proc.stderr.readline()):
            assert line, "the server exited without shutting down"
        # uvicorn logs "Shutting down" just before it closes the listening socket: poll
        deadline = time.monotonic() + 10
        while True:  # until no longer accepting connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                break
            assert time.monotonic() < deadline, "still accepting connections 10 s after SIGTERM"
            time.sleep(0.02)
        sock.sendall(body[10:])
        data, _ = read_all(sock)
        assert data.startswith(b"HTTP/1.1 200 ")
        assert len(json.loads(data.partition(b"\r\n\r\n")[2])["predictions"]) == 2
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_taken_port_is_one_error_line(reviews_run: Path, capsys) -> None:
    """uvicorn logs why it cannot listen and exits 3 (SystemExit): `gptclf serve` says it in its
    own one line and exits 2, as for any other bad input."""
    from gptclf.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["serve", str(reviews_run), "--port", port, "--no-ui"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gptclf:")]
    assert len(errors) == 1 and f"cannot serve on 127.0.0.1:{port}" in errors[0], errors


def test_1000_requests_from_50_clients_some_malformed(roomy_url: str, clf: Classifier) -> None:
    """The bounded load test: every good request answered with `predict`'s labels, each malformed
    one with its 4xx, none 5xx, within a time limit (so that a hang fails, not blocks, CI)."""

    def expected_of(texts: list[str]) -> list[str]:
        return [p.label for p in clf.predict(texts)]

    result = serve_load.run_load(
        roomy_url, expected_of, 1000, 50, malformed_share=0.1, time_limit=120
    )
    print(json.dumps(result))  # p50/p99 in the test log (-s)
    assert result["wrong"] == 0, result["wrong_examples"]
    assert result["server_errors"] == 0
    assert (result["good"], result["malformed"]) == (900, 100)


# --- the request parser, property-based ----------------------------------------------------


def json_containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    json_containers,
    max_leaves=20,
)
# Values shaped like requests reach the deeper checks more often than arbitrary ones.
REQUEST_LIKE = st.dictionaries(
    st.sampled_from(["texts", "text", "extra"]), JSON_VALUES | st.lists(JSON_VALUES), max_size=2
)
GOOD_TEXTS = st.lists(
    st.text(min_size=1, max_size=200).filter(str.strip), min_size=1, max_size=LIMITS.max_texts
)


def encode(value: object, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def parsed(body: bytes) -> list[str] | int:
    """The texts, or the status of the HTTPException; any other exception fails the test."""
    try:
        return parse_texts(body, LIMITS)
    except HTTPException as exc:
        assert 400 <= exc.status_code < 500 and str(exc.detail), exc
        return exc.status_code


@settings(max_examples=200, deadline=None)
@given(value=JSON_VALUES | REQUEST_LIKE, ascii_only=st.booleans())
def test_any_json_value_parses_to_texts_or_a_4xx(value: object, ascii_only: bool) -> None:
    result = parsed(encode(value, ascii_only))
    if isinstance(result, list):
        assert value == {"texts": result}


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300) | JSON_VALUES.map(lambda v: encode(v, True)[:-1]))
def test_any_bytes_parse_to_texts_or_a_4xx(body: bytes) -> None:
    parsed(body)  # random bytes, and JSON cut short


@settings(max_examples=200, deadline=None)
@given(texts=GOOD_TEXTS, ascii_only=st.booleans())
def test_valid_requests_parse_to_their_texts(texts: list[str], ascii_only: bool) -> None:
    if sum(map(len, texts)) <= LIMITS.max_chars:
        assert parsed(encode({"texts": texts}, ascii_only)) == texts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON_VALUES | REQUEST_LIKE)
def test_the_server_answers_any_json_with_a_json_4xx_or_200(value: object, client) -> None:
    reply = client.post("/classify", content=encode(value, False))
    assert reply.status_code == 200 or 400 <= reply.status_code < 500, reply.text
    assert "predictions" in reply.json() or isinstance(reply.json()["error"], str)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=GOOD_TEXTS)
def test_the_server_answers_valid_requests_with_200(texts: list[str], client) -> None:
    reply = client.post("/classify", content=encode({"texts": texts}, False))
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["predictions"]) == len(texts)


def test_a_stalled_client_does_not_hold_the_worker(roomy_url: str) -> None:
    """While 50 clients hold requests half sent (30 s allowed), 100 good ones are all answered."""
    stalled = [connect(roomy_url) for _ in range(50)]
    for sock in stalled:
        sock.sendall(post_head(100) + b'{"texts": [')
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda _: good_requests_answered(roomy_url), range(10)))
    assert all(results) and time.monotonic() - start < 25  # before any stalled one times out
    for sock in stalled:
        sock.close()
