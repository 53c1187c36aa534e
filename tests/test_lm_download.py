"""load_lm by name: the hub download path, exercised against a loopback server."""

import socket

import pytest
import torch

from fixtures_gpt2 import make_tiny_hf_gpt2
from gptclf.errors import GptclfError
from gptclf.lm import load_lm
from gptclf.weights.registry import HF_GPT2_FILES


@pytest.fixture
def hub(http_server, monkeypatch, tmp_path):
    """A fake hub serving a tiny checkpoint as openai-community/gpt2; cache in tmp."""
    src = tmp_path / "src"
    src.mkdir()
    hf = make_tiny_hf_gpt2(src)
    for name in HF_GPT2_FILES:
        http_server.add_hf_file("openai-community/gpt2", name, (src / name).read_bytes())
    monkeypatch.setenv("GPTCLF_HF_ENDPOINT", http_server.url)
    monkeypatch.setenv("GPTCLF_HOME", str(tmp_path / "home"))
    return http_server, hf, tmp_path / "home"


def test_load_by_name_downloads_and_matches_transformers(hub):
    server, hf, home = hub
    lm = load_lm("gpt2", progress=False)
    cached = home / "hf" / "openai-community" / "gpt2" / "main"
    assert sorted(p.name for p in cached.iterdir()) == sorted(HF_GPT2_FILES)
    ids = torch.tensor([lm.tokenizer.encode("Hello, do you like tea?")])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)
    n_requests = len(server.requests)
    load_lm("gpt2-small", progress=False)  # second load: from the cache, no request
    assert len(server.requests) == n_requests


def test_interrupted_download_resumes(hub):
    server, hf, home = hub
    path = "openai-community/gpt2/resolve/main/model.safetensors"
    server.drop_after[path] = 100_000
    with pytest.raises(GptclfError, match="resume"):
        load_lm("gpt2", progress=False)
    lm = load_lm("gpt2", progress=False)
    assert server.gets(path)[-1] == "bytes=100000-"
    ids = torch.arange(12).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)


def test_corrupted_download_is_rejected(hub):
    server, _, home = hub
    server.bad_etag.add("openai-community/gpt2/resolve/main/model.safetensors")
    with pytest.raises(GptclfError, match="sha256"):
        load_lm("gpt2", progress=False)
    assert not (home / "hf/openai-community/gpt2/main/model.safetensors").exists()


def test_offline_is_a_clear_error(monkeypatch, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("GPTCLF_HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GPTCLF_HOME", str(tmp_path))
    with pytest.raises(GptclfError, match="offline"):
        load_lm("gpt2-medium", progress=False)
