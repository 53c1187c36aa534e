import pytest

from gptclf.data import load_dataset
from gptclf.download import sha256_file
from gptclf.errors import GptclfError
from gptclf.tokenizer import GPT2_ENCODER_SHA256, Tokenizer, installed_gpt2_bpe_files


@pytest.fixture(scope="module")
def gpt2():
    return Tokenizer.from_bpe_files(*installed_gpt2_bpe_files())


def test_installed_files_are_gpt2s():
    encoder, vocab_bpe = installed_gpt2_bpe_files()
    assert sha256_file(encoder) == GPT2_ENCODER_SHA256


def test_canonical_encoding(gpt2):
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces"
    ids = gpt2.encode(text)
    assert ids == [
        15496,
        11,
        466,
        345,
        588,
        8887,
        30,
        220,
        50256,
        554,
        262,
        4252,
        18250,
        8812,
        2114,
    ]
    assert gpt2.decode(ids) == text
    assert gpt2.pad_id == gpt2.eos_id == 50256 and gpt2.vocab_size == 50257


def test_equals_tiktoken_on_every_sms(gpt2):
    """tiktoken's GPT-2 encoding, built from the same local files, is the oracle."""
    tiktoken_load = pytest.importorskip("tiktoken.load")
    import tiktoken

    encoder, vocab_bpe = installed_gpt2_bpe_files()
    ranks = tiktoken_load.data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder))
    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    enc = tiktoken.Encoding(
        "gpt2", pat_str=pattern, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )
    texts = load_dataset("sms-spam").texts
    assert gpt2.encode_batch(texts) == enc.encode_ordinary_batch(texts)


def test_save_and_load_round_trip(gpt2, tmp_path):
    gpt2.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    text = "Ünïcode and   spaces\n\tand 12345 digits"
    assert again.encode(text) == gpt2.encode(text)
    assert again.pad_id == gpt2.pad_id


def test_unreadable_tokenizer(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(GptclfError, match="tokenizer.json: not valid JSON"):
        Tokenizer.load(tmp_path)
