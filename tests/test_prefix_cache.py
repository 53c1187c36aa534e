import pytest
import torch

from gptclf.classifier import SequenceClassifier, set_trainable
from gptclf.config import ModelConfig
from gptclf.model import GPT
from gptclf.prefix_cache import cache_start
from gptclf.train import fit
from test_train import small_split, tiny  # noqa: F401  (fixture)


def model_with(spec="last_block", pool="last_real", **overrides):
    config = ModelConfig.from_name("gpt2-tiny", vocab_size=100, n_layer=3, **overrides)
    model = SequenceClassifier(GPT(config), 2, pool)
    set_trainable(model, spec)
    return model


def test_cache_starts_at_the_first_trainable_block():
    assert cache_start(model_with("last_block"), fixed_length=True) == 2
    assert cache_start(model_with("last_two_blocks"), fixed_length=True) == 1
    assert cache_start(model_with("head"), fixed_length=True) == 3


@pytest.mark.parametrize(
    "case",
    [
        dict(spec="all"),  # embeddings train
        dict(spec="last_3"),  # nothing frozen below the first trainable block
        dict(dropout=0.1),  # frozen blocks are random
        dict(pool="last", fixed=False),  # pads are tokens and their count depends on the batch
    ],
)
def test_cache_is_refused_where_it_would_be_wrong(case):
    fixed = case.pop("fixed", True)
    assert cache_start(model_with(**case), fixed_length=fixed) is None


def test_trainable_embedding_refuses_cache():
    model = model_with("last_block")
    model.backbone.wte.weight.requires_grad = True
    assert cache_start(model, fixed_length=True) is None


@pytest.mark.parametrize(
    "kw",
    [
        dict(pool="last", padding="longest"),  # the book's setting: pads cached too
        dict(pool="last_real", padding="dynamic"),  # only real tokens cached
        dict(pool="mean", padding="dynamic", trainable="head"),
    ],
)
def test_cached_training_equals_uncached(small_split, kw):  # noqa: F811
    cached = fit(tiny(small_split, epochs=2, **kw))
    uncached = fit(tiny(small_split, epochs=2, cache=False, **kw))
    assert cached["cached_from_block"] is not None and uncached["cached_from_block"] is None
    for a, b in zip(cached["history"], uncached["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["validation_loss"] == pytest.approx(b["validation_loss"], rel=1e-4)
    assert cached["test"]["confusion_matrix"] == uncached["test"]["confusion_matrix"]


def test_bf16_runs_and_stays_close(small_split):  # noqa: F811
    fp32 = fit(tiny(small_split, epochs=1))
    bf16 = fit(tiny(small_split, epochs=1, precision="bf16"))
    assert bf16["history"][0]["train_loss"] == pytest.approx(
        fp32["history"][0]["train_loss"], rel=0.05
    )
    assert torch.isfinite(torch.tensor(bf16["history"][0]["validation_loss"]))
