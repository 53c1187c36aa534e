"""`--layers K`: only the first K blocks of the backbone. Each loader (HF GPT-2, GGUF Llama, HF
BERT) gives exactly the full model's first K blocks without reading the others; a run trained on
them saves a K-block checkpoint that predicts, exports and refuses another --layers on --resume."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import test_export
from fixtures_bert import make_tiny_hf_bert
from fixtures_gpt2 import make_tiny_hf_gpt2
from gptclf import train
from gptclf.api import Classifier
from gptclf.data import load_dataset
from gptclf.errors import GptclfError
from gptclf.export import export
from gptclf.lm import load_lm
from gptclf.resume import STATE_FILE
from gptclf.train import TrainConfig, TrainParts, fit_run
from gptclf.weights import bert, gguf, hf_gpt2
from test_train import small_split  # noqa: F401  (fixture)
from test_weights_gguf import write_tiny_llama

TEXTS = ["free prize, call now", "see you at 5", "the caller"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two-block models in each layout a loader reads: {format: path}."""
    root = tmp_path_factory.mktemp("layers")
    make_tiny_hf_gpt2(root / "gpt2")
    make_tiny_hf_bert(root / "bert", prefix=True)  # `bert.` keys and a pretraining head
    write_tiny_llama(root / "llama.gguf")
    return {"gpt2": root / "gpt2", "bert": root / "bert", "llama": root / "llama.gguf"}


def spy_reads(monkeypatch, fmt: str) -> list[str]:
    """The names of the tensors the format's loader reads from its file."""
    read: list[str] = []
    if fmt == "llama":
        real = gguf.read_tensor
        monkeypatch.setattr(gguf, "read_tensor", lambda t: read.append(t.name) or real(t))
        return read
    module = hf_gpt2 if fmt == "gpt2" else bert

    def reader(path, keep=None, real=module.read_safetensors):
        tensors = real(path, keep)
        read.extend(tensors)
        return tensors

    monkeypatch.setattr(module, "read_safetensors", reader)
    return read


def first_blocks_of(model, ids: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """The full model's states after block k, final norm applied (identity for BERT)."""
    return model.ln_f(model.run_blocks(model.embed(ids, mask), mask, stop=k))


@pytest.mark.parametrize("fmt", ["gpt2", "llama", "bert"])
def test_loaders_keep_the_first_blocks_and_never_read_the_others(checkpoints, monkeypatch, fmt):
    full = load_lm(checkpoints[fmt])
    read = spy_reads(monkeypatch, fmt)
    cut = load_lm(checkpoints[fmt], layers=1)
    block = {"gpt2": "h.1.", "llama": "blk.1.", "bert": "encoder.layer.1."}[fmt]
    assert read and not [name for name in read if block in name]
    assert cut.config.n_layer == len(cut.model.h) == 1 and full.config.n_layer == 2
    assert cut.source["layers"] == 1 and "layers" not in full.source
    ids = [cut.tokenizer.encode(t) for t in TEXTS]
    length = max(map(len, ids))
    batch = torch.tensor([s + [cut.tokenizer.pad_id] * (length - len(s)) for s in ids])
    mask = torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in ids])
    with torch.no_grad():
        ours = cut.model.hidden_states(batch, mask)
        torch.testing.assert_close(ours, first_blocks_of(full.model, batch, mask, 1))
        assert not torch.allclose(ours, full.model.hidden_states(batch, mask))
    whole = load_lm(checkpoints[fmt], layers=2)  # K = the depth: the whole model
    assert whole.model.state_dict().keys() == full.model.state_dict().keys()
    with pytest.raises(
        GptclfError, match=r"^--layers must be in \[1, 2\] \(.* has 2 blocks\), got 3"
    ):
        load_lm(checkpoints[fmt], layers=3)


def test_a_random_init_builds_k_blocks_and_a_known_name_is_checked_before_loading(monkeypatch):
    lm = load_lm("gpt2-tiny", "random", layers=1)
    assert len(lm.model.h) == lm.config.n_layer == 1 and lm.source["layers"] == 1
    monkeypatch.setattr(gguf, "open_gguf", lambda path: pytest.fail("read before the check"))
    with pytest.raises(GptclfError, match=r"--layers must be in \[1, 30\] \(smollm2-135m has 30"):
        load_lm("smollm2-135m", layers=31)


@pytest.fixture(scope="module")
def layers_run(checkpoints, small_split, tmp_path_factory):  # noqa: F811
    """A run on the first block of the two-block HF GPT-2, its backbone frozen: (dir, Run)."""
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        model=str(checkpoints["gpt2"]), layers=1, trainable="head", pool="last_real",
        padding="dynamic", data=str(small_split), epochs=1, lr=1e-3, progress=False,
        out=str(out), report=False, baseline=False,
    )  # fmt: skip
    return out, fit_run(cfg)


def test_the_checkpoint_holds_k_blocks_and_predicts_as_training_ended(
    layers_run,
    checkpoints,
    small_split,  # noqa: F811
):
    out, run = layers_run
    config = json.loads((out / "config.json").read_text())
    assert config["model_config"]["n_layer"] == 1 and config["base"]["layers"] == 1
    assert config["train_config"]["layers"] == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["train_config"]["layers"] == 1
    clf = Classifier.load(out, precision="fp32")
    assert len(clf.model.backbone.h) == 1
    frozen = load_lm(checkpoints["gpt2"], layers=1).model.state_dict()
    for key, tensor in clf.model.backbone.state_dict().items():
        torch.testing.assert_close(tensor, frozen[key], rtol=0, atol=0)  # the file's block 0
    test = load_dataset(small_split / "test.csv")
    predicted = clf.predict(test.texts)
    probabilities = np.array([[p.probabilities[name] for name in clf.labels] for p in predicted])
    ended = run.logits["test"].softmax(-1).numpy()
    np.testing.assert_allclose(probabilities, ended, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fmt", ["hf", "onnx"])
def test_a_run_on_k_blocks_exports_what_predict_gives(layers_run, tmp_path, monkeypatch, fmt):
    out, _ = layers_run
    monkeypatch.setattr(test_export, "LABELS", ["ham", "spam"])  # the run's, in its order
    exported = export(out, tmp_path / fmt, fmt)
    expected = test_export.expected_probabilities(out, TEXTS)
    if fmt == "onnx":
        got = test_export.onnx_probabilities(exported, TEXTS)
    else:
        clf = Classifier.load(out, precision="fp32")
        ours = [clf.tokenizer.encode(t)[: clf.info.max_length] for t in TEXTS]
        name, got, _ = test_export.hf_probabilities(exported, TEXTS, ours)
        assert name == "GPT2ForSequenceClassification"
        hf_config = json.loads((exported / "config.json").read_text())
        assert hf_config["n_layer"] == 1
    np.testing.assert_allclose(got, expected, atol=test_export.TOLERANCE, rtol=0)


def test_resume_with_other_layers_is_refused(small_split, tmp_path):  # noqa: F811
    calls = []

    def stop_in_epoch_two(*args, **kwargs):  # a run killed after its first epoch
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("killed")
        return train.batching.batches(*args, **kwargs)

    cfg = TrainConfig(
        model="gpt2-tiny", weights="random", layers=1, data=str(small_split), epochs=2,
        progress=False, out=str(tmp_path), report=False, baseline=False,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="killed"):
        fit_run(cfg, TrainParts(batches=stop_in_epoch_two))
    assert (tmp_path / STATE_FILE).is_file()
    again = dataclasses.replace(cfg, resume=True, layers=2)
    with pytest.raises(GptclfError, match=r"other settings: --layers was 1, now 2$"):
        fit_run(again)
