"""`--int8-prefix`: the frozen blocks in int8 (per-channel weights, per-token activations), the
same at training and at every load; export and a mismatched resume refuse; cache keys differ;
no quantized engine (or CUDA): a warning and fp32, recorded as such."""

import logging
import warnings

import pytest
import torch
from torch import nn

import gptclf.quantize
from gptclf import resume
from gptclf.api import Classifier
from gptclf.classifier import SequenceClassifier, set_trainable
from gptclf.config import ModelConfig
from gptclf.data import load_dataset
from gptclf.errors import GptclfError
from gptclf.export import export
from gptclf.model import GPT
from gptclf.prefix_cache import store_key
from gptclf.quantize import (
    TokenInt8Linear,
    int8_blocks,
    int8_prefix_runs,
    quantize_linears,
    quantize_prefix,
)
from gptclf.train import fit, fit_run
from test_train import small_split, tiny  # noqa: F401  (fixture)

INT8 = dict(int8_prefix=True, trainable="last_block", pool="last_real", padding="dynamic")


def test_token_int8_linear_is_close_to_fp32_and_independent_of_the_batch():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    q = TokenInt8Linear(linear)
    x = torch.randn(5, 7, 64)
    x[0, 0] *= 100  # an outlier token (like a first token's massive activation)
    with torch.inference_mode():
        exact, y = linear(x), q(x)
        assert y.shape == exact.shape
        # per-token scales: the outlier token does not coarsen the others' grid
        assert (y[1:] - exact[1:]).abs().max() < 0.05 * exact[1:].abs().max()
        # a row alone gives exactly what it gives among others
        assert torch.equal(q(x[2:3]), y[2:3])
        # torch's dynamic quantization (one scale per tensor) does depend on the batch
        with warnings.catch_warnings():  # torch 2.13 marks it deprecated (torchao)
            warnings.simplefilter("ignore")
            per_tensor = torch.ao.quantization.quantize_dynamic(
                nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8
            )
        assert not torch.equal(per_tensor(x[2:3]), per_tensor(x)[2:3])


def tiny_classifier(spec="last_block"):
    config = ModelConfig.from_name("gpt2-tiny", vocab_size=100, n_layer=3)
    model = SequenceClassifier(GPT(config), 2, "last_real")
    set_trainable(model, spec)
    return model


def test_quantize_prefix_keeps_the_fp32_state_and_quantizes_only_frozen_blocks():
    model = tiny_classifier("last_block")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert quantize_prefix(model) == 2 and int8_blocks(model) == 2
    after = model.state_dict()
    assert before.keys() == after.keys()  # the checkpoint stays fp32, under the same keys
    assert all(torch.equal(before[k], after[k]) for k in before)
    kinds = [{type(m) for m in block.modules()} for block in model.backbone.h]
    assert TokenInt8Linear in kinds[0] and TokenInt8Linear in kinds[1]
    assert TokenInt8Linear not in kinds[2] and nn.Linear in kinds[2]
    assert quantize_prefix(tiny_classifier("all")) == 0  # nothing frozen: nothing in int8


def test_cache_key_differs_with_int8_prefix():
    splits = {"train": [[1, 2, 3]], "validation": [[4, 5]], "test": [[6]]}
    fp32, int8 = tiny_classifier(), tiny_classifier()
    quantize_prefix(int8)
    assert store_key(fp32, splits, 2) != store_key(int8, splits, 2)


@pytest.fixture(scope="module")
def int8_run(small_split, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("int8") / "run"
    run = fit_run(tiny(small_split, out, epochs=2, report=False, **INT8))
    return out, run


def test_trains_and_predicts_with_int8_prefix(int8_run, small_split):  # noqa: F811
    out, run = int8_run
    assert run.metrics["config"]["train_config"]["int8_prefix"] is True
    assert run.metrics["cached_from_block"] == 1 and int8_blocks(run.model) == 1
    clf = Classifier.load(out)
    assert int8_blocks(clf.model) == 1  # gpt2-tiny has 2 blocks; the last one trained
    test = load_dataset(small_split / "test.csv")
    probs = clf.predict_proba(test.texts)
    # the checkpoint round trip: the probabilities training's final evaluation computed
    torch.testing.assert_close(probs, run.logits["test"].softmax(-1), atol=1e-5, rtol=0)
    metrics = clf.evaluate(test)
    assert metrics["accuracy"] == pytest.approx(run.metrics["test"]["accuracy"])
    # and not what the same weights give with an fp32 prefix
    monkey = pytest.MonkeyPatch()
    monkey.setattr(gptclf.quantize, "quantized_engines", lambda: [])
    fp32 = Classifier.load(out)
    monkey.undo()
    assert int8_blocks(fp32.model) == 0
    assert not torch.equal(fp32.predict_proba(test.texts), probs)


def test_export_refuses_an_int8_prefix_checkpoint(int8_run, tmp_path):
    out, _ = int8_run
    for format in ("onnx", "hf"):
        with pytest.raises(GptclfError, match="--int8-prefix") as err:
            export(out, tmp_path / format, format)
        assert "\n" not in str(err.value)
        assert not (tmp_path / format).exists()


def test_resume_refuses_another_int8_prefix(small_split, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(resume, "finished", lambda run: None)  # keep the state, as a killed run
    fit(tiny(small_split, tmp_path, epochs=1, report=False, baseline=False, **INT8))
    assert resume.state_path(tmp_path).is_file()
    other = {**INT8, "int8_prefix": False}
    with pytest.raises(GptclfError, match="--int8-prefix was True, now False"):
        fit(
            tiny(
                small_split, tmp_path, epochs=1, report=False, baseline=False, resume=True, **other
            )
        )


def test_no_quantized_engine_warns_and_runs_fp32(small_split, tmp_path, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setattr(gptclf.quantize, "quantized_engines", lambda: [])
    with caplog.at_level(logging.WARNING):
        metrics = fit(tiny(small_split, tmp_path / "run", epochs=1, report=False, **INT8))
    warned = [r.getMessage() for r in caplog.records if "--int8-prefix" in r.getMessage()]
    assert len(warned) == 1 and "no quantized engine" in warned[0] and "\n" not in warned[0]
    # what ran is what is recorded: loading computes the same (fp32) prefix
    assert metrics["config"]["train_config"]["int8_prefix"] is False
    monkeypatch.undo()
    assert int8_blocks(Classifier.load(tmp_path / "run").model) == 0


def test_cuda_warns_and_runs_without_int8(caplog):
    with caplog.at_level(logging.WARNING):
        assert int8_prefix_runs("cuda") is False
    assert "CPU only" in caplog.text
    assert int8_prefix_runs("cpu") is bool(gptclf.quantize.quantized_engines())


def test_int8_inference_precision_over_an_int8_prefix(int8_run, small_split):  # noqa: F811
    out, _ = int8_run
    clf = Classifier.load(out, precision="int8")  # the rest quantized too; the prefix stays
    assert int8_blocks(clf.model) == len(clf.model.backbone.h)
    assert not any(type(m) is nn.Linear for m in clf.model.modules())
    assert clf.predict_proba(load_dataset(small_split / "test.csv").texts[:4]).shape == (4, 2)


def test_precision_int8_gives_every_text_its_own_scales():
    """`--precision int8`: a text's probabilities are the same alone and in any batch."""
    torch.manual_seed(0)
    model = tiny_classifier("all").eval()
    quantize_linears(model)
    kinds = {type(m) for m in model.modules()}
    assert TokenInt8Linear in kinds and nn.Linear not in kinds  # the head too
    ids = torch.tensor([[5, 9, 11, 13, 2, 7], [8, 3, 0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    with torch.inference_mode():
        together = model(ids, mask)
        assert torch.equal(model(ids[1:, :2], mask[1:, :2]), together[1:])
