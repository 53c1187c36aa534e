"""Download tests against the loopback ``http_server`` fixture (no network)."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from gptclf.download import (
    _etag_sha256,
    cache_dir,
    download_file,
    fetch_hf_files,
    hf_endpoint,
    hf_file_url,
)
from gptclf.errors import GptclfError

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


def test_full_download_checks_hash(http_server, tmp_path):
    url = http_server.add("model.bin", DATA)
    dest = tmp_path / "out" / "model.bin"
    assert download_file(url, dest, sha256=SHA) == dest  # progress bar on (tqdm hides it off-TTY)
    assert dest.read_bytes() == DATA
    assert not dest.with_name("model.bin.part").exists()
    assert http_server.gets("model.bin") == [None]
    # Present (and matching): no new request.
    download_file(url, dest, sha256=SHA, progress=False)
    assert len(http_server.requests) == 1


def test_resume_after_dropped_connection(http_server, tmp_path):
    url = http_server.add("model.bin", DATA)
    http_server.drop_after["model.bin"] = 100_000
    dest = tmp_path / "model.bin"
    with pytest.raises(GptclfError, match="resume"):
        download_file(url, dest, progress=False)
    part = tmp_path / "model.bin.part"
    assert part.stat().st_size == 100_000 and not dest.exists()
    download_file(url, dest, progress=False)  # hash from the server's ETag
    assert dest.read_bytes() == DATA
    assert http_server.gets("model.bin") == [None, "bytes=100000-"]


def test_server_ignoring_range_restarts(http_server, tmp_path):
    url = http_server.add("model.bin", DATA)
    (tmp_path / "model.bin.part").write_bytes(b"x" * 1000)  # garbage a resume would keep
    http_server.ranges = False
    download_file(url, tmp_path / "model.bin", progress=False)
    assert (tmp_path / "model.bin").read_bytes() == DATA


def test_416_restarts(http_server, tmp_path):
    url = http_server.add("model.bin", DATA)
    (tmp_path / "model.bin.part").write_bytes(b"x" * (len(DATA) + 10))
    download_file(url, tmp_path / "model.bin", progress=False)
    assert (tmp_path / "model.bin").read_bytes() == DATA
    assert http_server.gets("model.bin") == [f"bytes={len(DATA) + 10}-", None]


@pytest.mark.parametrize("source", ["argument", "etag"])
def test_wrong_hash_raises_and_leaves_nothing(http_server, tmp_path, source):
    url = http_server.add("model.bin", DATA)
    sha = "0" * 64 if source == "argument" else None
    if source == "etag":
        http_server.bad_etag.add("model.bin")
    dest = tmp_path / "model.bin"
    with pytest.raises(GptclfError, match=f"model.bin.*expected .*got {SHA}"):
        download_file(url, dest, sha256=sha, progress=False)
    assert not dest.exists() and not dest.with_name("model.bin.part").exists()


def test_hub_redirect_linked_etag_wins(http_server, tmp_path):
    """The hub's 302 carries X-Linked-Etag; it is preferred over the CDN's ETag."""
    http_server.add("cdn/blob", DATA)
    url = f"{http_server.url}/org/m/resolve/main/model.bin"
    http_server.redirect["org/m/resolve/main/model.bin"] = "cdn/blob"
    http_server.bad_etag.add("cdn/blob")
    download_file(url, tmp_path / "model.bin", progress=False)
    assert (tmp_path / "model.bin").read_bytes() == DATA


@pytest.mark.parametrize("code", [404, 401, 500])
def test_http_error_status(http_server, tmp_path, code):
    url = http_server.add("model.bin", DATA)
    http_server.status["model.bin"] = code
    with pytest.raises(GptclfError, match=f"HTTP {code}"):
        download_file(url, tmp_path / "model.bin", progress=False)


def test_missing_file_is_404(http_server, tmp_path):
    with pytest.raises(GptclfError, match="HTTP 404"):
        download_file(f"{http_server.url}/nope.bin", tmp_path / "nope.bin", progress=False)


def test_connection_refused_mentions_offline(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "model.bin"
    with pytest.raises(
        GptclfError, match=rf"cannot download .*offline\? put the files in {tmp_path}"
    ):
        download_file(f"http://127.0.0.1:{port}/model.bin", dest, progress=False, timeout=2)
    assert not dest.exists()


def test_env_settings(monkeypatch, tmp_path):
    monkeypatch.delenv("GPTCLF_HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert hf_endpoint() == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror/")
    assert hf_file_url("org/m", "a/b.json") == "http://mirror/org/m/resolve/main/a/b.json"
    monkeypatch.setenv("GPTCLF_HF_ENDPOINT", "http://local")
    assert hf_endpoint() == "http://local"
    monkeypatch.delenv("GPTCLF_HOME", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "gptclf"
    monkeypatch.setenv("GPTCLF_HOME", str(tmp_path))
    assert cache_dir() == tmp_path


@pytest.mark.parametrize(
    ("etag", "expected"),
    [(f'"{SHA}"', SHA), (f'W/"{SHA.upper()}"', SHA), ('"abc"', None), (None, None)],
)
def test_etag_parsing(etag, expected):
    assert _etag_sha256(etag) == expected


def test_fetch_hf_files_layout_and_cache(http_server, monkeypatch, tmp_path):
    monkeypatch.setenv("GPTCLF_HF_ENDPOINT", http_server.url + "/")
    monkeypatch.setenv("GPTCLF_HOME", str(tmp_path / "home"))
    files = {"config.json": b'{"n_layer": 2}', "model.safetensors": DATA}
    for name, data in files.items():
        http_server.add_hf_file("org/tiny-gpt", name, data)

    directory = fetch_hf_files("org/tiny-gpt", list(files), progress=False)
    assert directory == tmp_path / "home" / "hf" / "org/tiny-gpt" / "main"
    for name, data in files.items():
        assert (directory / name).read_bytes() == data
    assert len(http_server.requests) == 2

    assert fetch_hf_files("org/tiny-gpt", list(files), progress=False) == directory
    assert len(http_server.requests) == 2  # nothing refetched


def test_fetch_hf_files_rejects_escaping_names(monkeypatch, tmp_path):
    monkeypatch.setenv("GPTCLF_HOME", str(tmp_path))
    with pytest.raises(GptclfError, match="invalid file name"):
        fetch_hf_files("org/m", ["../evil"], progress=False)
