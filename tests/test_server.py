"""The HTTP service: a real uvicorn server on an ephemeral loopback port, a real HTTP client."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gptclf import Classifier
from gptclf.server import Limits, create_app, running


@pytest.fixture(scope="module")
def clf(reviews_run: Path) -> Classifier:
    return Classifier.load(reviews_run)


@pytest.fixture(scope="module")
def url(clf: Classifier) -> Iterator[str]:
    with running(create_app(clf, Limits(max_texts=8, max_chars=2000))) as base:
        yield base


@pytest.fixture
def client(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as c:
        yield c


def test_health_and_info(client: httpx.Client, clf: Classifier) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["labels"] == ["negative", "neutral", "positive"]
    assert info["text_columns"] == ["headline", "review_body"]
    assert info["limits"] == {"max_texts": 8, "max_chars": 2000}
    assert info["metrics"]["test"]["accuracy"] == clf.metrics["test"]["accuracy"]
    assert info["model"]["base"]["name"] == "gpt2-tiny"


def test_classify_equals_the_api(client: httpx.Client, clf: Classifier) -> None:
    texts = ["It was great love.", "It was awful refund.", "It was fine."]
    response = client.post("/classify", json={"texts": texts})
    assert response.status_code == 200
    got = response.json()["predictions"]
    for g, p in zip(got, clf.predict(texts), strict=True):
        assert g["label"] == p.label
        assert g["probabilities"] == pytest.approx(p.probabilities, abs=1e-5)
        assert g["probability"] == max(g["probabilities"].values())
    # curl -d sends a form content type: the JSON body is accepted all the same
    raw = client.post(
        "/classify",
        content=json.dumps({"texts": texts[:1]}),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert raw.status_code == 200 and raw.json()["predictions"][0]["label"] == got[0]["label"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"texts": ["a"] * 9}, 413, "9 texts; at most 8"),
        ({"texts": ["x" * 1500, "y" * 501]}, 413, "2001 characters; at most 2000"),
        ({"texts": []}, 422, "texts is empty"),
        ({"texts": ["ok", "  "]}, 422, "texts[1] is empty"),
        ({"texts": "one string"}, 422, "texts: Input should be a valid list"),
        ({"texts": ["ok", 3]}, 422, "texts.1: Input should be a valid string"),
        ({"texts": ["ok"], "extra": 1}, 422, "extra: Extra inputs are not permitted"),
        ({"text": ["ok"]}, 422, "texts: Field required"),
        (["ok"], 422, "expected a JSON object"),
    ],
)
def test_bad_requests_are_json_errors(
    client: httpx.Client, body: object, status: int, message: str
) -> None:
    response = client.post("/classify", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b"not json", 422, "not valid JSON"),
        (b"", 422, "not valid JSON"),
        (b"null", 422, "expected a JSON object"),
        (b'{"texts": ["caf\xe9"]}', 422, "not valid JSON"),  # not UTF-8
        (b'{"texts": ["\\ud800"]}', 422, "texts[0] is not valid Unicode"),  # lone surrogate
        (b'{"texts": ["' + b"x" * 20_000 + b'"]}', 413, "request body over"),
    ],
)
def test_bad_bodies(client: httpx.Client, content: bytes, status: int, message: str) -> None:
    response = client.post("/classify", content=content)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_chunked_oversized_body_is_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        yield b'{"texts": ["'
        for _ in range(40):
            yield b"x" * 1000
        yield b'"]}'

    response = client.post("/classify", content=chunks())
    assert response.status_code == 413 and "body over" in response.json()["error"]


def test_unknown_routes_are_json(client: httpx.Client) -> None:
    assert client.get("/nope").status_code == 404
    assert client.get("/classify").json() == {"error": "Method Not Allowed"}


def test_200_concurrent_requests(url: str, clf: Classifier, monkeypatch) -> None:
    """200 small requests at once (one connection each): every one answered 200, correctly."""
    texts = [f"It was {w} and {v}." for w in ("great", "awful", "fine", "okay") for v in range(50)]
    expected = {p.text: p.label for p in clf.predict(texts)}
    calls = []
    original = Classifier.predict

    def counting(self, batch, batch_size=32):
        calls.append(len(batch))
        return original(self, batch, batch_size)

    monkeypatch.setattr(Classifier, "predict", counting)
    start = threading.Barrier(200)

    def one(text: str) -> tuple[int, str]:
        with httpx.Client(base_url=url, timeout=60, trust_env=False) as c:
            start.wait(timeout=60)  # all 200 leave together
            response = c.post("/classify", json={"texts": [text]})
        return response.status_code, response.json()["predictions"][0]["label"]

    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(one, texts))
    assert [status for status, _ in results] == [200] * 200
    assert [label for _, label in results] == [expected[t] for t in texts]
    assert sum(calls) == 200 and len(calls) < 200  # concurrent requests shared model calls


def test_one_failing_request_does_not_fail_its_batch(clf: Classifier) -> None:
    from gptclf.server import Batcher

    batcher = Batcher(clf)
    try:
        futures = [batcher.submit(["fine"]), batcher.submit([""]), batcher.submit(["bad"])]
        assert futures[0].result(timeout=30)[0].label in clf.labels
        with pytest.raises(Exception, match="empty"):
            futures[1].result(timeout=30)
        assert futures[2].result(timeout=30)[0].text == "bad"
    finally:
        batcher.close()
