"""A bounded load test of `gptclf serve`: a fixed number of requests from concurrent clients on
loopback, some of them malformed; every answer checked; latency percentiles and throughput.

    python benchmarks/serve_load.py RUN [--requests 1000] [--clients 50] [--malformed 0.1]
                                        [--texts 1] [--time-limit 300] [--record]
    python benchmarks/speed.py report   # the recorded runs: a section of docs/BENCHMARKS.md

Starts `gptclf serve RUN --port 0` in its own process, as deployed, and sends the requests from
this one (asyncio + httpx, one keep-alive connection per client, each client taking the next
request as soon as its last is answered). A good request carries `--texts` texts; its labels
must equal `Classifier.predict` on the same texts. A malformed one (not JSON, not UTF-8, nested
5,000 deep, a null, a wrong type, an empty text, a key twice, too many texts, a body over the
limit) must get its 4xx with a JSON error. The server is then stopped with SIGTERM and must exit
0. Latency is per request, from sending to the whole answer read, good requests only.

`--record` appends the result to benchmarks/results/serve_load.jsonl. tests/test_server_hardening.py
runs `run_load` against an in-process server (1,000 requests, 50 clients, the tiny model).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "serve_load.jsonl"
JSON = {"content-type": "application/json"}
WORDS = ["great", "awful", "fine", "refund", "love", "broke", "okay", "perfect", "waste", "normal"]


@dataclass(frozen=True)
class Planned:
    """One request: its body, and what it must get (texts None: malformed, answered `status`)."""

    what: str
    body: bytes
    texts: list[str] | None = None
    status: int = 200


@dataclass(frozen=True)
class Outcome:
    status: int  # 0: no answer (a connection error)
    seconds: float
    body: bytes


def malformed(limits: dict[str, int], max_body_bytes: int) -> list[Planned]:
    """One request of each malformed kind, for a server with these limits."""
    too_many = json.dumps({"texts": ["a"] * (limits["max_texts"] + 1)}).encode()
    return [
        Planned("not JSON", b"{texts: [oops]", status=422),
        Planned("not UTF-8", b'{"texts": ["caf\xe9"]}', status=422),
        Planned("nested 5,000 deep", b"[" * 5000 + b"]" * 5000, status=422),
        Planned("a null text", b'{"texts": ["ok", null]}', status=422),
        Planned("a string, not a list", b'{"texts": "one string"}', status=422),
        Planned("an empty text", b'{"texts": [""]}', status=422),
        Planned("a key twice", b'{"texts": ["a"], "texts": ["b"]}', status=422),
        Planned("too many texts", too_many, status=413),
        Planned("a body over the limit", b'["' + b"x" * max_body_bytes + b'"]', status=413),
    ]


def plan(
    n: int, malformed_share: float, texts_per_request: int, bad: list[Planned], seed: int = 0
) -> list[Planned]:
    """`n` requests, a `malformed_share` of them (rounded) cycling through `bad`, in random order."""
    rng = random.Random(seed)
    n_bad = round(n * malformed_share)
    requests = [bad[i % len(bad)] for i in range(n_bad)]
    for i in range(n - n_bad):
        texts = [
            f"Request {i}.{j}: it was {rng.choice(WORDS)} and {rng.choice(WORDS)}."
            for j in range(texts_per_request)
        ]
        requests.append(Planned("good", json.dumps({"texts": texts}).encode(), texts))
    rng.shuffle(requests)
    return requests


async def drive(
    url: str, requests: list[Planned], clients: int, time_limit: float
) -> list[Outcome]:
    """Send `requests` from `clients` concurrent connections; raises TimeoutError past
    `time_limit` seconds, so that a hung server fails the run instead of hanging it."""
    outcomes: list[Outcome | None] = [None] * len(requests)
    queue = iter(enumerate(requests))  # shared: each client takes the next request

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=time_limit, trust_env=False) as http:
            for i, request in queue:
                start = time.perf_counter()
                try:
                    reply = await http.post("/classify", content=request.body, headers=JSON)
                    status, body = reply.status_code, reply.content
                except httpx.HTTPError as exc:
                    status, body = 0, repr(exc).encode()
                outcomes[i] = Outcome(status, time.perf_counter() - start, body)

    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), time_limit)
    return outcomes  # type: ignore[return-value]


def answer(prediction: dict[str, Any]) -> Any:
    """What a prediction decides: the label (the labels when multi-label)."""
    return prediction.get("label", prediction.get("labels"))


def wrong_answer(request: Planned, outcome: Outcome, expected: dict[str, Any]) -> str | None:
    """Why `outcome` is not what `request` must get (None: it is)."""
    try:
        data = json.loads(outcome.body)
    except ValueError:
        return f"{request.what}: {outcome.status}, not JSON: {outcome.body[:200]!r}"
    if outcome.status != request.status:
        return f"{request.what}: {outcome.status} (expected {request.status}): {data}"
    if request.texts is None:
        return None if isinstance(data.get("error"), str) else f"{request.what}: no error: {data}"
    got = [answer(p) for p in data["predictions"]]
    want = [expected[t] for t in request.texts]
    return None if got == want else f"labels {got} for {request.texts}, predict says {want}"


def summarize(
    requests: list[Planned], outcomes: list[Outcome], expected: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """Counts, the wrong answers (at most 5 quoted), latency of the good requests in ms."""
    wrong = [
        w for r, o in zip(requests, outcomes, strict=True) if (w := wrong_answer(r, o, expected))
    ]
    good = sorted(o.seconds for r, o in zip(requests, outcomes, strict=True) if r.texts is not None)
    cuts = statistics.quantiles(good, n=100, method="inclusive") if len(good) > 1 else good * 99
    return {
        "requests": len(requests),
        "good": len(good),
        "malformed": len(requests) - len(good),
        "wrong": len(wrong),
        "wrong_examples": wrong[:5],
        "server_errors": sum(o.status >= 500 or o.status == 0 for o in outcomes),
        "p50_ms": round(1000 * cuts[49], 2),
        "p99_ms": round(1000 * cuts[98], 2),
        "max_ms": round(1000 * max(good, default=0.0), 2),
        "seconds": round(seconds, 3),
        "requests_per_second": round(len(requests) / seconds, 1),
    }


def run_load(
    url: str,
    expected_of,
    requests: int = 1000,
    clients: int = 50,
    malformed_share: float = 0.1,
    texts_per_request: int = 1,
    time_limit: float = 300.0,
) -> dict[str, Any]:
    """The whole load test against the server at `url`; `expected_of(texts)` gives the answers
    (`answer` of each prediction) that `Classifier.predict` gives."""
    info = httpx.get(f"{url}/info", trust_env=False, timeout=30).json()
    from gptclf.server import Limits

    bad = malformed(info["limits"], Limits(**info["limits"]).max_body_bytes)
    planned = plan(requests, malformed_share, texts_per_request, bad)
    texts = [t for r in planned if r.texts is not None for t in r.texts]
    expected = dict(zip(texts, expected_of(texts), strict=True))
    start = time.perf_counter()
    outcomes = asyncio.run(drive(url, planned, clients, time_limit))
    result = summarize(planned, outcomes, expected, time.perf_counter() - start)
    return {**result, "clients": clients, "texts_per_request": texts_per_request}


@contextmanager
def served(run: Path, *flags: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`gptclf serve RUN --port 0` in its own process; yields its URL and the process."""
    env = {**os.environ, "NO_PROXY": "127.0.0.1"}
    cmd = [sys.executable, "-m", "gptclf", "serve", str(run), "--port", "0", "--no-ui", *flags]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url, deadline = None, time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}")
            if match := re.search(r"running on (http://127\.0\.0\.1:\d+)", line):
                url = match.group(1)
        if url is None:
            raise RuntimeError("the server did not start within 120 s")
        # Keep reading its log (a line per request): a full pipe would stall the server.
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def measure(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The load test against `gptclf serve RUN`, then SIGTERM: the record of one run."""
    from gptclf import Classifier
    from gptclf.experiments.runner import hardware

    clf = Classifier.load(run)  # the reference answers, in this process

    def expected_of(texts: list[str]) -> list[Any]:
        return [answer(p.to_dict()) for p in clf.predict(texts)]

    load_before = os.getloadavg()
    with served(run) as (url, proc):
        result = run_load(
            url,
            expected_of,
            args.requests,
            args.clients,
            args.malformed,
            args.texts,
            args.time_limit,
        )
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(timeout=60)
    return {
        **result,
        "run": str(run),
        "model": clf.info.train_config.get("model"),
        "sigterm_exit_code": exit_code,
        "hardware": hardware()["summary"],
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def section(path: Path = RESULTS) -> list[str]:
    """docs/BENCHMARKS.md's section (called by speed.py's report): the latest run per model."""
    if not path.is_file():
        return []
    latest = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            latest[(record["model"], record["texts_per_request"])] = record
    lines = [
        "",
        "## `gptclf serve` under load (benchmarks/serve_load.py)",
        "",
        "`python benchmarks/serve_load.py RUN --record`: `gptclf serve RUN` in its own process on",
        "loopback, 1,000 requests from 50 concurrent keep-alive clients in this one, 10% of them",
        "malformed (not JSON, not UTF-8, nested 5,000 deep, nulls, wrong types, empty texts, a key",
        "twice, too many texts, a body over the limit), then SIGTERM. Wrong: answers that differ",
        "from `Classifier.predict` on the same texts, or malformed requests not given their 4xx.",
        "Latency: good requests, sent to answer read. Good requests carry short synthetic texts",
        "(`Request 12.0: it was great and fine.`). gpt2-tiny: the tests' tiny random model;",
        "smollm2-135m: `gptclf train --recipe smollm2` (the main job). Client and server share the",
        "machine; a load average well above its core count means other jobs shared it too, and an",
        'idle machine would do better ("bf16 emulated" would follow AVX512 without avx512_bf16).',
        "",
        "| model | texts/request | requests | wrong | 5xx | p50 ms | p99 ms | requests/s | "
        "SIGTERM exit | machine (load average before/after) | date |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in latest.values():
        lines.append(
            f"| {r['model']} | {r['texts_per_request']} | {r['requests']:,} ({r['malformed']} "
            f"malformed, {r['clients']} clients) | {r['wrong']} | {r['server_errors']} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['requests_per_second']:.0f} | "
            f"{r['sigterm_exit_code']} | {r['hardware']} ({r['load_average_before'][0]:.1f} / "
            f"{r['load_average_after'][0]:.1f}) | {r['finished'][:10]} |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a trained run directory (gptclf train --out)")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--malformed", type=float, default=0.1, help="share of malformed requests")
    p.add_argument("--texts", type=int, default=1, help="texts per good request")
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds for all requests")
    p.add_argument("--record", action="store_true", help=f"append the result to {RESULTS}")
    args = p.parse_args()
    record = measure(args.run, args)
    print(json.dumps(record, indent=2))
    if args.record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps(record) + "\n")
    if record["wrong"] or record["server_errors"] or record["sigterm_exit_code"] != 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
