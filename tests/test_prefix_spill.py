"""A frozen-prefix cache over its memory budget is spilled to a bf16 file and read back batch by
batch (prefix_cache.SpilledCache, prefix_store.py): the same numbers as the bf16 cache in memory;
a store in --cache-dir reused lazily; an unwritable directory or a full disk → uncached, with a
warning; a damaged store → recomputed, with a warning; the spill directory gone after the run."""

from __future__ import annotations

import errno
import io
import json
import re
from contextlib import redirect_stdout

import pytest
import torch
from safetensors import safe_open

from gptclf.batching import sorted_batches
from gptclf.cli import main
from gptclf.config import ModelConfig
from gptclf.prefix_cache import SPILL_DIR, PrefixCache, SpilledCache, build_caches
from gptclf.prefix_store import StoreWriter
from gptclf.train import fit
from test_cv import cv_argv, reviews  # noqa: F401  (fixture)
from test_prefix_cache import _splits, model_with
from test_train import small_split, tiny, without_timings  # noqa: F401  (fixture)

D_TINY = ModelConfig.from_name("gpt2-tiny").d_model
QUICK = dict(report=False, baseline=False)


def same_numbers(metrics):
    """The metrics without timings, the config and where the cache was kept."""
    skip = {"config", "prefix_cache_storage"}
    return {k: v for k, v in without_timings(metrics).items() if k not in skip}


def bf16_budget_mb(caplog) -> float:
    """A budget that holds the spilled run's states in bf16 but not in fp32 (from its log)."""
    tokens = int(re.findall(r"spilled (\d+) tokens", caplog.text)[-1])
    return tokens * D_TINY * 3 / 1024**2  # bf16 takes 2 bytes a value, fp32 4


def test_spilled_run_equals_the_bf16_cache_in_memory(small_split, tmp_path, caplog):  # noqa: F811
    caplog.set_level("INFO")
    spilled = fit(tiny(small_split, tmp_path / "spilled", cache_budget_mb=0, **QUICK))
    assert not (tmp_path / "spilled" / SPILL_DIR).exists()  # removed when training ended
    budget = bf16_budget_mb(caplog)
    memory = fit(tiny(small_split, tmp_path / "memory", cache_budget_mb=budget, **QUICK))
    storage = [(m["prefix_cache_storage"], m["prefix_cache_dtype"]) for m in (spilled, memory)]
    assert storage == [("spilled", "bfloat16"), ("memory", "bfloat16")]
    assert same_numbers(spilled) == same_numbers(memory)


def test_states_are_read_back_exactly_and_the_file_is_safetensors(tmp_path):
    model, splits = model_with("last_block", pool="mean"), _splits()
    n_tokens = sum(len(s) for ids in splits.values() for s in ids)
    memory = build_caches(model, splits, 2, pad_id=0, length=None, budget_bytes=n_tokens * 64)
    spilled = build_caches(
        model, splits, 2, pad_id=0, length=None, budget_bytes=0, spill_dir=tmp_path
    )
    assert memory["train"].dtype == torch.bfloat16 and not memory["train"].spilled
    assert all(isinstance(c, SpilledCache) for c in spilled.values())
    assert model.training  # the mode the model came in with
    for name, ids in splits.items():
        for batch in sorted_batches(ids, 2, 0, None):
            longer = batch.input_ids.shape[1] + 3  # beyond every stored length: zero-filled
            batch.input_ids = torch.nn.functional.pad(batch.input_ids, (0, 3))
            assert torch.equal(memory[name].gather(batch), spilled[name].gather(batch))
            assert spilled[name].gather(batch).shape[1] == longer
        fold = [2, 0] if len(ids) > 2 else [0]
        a, b = memory[name].subset(fold), spilled[name].subset(fold)
        assert all(torch.equal(x, y) for x, y in zip(a.states, b.states, strict=True))
    with safe_open(str(tmp_path / "prefix.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("train.states"), torch.cat(list(memory["train"].states)))


def test_over_budget_store_is_reused_lazily(tmp_path):
    model, splits = model_with("last_block", pool="mean"), _splits()
    kw = dict(pad_id=0, length=None, budget_bytes=0, spill_dir=tmp_path / "spill")
    first = build_caches(model, splits, 2, store_dir=tmp_path / "store", **kw)
    (stored,) = (tmp_path / "store").glob("prefix-*.safetensors")  # the store is the spill file
    assert first["train"].read_from is None and not (tmp_path / "spill").exists()
    again = build_caches(model, splits, 2, store_dir=tmp_path / "store", **kw)
    assert isinstance(again["train"], SpilledCache) and again["train"].read_from == stored
    rows = [again["test"].states[i] for i in range(len(splits["test"]))]
    assert all(torch.equal(a, b) for a, b in zip(rows, first["test"].states, strict=True))
    assert again["train"].build_seconds == pytest.approx(first["train"].build_seconds, abs=1e-3)
    # the same store (bf16) where bf16 fits the budget: read into memory
    n_tokens = sum(len(s) for ids in splits.values() for s in ids)
    kw["budget_bytes"] = n_tokens * D_TINY * 3
    eager = build_caches(model, splits, 2, store_dir=tmp_path / "store", **kw)
    assert type(eager["train"]) is PrefixCache and eager["train"].read_from == stored


@pytest.mark.parametrize("damage", ["truncated", "longer", "header", "lengths"])
def test_damaged_spilled_store_is_recomputed(tmp_path, caplog, damage):
    model, splits = model_with("last_block", pool="mean"), _splits()
    kw = dict(pad_id=0, length=None, budget_bytes=0, spill_dir=tmp_path / "spill")
    build_caches(model, splits, 2, store_dir=tmp_path, **kw)
    (path,) = tmp_path.glob("prefix-*.safetensors")
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    if damage == "truncated":
        data = data[:-10]
    elif damage == "longer":
        data += b"\0" * 8
    elif damage == "header":
        data = data[:8] + b"[" + data[9:]
    else:  # a text's length changed, the sizes still consistent
        header = json.loads(data[8 : 8 + n])
        start = header["train.lengths"]["data_offsets"][0] + 8 + n
        first, second = (int.from_bytes(data[start + 8 * i : start + 8 * i + 8], "little") for i in (0, 1))  # fmt: skip
        swapped = second.to_bytes(8, "little") + first.to_bytes(8, "little")
        data = data[:start] + swapped + data[start + 16 :]
    path.write_bytes(data)
    again = build_caches(model, splits, 2, store_dir=tmp_path, **kw)
    assert again["train"].read_from is None and "unreadable" in caplog.text
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1
    reread = build_caches(model, splits, 2, store_dir=tmp_path, **kw)  # rewritten whole
    assert reread["train"].read_from == path


def test_full_disk_while_spilling_runs_uncached(tmp_path, caplog, monkeypatch):
    model, splits = model_with("last_block", pool="mean"), _splits()

    def full(self, name, index, rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StoreWriter, "write", full)
    caches = build_caches(
        model, splits, 2, pad_id=0, length=None, budget_bytes=0, spill_dir=tmp_path
    )
    assert caches is None and "No space left" in caplog.text
    assert list(tmp_path.iterdir()) == []  # the partial file removed
    assert model.training  # left in the mode it came in


def test_over_budget_without_a_spill_dir_runs_uncached(caplog):
    """Under torchrun train.py passes no spill_dir: today's behaviour."""
    caplog.set_level("INFO")
    model, splits = model_with("last_block", pool="mean"), _splits()
    assert build_caches(model, splits, 2, pad_id=0, length=None, budget_bytes=0) is None
    assert "nowhere to spill" in caplog.text


def test_unwritable_spill_dir_warns_and_trains_uncached(small_split, tmp_path, caplog):  # noqa: F811
    out = tmp_path / "run"
    out.mkdir()
    (out / SPILL_DIR).write_text("in the way")  # no directory can be made there
    spilled = fit(tiny(small_split, out, epochs=1, cache_budget_mb=0, **QUICK))
    assert spilled["prefix_cache"] is None and "cannot write" in caplog.text
    uncached = fit(tiny(small_split, tmp_path / "plain", epochs=1, cache=False, **QUICK))
    assert without_timings(spilled) | {"config": None} == without_timings(uncached) | {
        "config": None
    }


def test_cv_spills_once_for_every_fold(reviews, tmp_path, caplog):  # noqa: F811
    caplog.set_level("INFO")
    with redirect_stdout(io.StringIO()):
        assert main(cv_argv(reviews, tmp_path / "spilled", "--cache-budget-mb", "0")) == 0
    assert not (tmp_path / "spilled" / SPILL_DIR).exists()
    budget = f"{bf16_budget_mb(caplog):.6f}"
    with redirect_stdout(io.StringIO()):
        assert main(cv_argv(reviews, tmp_path / "memory", "--cache-budget-mb", budget)) == 0
    spilled, memory = (json.loads((tmp_path / d / "cv.json").read_text()) for d in ("spilled", "memory"))  # fmt: skip
    assert spilled["prefix_cache"]["storage"] == "spilled"
    assert memory["prefix_cache"]["storage"] == "memory"
    assert memory["prefix_cache"]["dtype"] == "bfloat16"
    assert spilled["pooled"] == memory["pooled"]
    assert [f["logits"] for f in spilled["per_fold"]] == [f["logits"] for f in memory["per_fold"]]
