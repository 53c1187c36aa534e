import pytest
import torch

from gptclf.classifier import SequenceClassifier, set_trainable
from gptclf.config import ModelConfig
from gptclf.model import GPT
from gptclf.prefix_cache import build_caches, cache_start, load_store, store_key
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


def _splits():
    g = torch.Generator().manual_seed(0)
    lengths = {"train": [5, 9, 3], "validation": [7], "test": [4, 6]}
    return {
        name: [torch.randint(1, 100, (n,), generator=g).tolist() for n in ns]
        for name, ns in lengths.items()
    }


def _states(caches):
    return {name: [s.clone() for s in c.states] for name, c in caches.items()}


def test_stored_cache_is_read_back_identically(tmp_path):
    model, splits = model_with("last_block", pool="mean"), _splits()
    first = build_caches(model, splits, 2, pad_id=0, length=None, store_dir=tmp_path)
    assert all(c.read_from is None for c in first.values())
    assert len(list(tmp_path.glob("prefix-*.safetensors"))) == 1
    second = build_caches(model, splits, 2, pad_id=0, length=None, store_dir=tmp_path)
    for name, states in _states(first).items():
        assert second[name].read_from is not None
        for a, b in zip(states, second[name].states, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    "change",
    ["texts", "weights", "start", "length", "precision", "mask", "causal", "trainable_block"],
)
def test_store_key_changes_with_what_the_states_depend_on(change):
    model, splits = model_with("last_block", pool="mean"), _splits()
    settings = dict(pad_id=0, length=None, batch_size=32, precision="fp32", dtype=torch.float32)
    start = 2
    before = store_key(model, splits, start, **settings)
    if change == "texts":
        splits["test"][0][0] += 1
    elif change == "weights":
        with torch.no_grad():
            model.backbone.h[0].attn.c_proj.weight[0, 0] += 1e-3
    elif change == "start":
        start = 1
    elif change == "length":
        settings["length"] = 16
    elif change == "precision":
        settings["precision"] = "bf16"
    elif change == "mask":
        model.pool_mode = "last"  # the backbone then runs without an attention mask
    elif change == "causal":
        model = model_with("last_block", pool="mean", causal=False)
    after = store_key(model, splits, start, **settings)
    if change == "trainable_block":  # block 2 does not feed the states entering it
        with torch.no_grad():
            model.backbone.h[2].attn.c_proj.weight[0, 0] += 1.0
        assert store_key(model, splits, start, **settings) == before
        return
    assert after != before


def test_unreadable_store_is_recomputed(tmp_path, caplog):
    model, splits = model_with("last_block", pool="mean"), _splits()
    build_caches(model, splits, 2, pad_id=0, length=None, store_dir=tmp_path)
    (path,) = tmp_path.glob("prefix-*.safetensors")
    path.write_bytes(b"not a safetensors file")
    again = build_caches(model, splits, 2, pad_id=0, length=None, store_dir=tmp_path)
    assert again["train"].read_from is None and "unreadable" in caplog.text
    assert load_store(path, splits, 2) is not None  # rewritten whole


def test_fit_with_cache_dir_reads_the_second_time(small_split, tmp_path):  # noqa: F811
    first = fit(tiny(small_split, epochs=1, cache_dir=str(tmp_path)))
    second = fit(tiny(small_split, epochs=1, cache_dir=str(tmp_path), lr=1e-4))
    assert (first["prefix_cache"], second["prefix_cache"]) == ("computed", "read")
    # A run that reads the states reports what computing them took where they were computed.
    assert second["cache_build_seconds"] == pytest.approx(first["cache_build_seconds"], abs=1e-3)
    assert 0 < first["cache_build_seconds"] <= first["cache_seconds"]
    plain = fit(tiny(small_split, epochs=1, lr=1e-4))
    assert second["test"]["confusion_matrix"] == plain["test"]["confusion_matrix"]
    assert second["history"][0]["train_loss"] == pytest.approx(
        plain["history"][0]["train_loss"], rel=1e-6
    )


def test_unwritable_store_dir_warns_and_trains_on(tmp_path, caplog):
    model, splits = model_with("last_block", pool="mean"), _splits()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    caches = build_caches(model, splits, 2, pad_id=0, length=None, store_dir=not_a_dir)
    assert caches["train"].read_from is None and "could not save" in caplog.text
