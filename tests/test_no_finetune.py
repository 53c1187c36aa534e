"""The rows that finetune nothing (experiments/no_finetune.py) on tiny models: zero-shot answer
log-probs, its calibrated threshold, and the linear probe's features, each checked against a
computation of its own, and their metrics against `train.fit`'s keys and the runner's reads."""

import dataclasses
import logging

import numpy as np
import pytest
import torch

from gptclf import train
from gptclf.classifier import SequenceClassifier, set_trainable
from gptclf.data import LabeledTexts, load_dataset, split_book, write_split
from gptclf.errors import GptclfError
from gptclf.experiments import runner
from gptclf.experiments.configs import SPAM_PROMPT, Experiment
from gptclf.experiments.no_finetune import (
    PROBE_C_GRID,
    choose_threshold,
    linear_probe,
    prepare,
    probe_features,
    zero_shot,
    zero_shot_answers,
)
from gptclf.inference import predict_logits
from gptclf.train import encode_splits
from gptclf.train_config import TrainConfig
from test_weights_gguf import write_tiny_llama


def write_small_split(out, flip_test=False):
    """80/40/40 rows of the book split (with `flip_test`, the test labels swapped)."""
    tr, val, test = split_book(load_dataset("sms-spam"))
    test = test.subset(range(40))
    if flip_test:
        test = LabeledTexts(test.texts, [1 - y for y in test.labels], test.label_names)
    write_split(out, tr.subset(range(80)), val.subset(range(40)), test)
    return out


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    return write_small_split(tmp_path_factory.mktemp("split"))


def tiny_cfg(split, **kw):
    base = dict(model="gpt2-tiny", weights="random", data=str(split), progress=False)
    return TrainConfig(**{**base, "baseline": False, "epochs": 1, "lr": 1e-3, **kw})


@pytest.fixture(scope="module")
def fit_metrics(small_split):
    """What `train.fit` returns for a tiny run: the keys every row must have."""
    return train.fit(tiny_cfg(small_split))


@pytest.mark.parametrize(
    "row",
    [zero_shot, lambda cfg: zero_shot(cfg, calibrate=True), linear_probe],
    ids=["zero-shot", "zero-shot-calibrated", "linear-probe"],
)
def test_rows_return_fits_keys_and_the_runner_reads_them(row, small_split, fit_metrics):
    metrics = row(tiny_cfg(small_split))
    assert set(metrics) == set(fit_metrics)
    for split in ("train", "validation", "test"):
        assert set(metrics[split]) == set(fit_metrics[split])
        assert metrics[split]["n"] == fit_metrics[split]["n"]
        assert 0 <= metrics[split]["accuracy"] <= 1 and 0 <= metrics[split]["f1"] <= 1
    assert metrics["best_epoch"] is None and metrics["train_seconds"] > 0
    assert metrics["total_params"] > metrics["trainable_params"] >= 0
    assert metrics["config"]["train_config"]["model"] == "gpt2-tiny"
    # the runner's record of it: every key it reads is there, and the numbers count
    exp = Experiment("nf", "no_finetune", "row", {"model": "gpt2-tiny", "weights": "random",
                     "data": str(small_split)})  # fmt: skip
    record = runner.run_one(exp, 1, fit=lambda cfg: row(cfg))
    assert all(k in record for k in runner.REQUIRED)
    assert runner._numbers_problem(record) is None


def manual_next_token_log_probs(lm, text, words, position=-1):
    """log P(word's first token) after `position` of the prompted text, from the full LM
    forward over that text alone (every position, no padding, no mask)."""
    ids = lm.tokenizer.encode(SPAM_PROMPT.replace("{text}", text))
    assert len(ids) < lm.config.context_length  # not truncated, so the ids are the same
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids]))[0, position].log_softmax(-1)
    return logits[[lm.tokenizer.encode(w)[0] for w in words]].numpy()


def test_zero_shot_scores_the_answer_after_the_last_real_token(small_split):
    setup = prepare(tiny_cfg(small_split))
    answers = zero_shot_answers(setup)
    test = setup.data["test"].texts
    by_length = sorted(range(len(test)), key=lambda i: len(test[i]))
    # short texts share sorted batches with longer ones: padded, so the mask and the index count
    for i in (by_length[0], by_length[len(test) // 2], by_length[-5]):
        expected = manual_next_token_log_probs(setup.lm, test[i], [" No", " Yes"])
        np.testing.assert_allclose(answers.logits["test"][i], expected, atol=1e-5)
        one_early = manual_next_token_log_probs(setup.lm, test[i], [" No", " Yes"], -2)
        assert not np.allclose(answers.logits["test"][i], one_early, atol=1e-3)
    assert answers.tokens == {"ham": [1400], "spam": [3363]}  # " No", " Yes": one token each


def test_zero_shot_on_a_llama_gguf_words_and_their_first_tokens(small_split, tmp_path, caplog):
    path = tmp_path / "tiny-llama.gguf"
    write_tiny_llama(path)
    cfg = tiny_cfg(small_split, model=str(path), weights="pretrained")
    setup = prepare(cfg)
    with pytest.raises(GptclfError, match="begin with the same token"):
        zero_shot_answers(setup)  # " No" and " Yes" are "Ġ" + letters in its tiny vocabulary
    with pytest.raises(GptclfError, match="no answer word for label 'spam'"):
        zero_shot_answers(setup, label_words={"ham": " no"})
    words = {"ham": " no", "spam": " y"}
    with caplog.at_level(logging.WARNING):
        answers = zero_shot_answers(setup, label_words=words)
    assert "is scored by its first" in caplog.text
    text = min(setup.data["validation"].texts, key=len)
    i = setup.data["validation"].texts.index(text)
    expected = manual_next_token_log_probs(setup.lm, text, words.values())
    np.testing.assert_allclose(answers.logits["validation"][i], expected, atol=1e-5)


def test_zero_shot_needs_an_lm_head(tmp_path, small_split):
    from fixtures_bert import make_tiny_hf_bert

    make_tiny_hf_bert(tmp_path / "bert")
    with pytest.raises(GptclfError, match="needs a language model with its LM head"):
        zero_shot(tiny_cfg(small_split, model=str(tmp_path / "bert"), weights="pretrained"))


def test_choose_threshold_best_accuracy_ties_nearest_zero():
    assert choose_threshold(np.array([4.0, 1, 3, 2]), np.array([1, 0, 1, 0])) == (2.5, 1.0)
    # 0 separates as well as the midpoint -0.25: the uncalibrated decision is kept
    assert choose_threshold(np.array([-3.0, -1, 0.5, 2]), np.array([0, 0, 1, 1])) == (0.0, 1.0)
    # 75% at 1.5 and at 3.5: the nearer to 0
    assert choose_threshold(np.array([1.0, 2, 3, 4]), np.array([0, 1, 0, 1])) == (1.5, 0.75)
    # every score spam-leaning, every text ham: below nothing, above everything
    assert choose_threshold(np.array([1.0, 2, 2]), np.array([0, 0, 0])) == (3.0, 1.0)


def test_calibration_uses_the_validation_split_only(small_split, tmp_path):
    cfg = tiny_cfg(small_split)
    raw = zero_shot_answers(prepare(cfg)).logits
    calibrated = zero_shot(cfg, calibrate=True)
    val_labels = prepare(cfg).data["validation"].labels
    threshold, accuracy = choose_threshold(raw["validation"] @ [-1, 1], np.array(val_labels))
    assert calibrated["config"]["threshold"] == threshold
    assert calibrated["validation"]["accuracy"] == pytest.approx(accuracy)
    plain = zero_shot(cfg)
    assert calibrated["validation"]["accuracy"] >= plain["validation"]["accuracy"]
    assert calibrated["validation"]["accuracy"] >= max(np.mean(val_labels), 1 - np.mean(val_labels))
    assert calibrated["test"]["accuracy"] == pytest.approx(
        np.mean((raw["test"] @ [-1, 1] > threshold) == np.array(prepare(cfg).data["test"].labels))
    )
    # other test labels: the same threshold
    flipped = write_small_split(tmp_path / "flipped", flip_test=True)
    again = zero_shot(dataclasses.replace(cfg, data=str(flipped)), calibrate=True)
    assert again["config"]["threshold"] == threshold
    assert again["test"]["accuracy"] == pytest.approx(1 - calibrated["test"]["accuracy"])


def manual_pooled(lm, ids, pool, length):
    """The pooled final-norm vector of one text from the full forward, padded as `pool` pads."""
    if pool == "last":  # the book's mode: pads are ordinary tokens, no mask
        ids = ids + [lm.tokenizer.pad_id] * (length - len(ids))
    with torch.no_grad():
        hidden = lm.model.hidden_states(torch.tensor([ids]))[0]
    return (hidden.mean(0) if pool == "mean" else hidden[-1]).numpy()


@pytest.mark.parametrize(
    "pool, padding", [("last", "longest"), ("last_real", "dynamic"), ("mean", "dynamic")]
)
def test_probe_features_are_what_the_classifier_head_reads(small_split, pool, padding):
    cfg = tiny_cfg(small_split, pool=pool, padding=padding)
    setup = prepare(cfg)
    enc = encode_splits(cfg, setup.lm, setup.data)
    clf = SequenceClassifier(setup.lm.model, 2, pool)
    set_trainable(clf, "head")  # a frozen backbone
    features = probe_features(setup, clf, enc.ids, enc.length)
    logits = predict_logits(
        clf, enc.ids["validation"], batch_size=8, pad_id=setup.lm.tokenizer.pad_id,
        length=enc.length,
    )  # fmt: skip
    with torch.no_grad():
        from_features = clf.head(torch.from_numpy(features["validation"]))
    torch.testing.assert_close(from_features, logits, atol=1e-5, rtol=1e-5)
    for i in (0, 7):
        expected = manual_pooled(setup.lm, enc.ids["test"][i], pool, enc.length)
        np.testing.assert_allclose(features["test"][i], expected, atol=1e-5)


def test_probe_reads_an_intermediate_block_through_the_final_norm(small_split):
    cfg = tiny_cfg(small_split, pool="last_real", padding="dynamic")
    setup = prepare(cfg)
    enc = encode_splits(cfg, setup.lm, setup.data)
    clf = SequenceClassifier(setup.lm.model, 2, "last_real")
    ids = {"test": enc.ids["test"][:6]}
    first = probe_features(setup, clf, ids, None, stop=1)["test"]
    last = probe_features(setup, clf, ids, None)["test"]
    model = setup.lm.model
    for i, seq in enumerate(ids["test"]):
        with torch.no_grad():
            x = model.embed(torch.tensor([seq]))
            x = model.h[0](x, None, None, torch.arange(len(seq)))
            expected = model.ln_f(x)[0, -1].numpy()
        np.testing.assert_allclose(first[i], expected, atol=1e-5)
    assert not np.allclose(first, last, atol=1e-3)


def test_probe_layer_choices(small_split):
    cfg = tiny_cfg(small_split, pool="mean", padding="dynamic")
    by_index = linear_probe(cfg, layer=0)
    from_end = linear_probe(cfg, layer=-2)  # gpt2-tiny has 2 blocks
    assert by_index["config"]["layer"] == from_end["config"]["layer"] == 0
    assert by_index["test"]["confusion_matrix"] == from_end["test"]["confusion_matrix"]
    assert linear_probe(cfg)["config"]["layer"] == 1
    assert by_index["config"]["C"] in PROBE_C_GRID
    assert by_index["trainable_params"] == 32 + 1  # binary: one weight per feature + intercept
    with pytest.raises(GptclfError, match="layer 2: the model has 2 blocks"):
        linear_probe(cfg, layer=2)
