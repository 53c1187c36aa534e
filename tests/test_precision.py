"""Inference precision of a loaded classifier: fp32, bf16 autocast, int8 dynamic quantization."""

import pytest
import torch

from gptclf.api import Classifier
from gptclf.errors import GptclfError
from gptclf.train import fit
from test_train import small_split, tiny  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def run_dir(small_split, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("precision") / "run"
    fit(tiny(small_split, out, epochs=1, precision="bf16", report=False))
    return out


def test_default_is_the_training_precision(run_dir):
    assert Classifier.load(run_dir).precision == "bf16"


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
    assert "Linear" in kinds and not any(type(m) is torch.nn.Linear for m in clf.model.modules())


def test_unknown_precision(run_dir):
    with pytest.raises(GptclfError, match="precision"):
        Classifier.load(run_dir, precision="fp8")
