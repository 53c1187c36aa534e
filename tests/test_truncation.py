"""Truncation policies of batching.encode: which tokens a too-long text keeps, and the count."""

from __future__ import annotations

import logging

import pytest

from gptclf.batching import encode, encode_with_lengths, truncate
from gptclf.errors import GptclfError
from gptclf.tokenizer import Tokenizer, installed_gpt2_bpe_files


def test_truncate_policies() -> None:
    seq = list(range(10))
    assert truncate(seq, 4, "head") == [0, 1, 2, 3]
    assert truncate(seq, 4, "tail") == [6, 7, 8, 9]
    assert truncate(seq, 5, "head+tail") == [0, 1, 2, 8, 9]
    assert truncate(seq, 4, "head+tail") == [0, 1, 8, 9]
    assert truncate(seq, 1, "head+tail") == [0]
    for policy in ("head", "tail", "head+tail"):
        assert truncate(seq, 10, policy) is seq  # short enough: untouched
    with pytest.raises(GptclfError, match="unknown truncation 'middle'"):
        truncate(seq, 4, "middle")


def test_encode_counts_and_applies_the_policy(caplog: pytest.LogCaptureFixture) -> None:
    tok = Tokenizer.from_bpe_files(*installed_gpt2_bpe_files())
    texts = ["one two three four five six seven", "hi"]
    full = tok.encode(texts[0])
    with caplog.at_level(logging.WARNING):
        ids, lengths = encode_with_lengths(tok, texts, 3, "tail")
    assert ids == [full[-3:], tok.encode("hi")] and lengths == [len(full), 1]
    assert "1 of 2 texts truncated to 3 tokens (tail)" in caplog.text
    assert encode(tok, texts, 4, "head+tail")[0] == full[:2] + full[-2:]
    assert encode(tok, texts, 4)[0] == full[:4]  # head: the default, as before
