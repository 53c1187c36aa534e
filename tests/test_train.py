"""End-to-end training on a small slice of the book split with a tiny random GPT-2."""

import dataclasses
import json

import pytest
import torch

from gptclf.api import Classifier
from gptclf.batching import collate, pad_length, round_to_eighth, round_to_multiple
from gptclf.data import load_dataset, split_book, write_split
from gptclf.errors import GptclfError
from gptclf.train import TrainConfig, fit


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    """120/40/40 rows of the book split, written as `gptclf data split` writes them."""
    train, val, test = split_book(load_dataset("sms-spam"))
    out = tmp_path_factory.mktemp("split")
    write_split(out, train.subset(range(120)), val.subset(range(40)), test.subset(range(40)))
    return out


def tiny(small_split, out=None, **kw):
    base = dict(
        model="gpt2-tiny",
        weights="random",
        data=str(small_split),
        epochs=2,
        lr=1e-3,
        progress=False,
        out=str(out) if out else None,
    )
    return TrainConfig(**{**base, **kw})


def without_timings(metrics):
    return {k: v for k, v in metrics.items() if not k.endswith("_seconds")}


def test_fit_writes_a_self_describing_checkpoint(small_split, tmp_path):
    metrics = fit(tiny(small_split, tmp_path / "run"))
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_meta.json",
        "metrics.json",
    }
    saved = json.loads((run / "metrics.json").read_text())
    for split in ("train", "validation", "test"):
        for key in ("accuracy", "precision", "recall", "f1", "confusion_matrix", "n"):
            assert key in saved[split]
    assert saved["test"]["n"] == 40 and saved["train"]["n"] == 120
    assert saved["trainable_params"] < saved["total_params"]
    assert saved["config"]["train_config"]["trainable"] == "last_block"

    clf = Classifier.load(run)
    assert clf.labels == ["ham", "spam"]
    again = clf.evaluate(load_dataset(small_split / "test.csv"))
    assert again["accuracy"] == metrics["test"]["accuracy"]
    assert again["confusion_matrix"] == metrics["test"]["confusion_matrix"]
    # The misclassified test indices are the texts the reloaded model gets wrong.
    test = load_dataset(small_split / "test.csv")
    predicted = [clf.labels.index(p.label) for p in clf.predict(test.texts)]
    wrong = [i for i, (p, y) in enumerate(zip(predicted, test.labels, strict=True)) if p != y]
    assert saved["test"]["misclassified"] == wrong
    cm = saved["test"]["confusion_matrix"]
    assert len(wrong) == sum(cm[i][j] for i in range(2) for j in range(2) if i != j)
    preds = clf.predict(["WINNER!! Claim your free prize now", "see you at lunch"])
    assert all(p.label in ("ham", "spam") for p in preds)
    assert all(abs(sum(p.probabilities.values()) - 1) < 1e-5 for p in preds)


def test_same_seed_same_metrics_and_other_seed_differs(small_split):
    a = without_timings(fit(tiny(small_split, epochs=1)))
    b = without_timings(fit(tiny(small_split, epochs=1)))
    c = without_timings(fit(tiny(small_split, epochs=1, seed=7)))
    assert a == b
    assert a["history"] != c["history"]


@pytest.mark.parametrize("select", ["best", "last"])
def test_select_keeps_the_best_or_the_last_epoch(small_split, tmp_path, select):
    metrics = fit(tiny(small_split, tmp_path, epochs=3, lr=3e-3, select=select))
    history = metrics["history"]
    if select == "last":
        assert metrics["best_epoch"] == 3
    else:
        best = max(history, key=lambda h: (h["validation_accuracy"], -h["validation_loss"]))
        assert metrics["best_epoch"] == best["epoch"]
    kept = history[metrics["best_epoch"] - 1]
    assert metrics["validation"]["accuracy"] == kept["validation_accuracy"]
    assert metrics["validation"]["loss"] == pytest.approx(kept["validation_loss"], rel=1e-5)
    # the checkpoint holds the kept epoch's weights
    saved = Classifier.load(tmp_path).evaluate(load_dataset(small_split / "validation.csv"))
    assert saved["accuracy"] == kept["validation_accuracy"]


def test_compile_without_a_compiler_is_a_one_line_error(small_split, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(GptclfError, match="--compile needs a C\\+\\+ compiler"):
        tiny(small_split, compile=True)


def test_select_rejects_an_unknown_choice(small_split):
    with pytest.raises(GptclfError, match="--select"):
        tiny(small_split, select="first")


def test_compile_trains_like_eager(small_split):
    # dynamic padding: the compiled graph must serve every batch length
    cfg = dict(epochs=1, padding="dynamic", pool="last_real", trainable="last_two_blocks")
    eager = fit(tiny(small_split, **cfg))
    compiled = fit(tiny(small_split, compile=True, **cfg))
    for a, b in zip(eager["history"], compiled["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["validation_loss"] == pytest.approx(b["validation_loss"], rel=1e-4)
    assert eager["test"]["confusion_matrix"] == compiled["test"]["confusion_matrix"]


def test_training_learns_on_the_tiny_model(small_split):
    metrics = fit(tiny(small_split, epochs=4, trainable="all"))
    history = metrics["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert metrics["train"]["accuracy"] > 0.6


def test_padding_modes_choose_different_lengths():
    ids = [[1, 2, 3], [4, 5, 6, 7, 8]]
    assert pad_length("longest", ids, 1024) == 5
    assert pad_length("max_context", ids, 1024) == 1024
    assert pad_length("dynamic", ids, 1024) is None


def test_padding_changes_last_but_not_last_real(small_split):
    """Pad-aware pooling is invariant to the padded length; the book's `last` is not."""

    def losses(**kw):
        return [h["train_loss"] for h in fit(tiny(small_split, epochs=1, **kw))["history"]]

    last_longest = losses(pool="last", padding="longest")
    last_context = losses(pool="last", padding="max_context")
    assert last_longest != pytest.approx(last_context, rel=1e-3)
    real_longest = losses(pool="last_real", padding="longest")
    real_context = losses(pool="last_real", padding="max_context")
    assert real_longest == pytest.approx(real_context, rel=1e-4)


def test_max_context_padding_pads_to_a_shorter_max_length_as_saved(small_split, tmp_path):
    """With --max-length below the context, max_context pads to max_length in training as in the
    saved classifier (pool=last reads a pad, so a different padded length changes its logits)."""
    out = tmp_path / "run"
    metrics = fit(
        tiny(small_split, out, epochs=1, pool="last", padding="max_context", max_length=48)
    )
    clf = Classifier.load(out)
    assert clf.info.max_length == 48
    again = clf.evaluate(load_dataset(small_split / "test.csv"))
    assert again["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-5)


def test_dynamic_padding_predicts_like_fixed_padding(small_split):
    """Dynamic (per-batch, length-sorted) padding gives the same logits as padding to a length."""
    import gptclf.inference as inference
    from gptclf.classifier import SequenceClassifier
    from gptclf.lm import load_lm

    lm = load_lm("gpt2-tiny", "random")
    model = SequenceClassifier(lm.model, 2, "last_real")
    texts = load_dataset(small_split / "test.csv").texts
    ids = [lm.tokenizer.encode(t)[:64] for t in texts]
    kw = dict(batch_size=8, pad_id=lm.tokenizer.pad_id)
    fixed = inference.predict_logits(model, ids, length=64, **kw)
    dynamic = inference.predict_logits(model, ids, length=None, **kw)
    torch.testing.assert_close(fixed, dynamic, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "option", [dict(trainable="head"), dict(causal=False), dict(pool="mean"), dict(grad_accum=2)]
)
def test_each_option_changes_the_training_run(small_split, option):
    base = fit(tiny(small_split, epochs=1))["history"]
    changed = fit(tiny(small_split, epochs=1, **option))["history"]
    assert base[0]["train_loss"] != pytest.approx(changed[0]["train_loss"], rel=1e-4)


def test_no_bucket_trains_on_random_batches(small_split):
    from gptclf import batching
    from gptclf.train import TrainParts

    seen = []

    def spy(*args, **kwargs):  # the training batch source, passed in
        seen.append(kwargs.get("bucket"))
        return batching.batches(*args, **kwargs)

    parts = TrainParts(batches=spy)
    bucketed = fit(tiny(small_split, epochs=1, padding="dynamic", pool="last_real"), parts)
    random = fit(
        tiny(small_split, epochs=1, padding="dynamic", pool="last_real", bucket=False), parts
    )
    assert seen == [True, False]  # the training batches only (evaluation has its own order)
    assert bucketed["history"][0]["train_loss"] != pytest.approx(
        random["history"][0]["train_loss"], rel=1e-4
    )


def test_frozen_weights_in_checkpoint_equal_the_random_init(small_split, tmp_path):
    fit(tiny(small_split, tmp_path / "run", epochs=1, trainable="head"))
    from gptclf.lm import load_lm

    base = load_lm("gpt2-tiny", "random", seed=123).model
    clf = Classifier.load(tmp_path / "run")
    torch.testing.assert_close(
        clf.model.backbone.h[0].attn.c_attn.weight, base.h[0].attn.c_attn.weight
    )


def test_padded_lengths_are_few_and_close():
    """Training rounds to a multiple of 16; inference to within 1/8: as few shapes, fewer pads."""
    lengths = range(1, 1025)
    eighths = [round_to_eighth(n) for n in lengths]
    assert all(n <= r <= n * 9 / 8 for n, r in zip(lengths, eighths, strict=True))
    assert eighths[:15] == list(range(1, 16)) and round_to_eighth(17) == 18
    assert len(set(eighths)) == len({round_to_multiple(n) for n in lengths}) == 64
    batch = collate([[1, 2], [3] * 17], [0, 1], [0, 1], pad_id=0, length=None, cap=1024)
    assert batch.input_ids.shape == (2, 32)
    batch = collate([[1, 2], [3] * 17], [0, 1], [0, 1], 0, None, 1024, round_to_eighth)
    assert batch.input_ids.shape == (2, 18) and batch.attention_mask.sum() == 19


def test_prompt_trains_saves_and_predicts_inside_the_template(small_split, tmp_path):
    prompt = 'SMS: "{text}"\nSpam?'
    metrics = fit(tiny(small_split, tmp_path, epochs=1, padding="longest", prompt=prompt))
    clf = Classifier.load(tmp_path)
    assert clf.prompt == prompt
    (ids,) = clf._encode(["hi"])
    assert clf.tokenizer.decode(ids) == 'SMS: "hi"\nSpam?'
    # padding=longest truncates validation/test to the longest training text: prompts stay whole.
    assert all(
        clf.tokenizer.decode(seq).endswith('"\nSpam?')
        for seq in clf._encode(load_dataset(small_split / "test.csv").texts)
    )
    again = clf.evaluate(load_dataset(small_split / "test.csv"))
    assert again["confusion_matrix"] == metrics["test"]["confusion_matrix"]
    with pytest.raises(GptclfError, match='must contain "{text}" exactly once'):
        tiny(small_split, prompt="no slot")


def test_every_run_fits_the_tfidf_baseline_beside_the_model(small_split, tmp_path, caplog):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from gptclf.data import splits_from_config

    metrics = fit(tiny(small_split, tmp_path / "run", epochs=1))
    for split in ("train", "validation", "test"):
        base = metrics[split]["baseline"]
        assert base["name"].startswith("tfidf-logreg") and base["n"] == metrics[split]["n"]
        assert 0 <= base["accuracy"] <= 1 and base["C"] in (0.1, 1.0, 10.0, 100.0)
    # a one-epoch random tiny model is beaten by TF-IDF on SMS: the run says so, as a warning
    assert "does not beat the TF-IDF baseline on validation" in caplog.text
    assert "does not beat the TF-IDF baseline" in (tmp_path / "run" / "report.md").read_text()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test"]["baseline"] == metrics["test"]["baseline"]
    # the same numbers as scikit-learn fitted by hand with the chosen C
    cfg = tiny(small_split)
    train, val, test = splits_from_config(dataclasses.asdict(cfg))
    words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)
    from scipy.sparse import hstack

    x = hstack([words.fit_transform(train.texts), chars.fit_transform(train.texts)])
    x_test = hstack([words.transform(test.texts), chars.transform(test.texts)])
    model = LogisticRegression(
        C=metrics["test"]["baseline"]["C"], solver="liblinear", dual=True, max_iter=1000,
        random_state=cfg.seed,
    ).fit(x, train.labels)  # fmt: skip
    assert metrics["test"]["baseline"]["accuracy"] == (model.predict(x_test) == test.labels).mean()
    assert "baseline" not in fit(tiny(small_split, epochs=1, baseline=False))["test"]
