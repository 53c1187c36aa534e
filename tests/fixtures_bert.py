"""Tiny BERT checkpoints in the exact Hugging Face layout, made with `transformers` (test-only)."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["free", "call", "now", "win", "prize", "you", "the", "to", "##ing", "##ed"]  # ##s: a char


def tiny_vocab() -> list[str]:
    """Specials at BERT's positions of [PAD] (0); single characters, their `##` forms, a few words."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return SPECIALS + chars + [f"##{c}" for c in chars] + WORDS


def write_wordpiece_tokenizer(path: Path, vocab: list[str] | None = None) -> None:
    """A BERT `tokenizer.json` as `BertTokenizerFast` writes it (normalizer, pre-tokenizer,
    [CLS] $A [SEP] template), with padding/truncation switched on as in all-MiniLM-L6-v2's file."""
    vocab = vocab or tiny_vocab()
    ids = {tok: i for i, tok in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(SPECIALS)
    tok.enable_truncation(max_length=16)
    tok.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    tok.save(str(path))


def make_tiny_hf_bert(directory: Path, *, seed: int = 0, prefix: bool = False):
    """Write config.json, model.safetensors (via `save_pretrained`) and tokenizer.json.

    Every parameter is randomised (norms, biases and the unused token type 1 too), so a wrong key
    or a missing term cannot go unnoticed. prefix=True saves a `BertForMaskedLM` instead: keys
    with `bert.` and the `cls.predictions.*` head. Returns the transformers `BertModel` (eager
    attention, eval mode).
    """
    from transformers import BertConfig, BertForMaskedLM, BertModel

    vocab = tiny_vocab()
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    hf = BertForMaskedLM(config) if prefix else BertModel(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    directory.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(directory)
    write_wordpiece_tokenizer(directory / "tokenizer.json", vocab)
    return (hf.bert if prefix else hf).eval()
