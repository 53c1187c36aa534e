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


PROMPT = 'Message: "{text}"\nIs this message spam? Answer:'


def test_prompt_wraps_each_text_and_truncation_cuts_only_the_text() -> None:
    tok = Tokenizer.from_bpe_files(*installed_gpt2_bpe_files())
    texts = ["one two three four five six seven eight", "hi"]
    whole = [tok.encode(PROMPT.replace("{text}", t)) for t in texts]
    ids, lengths = encode_with_lengths(tok, texts, 100, prompt=PROMPT)
    assert ids == whole and lengths == [len(w) for w in whole]  # untruncated: one encoding
    prompt_only = len(whole[1]) - 1  # "hi" is one token
    for policy in ("head", "tail", "head+tail"):
        (cut,) = encode(tok, texts[:1], prompt_only + 3, policy, prompt=PROMPT)
        assert len(cut) == prompt_only + 3
        assert tok.decode(cut).startswith('Message: "')
        assert tok.decode(cut).endswith('"\nIs this message spam? Answer:')  # kept whole
    assert tok.decode(encode(tok, texts[:1], prompt_only + 2, "head", PROMPT)[0]) == (
        'Message: "one two"\nIs this message spam? Answer:'
    )
    assert tok.decode(encode(tok, texts[:1], prompt_only + 2, "tail", PROMPT)[0]) == (
        'Message: " seven eight"\nIs this message spam? Answer:'
    )


def test_prompt_keeps_the_special_tokens_of_a_bert_tokenizer(tmp_path) -> None:
    from fixtures_bert import write_wordpiece_tokenizer
    from gptclf.weights.bert import load_bert_tokenizer

    write_wordpiece_tokenizer(tmp_path / "tokenizer.json")
    tok = load_bert_tokenizer(tmp_path)
    (ids,) = encode(tok, ["a b c d e f"], 8, "head", prompt="x: {text} ?")
    cls, sep = tok.encode("a")[0], tok.encode("a")[-1]
    assert ids[0] == cls and ids[-1] == sep and len(ids) == 8
    tokens = [tok.backend.id_to_token(i) for i in ids]
    assert tokens == ["[CLS]", "x", ":", "a", "b", "c", "?", "[SEP]"]


@pytest.mark.parametrize("truncation", ["head", "tail", "head+tail"])
def test_truncation_keeps_the_special_tokens_of_a_bert_tokenizer(tmp_path, truncation) -> None:
    from fixtures_bert import write_wordpiece_tokenizer
    from gptclf.weights.bert import load_bert_tokenizer

    write_wordpiece_tokenizer(tmp_path / "tokenizer.json")
    tok = load_bert_tokenizer(tmp_path)
    (ids,) = encode(tok, ["a b c d e f"], 5, truncation)
    tokens = [tok.backend.id_to_token(i) for i in ids]
    kept = {"head": ["a", "b", "c"], "tail": ["d", "e", "f"], "head+tail": ["a", "b", "f"]}
    assert tokens == ["[CLS]", *kept[truncation], "[SEP]"]


def test_bad_prompts_are_one_line_errors() -> None:
    tok = Tokenizer.from_bpe_files(*installed_gpt2_bpe_files())
    for bad in ("no slot", "{text} and {text}"):
        with pytest.raises(GptclfError, match='must contain "{text}" exactly once'):
            encode(tok, ["hi"], 10, prompt=bad)
    with pytest.raises(GptclfError, match="the prompt takes 8 of the 8 tokens"):
        encode(tok, ["hi"], 8, prompt="a b c d e f g {text} h")
    with pytest.raises(GptclfError, match="text #2 encodes to no tokens"):
        encode(tok, ["hi", ""], 10, prompt="Q: {text}")
