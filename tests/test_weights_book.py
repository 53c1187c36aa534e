"""The book's GPTModel (PyPI `llms-from-scratch`, a benchmark-only dependency) -> our GPT: logits."""

import pytest
import torch
from torch.testing import assert_close

from gptclf.errors import GptclfError
from gptclf.model import GPT
from gptclf.weights.book import config_from_book, convert_book_gpt

ch04 = pytest.importorskip("llms_from_scratch.ch04")

BOOK_TINY = {
    "vocab_size": 100,
    "context_length": 16,
    "emb_dim": 32,
    "n_heads": 4,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": True,
}


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_book_model_converts_to_identical_logits(qkv_bias):
    torch.manual_seed(0)
    book = ch04.GPTModel({**BOOK_TINY, "qkv_bias": qkv_bias}).eval()
    with torch.no_grad():  # the book's init leaves norms at 1/0: randomise them too
        for p in book.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = GPT.from_state_dict(config_from_book(BOOK_TINY), convert_book_gpt(book.state_dict()))
    ids = torch.randint(0, 100, (2, 11))
    with torch.no_grad():
        assert_close(ours(ids), book(ids), rtol=1e-4, atol=1e-4)


def test_unknown_key_is_an_error():
    with pytest.raises(GptclfError, match="unknown key"):
        convert_book_gpt({"trf_blocks.0.att.W_extra.weight": torch.zeros(1)})


def test_our_llama_converts_to_the_books_llama3model():
    """benchmarks/book_llama.py: our Llama keys -> the book's Llama3Model (GQA, SwiGLU, RoPE)."""
    import sys
    from pathlib import Path

    from gptclf.config import ModelConfig

    llama3 = pytest.importorskip("llms_from_scratch.llama3")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import book_llama

    torch.manual_seed(0)
    config = ModelConfig.from_name("llama-tiny", tie_embeddings=True, norm_eps=1e-5)
    ours = GPT(config).eval()
    with torch.no_grad():  # norms at 1 would hide a swapped norm1/norm2
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    cfg = book_llama.book_config(config)
    book = llama3.Llama3Model(cfg).eval()
    book.load_state_dict(book_llama.to_book_llama(ours.state_dict(), cfg))
    ids = torch.randint(0, config.vocab_size, (2, 12))
    with torch.no_grad():
        assert_close(book(ids), ours(ids), rtol=1e-4, atol=1e-4)
