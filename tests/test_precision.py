"""Inference precision of a loaded classifier: fp32, bf16 autocast, int8 dynamic quantization."""

import pytest
import torch

import gptclf.api
import gptclf.inference
from gptclf.api import Classifier
from gptclf.errors import GptclfError
from gptclf.inference import native_bf16, resolve_precision
from gptclf.train import fit
from test_train import small_split, tiny  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def run_dir(small_split, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("precision") / "run"
    fit(tiny(small_split, out, epochs=1, precision="bf16", report=False))
    return out


def test_default_is_the_training_precision_where_bf16_is_native(run_dir, monkeypatch):
    monkeypatch.setattr(gptclf.inference, "native_bf16", lambda device: True)
    assert Classifier.load(run_dir).precision == "bf16"
    # Where bf16 is only emulated (several times slower), the default falls back to fp32;
    # asking for bf16 still gets it.
    monkeypatch.setattr(gptclf.inference, "native_bf16", lambda device: False)
    assert Classifier.load(run_dir).precision == "fp32"
    assert Classifier.load(run_dir, precision="bf16").precision == "bf16"


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_trains_in_bf16_only_where_native(small_split, monkeypatch, native):  # noqa: F811
    monkeypatch.setattr(gptclf.inference, "native_bf16", lambda device: native)
    metrics = fit(tiny(small_split, epochs=1, precision="auto", report=False))
    # The record says what ran, not "auto": a checkpoint reloads in the precision it trained in.
    assert metrics["config"]["train_config"]["precision"] == ("bf16" if native else "fp32")


def test_resolve_precision():
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")
    with pytest.raises(GptclfError, match="--precision must be one of fp32, bf16, auto"):
        tiny("unused", precision="fp16")


def test_precisions_agree_closely(run_dir):
    texts = ["Free entry to win a prize, call now", "see you at lunch", "ok lor"]
    probs = {
        p: Classifier.load(run_dir, precision=p).predict_proba(texts)
        for p in ("fp32", "bf16", "int8")
    }
    torch.testing.assert_close(probs["bf16"], probs["fp32"], atol=0.02, rtol=0)
    torch.testing.assert_close(probs["int8"], probs["fp32"], atol=0.05, rtol=0)


def test_int8_quantizes_the_linear_layers(run_dir):
    clf = Classifier.load(run_dir, precision="int8")
    kinds = {type(m).__name__ for m in clf.model.modules()}
    assert "TokenInt8Linear" in kinds
    assert not any(type(m) is torch.nn.Linear for m in clf.model.modules())


def test_unknown_precision(run_dir):
    with pytest.raises(GptclfError, match="precision"):
        Classifier.load(run_dir, precision="fp8")
