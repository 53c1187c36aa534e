"""`gptclf export`: ONNX (onnxruntime) and Hugging Face (transformers) parity with
`Classifier.predict` on padded batches, for GPT-2, Llama and BERT classifiers with tiny random
weights; the refusals; the CLI's bad-input lines; DIR written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import pre_tokenizers

from fixtures_bert import write_wordpiece_tokenizer
from gptclf.api import Classifier
from gptclf.checkpoint import ClassifierInfo, save_classifier
from gptclf.classifier import SequenceClassifier
from gptclf.cli import main
from gptclf.config import ModelConfig
from gptclf.errors import GptclfError
from gptclf.export import export
from gptclf.lm import build_backbone
from gptclf.lora import apply_lora
from gptclf.tokenizer import Tokenizer, byte_level_bpe
from gptclf.weights.bert import load_bert_tokenizer
from gptclf.weights.registry import gpt2_tokenizer

pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

TOLERANCE = 1e-4
LABELS = ["ham", "spam", "other"]
# Lengths from 1-2 tokens to a few dozen: every batch below is padded, most rows heavily.
TEXTS = [
    "ok",
    "free prize now",
    "win a free prize, call now to claim it before the end of the week!",
    "you call me",
    "the prize is yours: call 0800 now, free entry to win",
    "see you at 5",
    "call",
]


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random, norms and biases too: a wrong or dropped tensor cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * 0.3
            p.copy_(1 + noise if "ln" in name and name.endswith("weight") else noise)


def llama_tokenizer() -> Tokenizer:
    """Byte-level BPE with a few merges and SmolLM2's eos (= pad), small enough for 512 ids."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = [("Ġ", "p"), ("r", "i"), ("Ġp", "ri"), ("z", "e"), ("Ġpri", "ze"), ("a", "l")]
    vocab = {token: i for i, token in enumerate(alphabet + ["Ġp", "ri", "Ġpri", "ze", "Ġprize"])}
    vocab["al"] = len(vocab)
    return Tokenizer(byte_level_bpe(vocab, merges, ["<|im_end|>"]), "<|im_end|>")


def bert_tokenizer(directory: Path) -> Tokenizer:
    directory.mkdir(parents=True, exist_ok=True)
    write_wordpiece_tokenizer(directory / "tokenizer.json")
    return load_bert_tokenizer(directory)


def backbone_and_tokenizer(arch: str, tmp: Path) -> tuple[torch.nn.Module, Tokenizer]:
    if arch == "gpt2":
        return build_backbone(ModelConfig.from_name("gpt2-tiny")), gpt2_tokenizer(progress=False)
    if arch == "llama":
        # GQA, a non-default RoPE base and eps: a config field left out of the map shows.
        config = ModelConfig.from_name("llama-tiny", rope_theta=50000.0, norm_eps=1e-5)
        return build_backbone(config), llama_tokenizer()
    tokenizer = bert_tokenizer(tmp / "bert-tokenizer")
    config = ModelConfig.from_name(
        "minilm-l6", vocab_size=tokenizer.vocab_size, n_layer=2, d_model=32, n_head=4, d_ff=64
    )
    return build_backbone(config), tokenizer


def write_run(
    directory: Path,
    arch: str,
    pool: str,
    *,
    padding: str = "dynamic",
    lora: dict | None = None,
    head_bias: bool = True,
    multi_label: bool = False,
    seed: int = 0,
    max_length: int | None = None,
    **train_config,
) -> Path:
    """A classifier checkpoint as `gptclf train` writes it, with random weights."""
    backbone, tokenizer = backbone_and_tokenizer(arch, directory.parent)
    model = SequenceClassifier(backbone, len(LABELS), pool, head_bias)
    if lora:
        apply_lora(model, **lora)
    randomize(model, seed)
    info = ClassifierInfo(
        model_config=backbone.config,
        labels=LABELS,
        pool=pool,
        padding=padding,
        # BERT: no text reaches it (gptclf cuts [SEP] off a long text, transformers keeps it)
        max_length=max_length or (128 if arch == "bert" else 48),
        base={"name": f"{arch}-tiny", "weights": "random"},
        train_config={"precision": "fp32", "truncation": "head", **train_config},
        lora=lora,
        head_bias=head_bias,
        multi_label=multi_label,
        thresholds=[0.3, 0.5, 0.7] if multi_label else None,
    )
    save_classifier(directory, model.state_dict(), tokenizer, info)
    return directory


def expected_probabilities(run: Path, texts: list[str] = TEXTS) -> np.ndarray:
    """`Classifier.predict` in batches of 3: each batch padded its own way."""
    clf = Classifier.load(run, precision="fp32")
    preds = clf.predict(texts, batch_size=3)
    return np.array([[p.probabilities[name] for name in LABELS] for p in preds])


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-logits))


def onnx_probabilities(out: Path, texts: list[str], model_file: str = "model.onnx") -> np.ndarray:
    """What a deployment does with the export alone: its tokenizer.json, config.json, ORT."""
    import onnxruntime

    config = json.loads((out / "config.json").read_text())
    if config["prompt"]:  # the deployment's job, as config.json says
        texts = [config["prompt"].replace("{text}", text) for text in texts]
    tokenizer = HFTokenizer.from_file(str(out / "tokenizer.json"))
    encodings = tokenizer.encode_batch(texts, add_special_tokens=config["add_special_tokens"])
    feed = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }
    session = onnxruntime.InferenceSession(str(out / model_file))
    (logits,) = session.run(["logits"], feed)
    assert logits.shape == (len(texts), len(LABELS))
    return sigmoid(logits) if config.get("activation") == "sigmoid" else softmax(logits)


ONNX_CASES = [  # every pooling mode, each architecture at least once
    ("gpt2", "last_real", {"lora": {"rank": 2, "alpha": 4.0}}),
    ("gpt2", "last", {"padding": "longest"}),  # pads are tokens: the fixed padded length counts
    ("llama", "mean", {}),
    ("llama", "first", {}),
    ("bert", "cls", {}),
]


@pytest.mark.parametrize(("arch", "pool", "options"), ONNX_CASES, ids=lambda c: str(c))
def test_onnx_matches_predict_on_padded_batches(tmp_path, arch, pool, options):
    run = write_run(tmp_path / "run", arch, pool, **options)
    out = export(run, tmp_path / "onnx", "onnx")
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "ham", "1": "spam", "2": "other"}
    assert config["pool"] == pool and config["prompt"] is None
    assert config["truncation_in_tokenizer"] == (arch != "bert")  # see write_run
    expected = expected_probabilities(run)
    for rows in (slice(None), slice(0, 1), slice(2, 5)):  # batch and sequence sizes vary
        got = onnx_probabilities(out, TEXTS[rows])
        np.testing.assert_allclose(got, expected[rows], atol=TOLERANCE, rtol=0)


def test_onnx_int8_is_written_and_close(tmp_path):
    run = write_run(tmp_path / "run", "llama", "last_real", head_bias=False)
    assert (
        main(
            [
                "export",
                str(run),
                "--format",
                "onnx",
                "--out",
                str(tmp_path / "o"),
                "--int8",
            ]
        )
        == 0
    )
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["model_int8"] == "model_int8.onnx"
    fp32 = onnx_probabilities(tmp_path / "o", TEXTS)
    int8 = onnx_probabilities(tmp_path / "o", TEXTS, "model_int8.onnx")
    np.testing.assert_allclose(fp32, expected_probabilities(run), atol=TOLERANCE, rtol=0)
    assert not np.array_equal(int8, fp32) and np.abs(int8 - fp32).max() < 0.1


def hf_probabilities(out: Path, texts: list[str], our_ids: list[list[int]]):
    """transformers' own classes and pipeline on the directory, as a user would load it."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(out)
    # truncation=True: model_max_length and truncation_side cut long texts as gptclf does
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    for row, ids in zip(batch["input_ids"].tolist(), our_ids, strict=True):
        assert row[: len(ids)] == ids and set(row[len(ids) :]) <= {tokenizer.pad_token_id}
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(**batch).logits
    multi_label = model.config.problem_type == "multi_label_classification"
    direct = (logits.sigmoid() if multi_label else logits.softmax(-1)).numpy()
    classify = pipeline("text-classification", model=str(out), top_k=None)
    results = classify(texts, batch_size=3, truncation=True)  # batches of 3 texts: padded
    piped = np.array(
        [[{r["label"]: r["score"] for r in res}[name] for name in LABELS] for res in results]
    )
    return type(model).__name__, direct, piped


HF_CASES = [
    ("gpt2", "last_real", {"lora": {"rank": 2, "alpha": 4.0}}, "GPT2ForSequenceClassification"),
    ("llama", "last_real", {"head_bias": False}, "LlamaForSequenceClassification"),
    ("bert", "cls", {}, "BertForSequenceClassification"),
]


@pytest.mark.parametrize(("arch", "pool", "options", "cls"), HF_CASES, ids=lambda c: str(c))
def test_hf_matches_predict_on_padded_batches(tmp_path, arch, pool, options, cls):
    run = write_run(tmp_path / "run", arch, pool, **options)
    out = export(run, tmp_path / "hf", "hf")
    clf = Classifier.load(run, precision="fp32")
    ours = [clf.tokenizer.encode(t)[: clf.info.max_length] for t in TEXTS]
    name, direct, piped = hf_probabilities(out, TEXTS, ours)
    assert name == cls
    expected = expected_probabilities(run)
    np.testing.assert_allclose(direct, expected, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(piped, expected, atol=TOLERANCE, rtol=0)
    assert "model.safetensors" in {p.name for p in out.iterdir()}
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))  # no pickles


MULTI_LABEL_CASES = [
    ("gpt2", "last_real", {}),  # the head bias folded into ln_f
    ("llama", "last_real", {"head_bias": False}),
]


@pytest.mark.parametrize(("arch", "pool", "options"), MULTI_LABEL_CASES, ids=lambda c: str(c))
def test_multi_label_exports_give_predicts_per_label_probabilities(tmp_path, arch, pool, options):
    run = write_run(tmp_path / "run", arch, pool, multi_label=True, **options)
    expected = expected_probabilities(run)  # sigmoids: they do not sum to 1
    assert not np.allclose(expected.sum(axis=1), 1, atol=0.05)
    onnx_dir = export(run, tmp_path / "onnx", "onnx")
    config = json.loads((onnx_dir / "config.json").read_text())
    assert config["activation"] == "sigmoid" and config["thresholds"] == [0.3, 0.5, 0.7]
    for rows in (slice(None), slice(2, 5)):
        got = onnx_probabilities(onnx_dir, TEXTS[rows])
        np.testing.assert_allclose(got, expected[rows], atol=TOLERANCE, rtol=0)
    # config.json's thresholds give a deployment `predict`'s label sets
    chosen = [{LABELS[i] for i in np.flatnonzero(p >= config["thresholds"])} for p in expected]
    clf = Classifier.load(run, precision="fp32")
    assert chosen == [set(p.labels) for p in clf.predict(TEXTS)]
    hf_dir = export(run, tmp_path / "hf", "hf")
    assert json.loads((hf_dir / "config.json").read_text())["problem_type"] == (
        "multi_label_classification"
    )
    ours = [clf.tokenizer.encode(t)[: clf.info.max_length] for t in TEXTS]
    _, direct, piped = hf_probabilities(hf_dir, TEXTS, ours)
    np.testing.assert_allclose(direct, expected, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(piped, expected, atol=TOLERANCE, rtol=0)  # the pipeline's sigmoid


def test_llama_head_bias_that_differs_between_classes_is_refused(tmp_path):
    run = write_run(tmp_path / "run", "llama", "last_real")  # random head bias
    with pytest.raises(GptclfError, match="score head has no bias.*train with --no-head-bias"):
        export(run, tmp_path / "hf", "hf")
    assert not (tmp_path / "hf").exists() and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_class_constant_llama_head_bias_is_dropped_only_under_softmax():
    from gptclf.weights.hf_export import drop_constant_bias

    drop_constant_bias(torch.full((3,), 0.25))  # a softmax ignores a shared constant
    drop_constant_bias(None)
    with pytest.raises(GptclfError, match="differs between classes by 0.1"):
        drop_constant_bias(torch.tensor([0.25, 0.35, 0.25]))
    # each label's sigmoid reads its own logit: a shared constant changes every probability
    with pytest.raises(GptclfError, match="multi-label head's bias reaches 0.25.*--no-head-bias"):
        drop_constant_bias(torch.full((3,), 0.25), multi_label=True)
    drop_constant_bias(torch.zeros(3), multi_label=True)


@pytest.mark.parametrize(
    ("arch", "pool", "options", "message"),
    [
        ("gpt2", "mean", {}, "pools last_real, this classifier pools 'mean'"),
        ("gpt2", "last", {"padding": "longest"}, "pools last_real"),
        ("bert", "mean", {}, "pools cls or first"),
    ],
)
def test_hf_refuses_pooling_it_cannot_compute(tmp_path, arch, pool, options, message):
    run = write_run(tmp_path / "run", arch, pool, **options)
    with pytest.raises(GptclfError, match=message):
        export(run, tmp_path / "hf", "hf")


def test_gpt2_head_bias_fold_is_exact_or_refused():
    from gptclf.weights.hf_export import fold_head_bias

    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(3, 16, generator=generator), torch.randn(3, generator=generator)
    beta = torch.randn(16, generator=generator)
    folded = fold_head_bias(weight, bias, beta)
    torch.testing.assert_close(weight @ folded, weight @ beta + bias, atol=1e-5, rtol=0)
    weight[2] = weight[1]  # two classes read the same direction but want different biases
    with pytest.raises(GptclfError, match="cannot be moved into ln_f"):
        fold_head_bias(weight, bias, beta)


def test_hf_refuses_a_decoder_without_causal_mask(tmp_path):
    run = write_run(tmp_path / "run", "llama", "last_real", head_bias=False)
    config = json.loads((run / "config.json").read_text())
    config["model_config"]["causal"] = False
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(GptclfError, match="no-causal-mask"):
        export(run, tmp_path / "hf", "hf")


def cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err.strip()


def test_cli_bad_input_is_one_line_exit_2_and_nothing_lost(tmp_path, capsys):
    run = write_run(tmp_path / "run", "llama", "last_real", head_bias=False)
    (tmp_path / "not-a-run").mkdir()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    cases = {
        "not a checkpoint": ["export", str(tmp_path / "not-a-run"), "--format", "onnx"],
        "not empty": ["export", str(run), "--format", "hf", "--out", str(full)],
        "unknown export format": ["export", str(run), "--format", "tflite"],
        "replace the checkpoint": ["export", str(run), "--format", "hf", "--force"],
    }
    for fragment, args in cases.items():
        if "--out" not in args:
            args += ["--out", str(run if fragment == "replace the checkpoint" else tmp_path / "x")]
        code, err = cli(args, capsys)
        assert code == 2 and err.startswith("gptclf: error: ") and "\n" not in err, err
        assert fragment in err, err
    assert (full / "keep.txt").read_text() == "mine" and not (tmp_path / "x").exists()
    assert (run / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "not-a-run", "run"]


def test_force_replaces_only_once_the_new_directory_is_complete(tmp_path, capsys, monkeypatch):
    run = write_run(tmp_path / "run", "llama", "last_real", head_bias=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    import gptclf.export as export_module

    def broken(*args, **kwargs):
        raise GptclfError("disk full (simulated)")

    monkeypatch.setattr(export_module, "write_hf", broken)
    code, err = cli(["export", str(run), "--format", "hf", "--out", str(out), "--force"], capsys)
    assert code == 2 and "disk full" in err
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # untouched, no staging left over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]
    monkeypatch.undo()
    code, _ = cli(["export", str(run), "--format", "hf", "--out", str(out), "--force"], capsys)
    assert code == 0 and not (out / "old.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]


# --- the class head's bias (--head-bias / --no-head-bias) -----------------------------------


def test_no_head_bias_trains_and_saves_a_head_without_bias(tmp_path, capsys):
    from safetensors.torch import load_file

    from fixtures_tool import TRAIN_FLAGS, reviews, write_reviews

    data = write_reviews(tmp_path / "reviews.csv", reviews(n_per_class=8))
    out = tmp_path / "run"
    columns = ["--text-column", "review_body", "--label-column", "sentiment"]
    argv = ["train", "--data", str(data), *columns, *TRAIN_FLAGS, "--epochs", "1"]
    quiet = ["--no-report", "--no-baseline", "--no-head-bias", "--out", str(out)]
    assert main(argv + quiet) == 0
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    assert config["head_bias"] is False and config["train_config"]["head_bias"] is False
    assert {k for k in load_file(str(out / "model.safetensors")) if k.startswith("head.")} == {
        "head.weight"
    }
    clf = Classifier.load(out)
    assert clf.model.head.bias is None
    assert sum(clf.predict(["It was great."])[0].probabilities.values()) == pytest.approx(1)


def test_recipes_head_bias():
    from gptclf.train_config import config_for

    assert config_for("smollm2").head_bias is False  # exports to LlamaForSequenceClassification
    assert config_for("book").head_bias is True  # the book's head (GPT-2: folded into ln_f)
    assert config_for("smollm2", head_bias=True).head_bias is True


def test_checkpoint_records_the_head_bias_and_older_ones_load_with_one(tmp_path):
    biasless = write_run(tmp_path / "biasless", "llama", "last_real", head_bias=False)
    assert json.loads((biasless / "config.json").read_text())["head_bias"] is False
    clf = Classifier.load(biasless, precision="fp32")
    assert clf.model.head.bias is None and clf.info.head_bias is False
    ids = torch.tensor([clf.tokenizer.encode("free prize now")])
    with torch.no_grad():
        hidden = clf.model.backbone.hidden_states(ids)[:, -1]  # final norm included
        torch.testing.assert_close(clf.model(ids), hidden @ clf.model.head.weight.T)
    # a checkpoint from before the option: no key, and its head has a bias
    older = write_run(tmp_path / "older", "llama", "last_real")
    config = json.loads((older / "config.json").read_text())
    del config["head_bias"]
    (older / "config.json").write_text(json.dumps(config))
    clf = Classifier.load(older, precision="fp32")
    assert clf.info.head_bias is True and clf.model.head.bias is not None
    # a config.json that says no bias over weights that have one: one line, not a wrong model
    config["head_bias"] = False
    (older / "config.json").write_text(json.dumps(config))
    with pytest.raises(GptclfError, match="unexpected tensors head.bias"):
        Classifier.load(older)
