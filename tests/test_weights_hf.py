import dataclasses

import pytest
import torch
from safetensors.torch import load_file, save_file

from fixtures_gpt2 import make_tiny_hf_gpt2
from gptclf.errors import GptclfError
from gptclf.lm import load_lm
from gptclf.weights.hf_gpt2 import save_hf_gpt2


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_gpt2")
    hf = make_tiny_hf_gpt2(directory)
    return directory, hf


def test_logits_match_transformers(tiny_dir):
    directory, hf = tiny_dir
    lm = load_lm(directory)
    ids = torch.randint(0, 50257, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = lm.model(ids)
        theirs = hf(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_right_padding_mask_keeps_real_token_outputs(tiny_dir):
    directory, hf = tiny_dir
    lm = load_lm(directory)
    ids = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    with torch.no_grad():
        ours = lm.model(ids, attention_mask=mask)
        theirs_short = hf(ids[:1, :7]).logits
    torch.testing.assert_close(ours[0, :7], theirs_short[0], rtol=1e-4, atol=1e-4)


def test_left_padding_equals_unpadded(tiny_dir):
    directory, _ = tiny_dir
    lm = load_lm(directory)
    ids = torch.randint(0, 50257, (1, 9), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.full((1, 4), lm.tokenizer.pad_id), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], 1)
    with torch.no_grad():
        plain = lm.model(ids)
        left = lm.model(padded, attention_mask=mask)
    torch.testing.assert_close(left[:, 4:], plain, rtol=1e-4, atol=1e-4)


def test_prefixed_keys_without_buffers_also_load(tiny_dir, tmp_path):
    directory, hf = tiny_dir
    for name in ("config.json", "vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((directory / name).read_bytes())
    state = {
        f"transformer.{k}": v
        for k, v in load_file(directory / "model.safetensors").items()
        if not k.endswith(".attn.bias")
    }
    save_file(state, str(tmp_path / "model.safetensors"))
    lm = load_lm(tmp_path)
    ids = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)


def test_mismatched_weights_are_a_clear_error(tiny_dir, tmp_path):
    directory, _ = tiny_dir
    for name in ("config.json", "vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((directory / name).read_bytes())
    state = load_file(directory / "model.safetensors")
    state["h.0.mlp.c_fc.weight"] = state["h.0.mlp.c_fc.weight"][:, :10].contiguous()
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(GptclfError, match="h.0.mlp.c_fc.weight"):
        load_lm(tmp_path)
    state.pop("h.0.mlp.c_fc.weight")
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(GptclfError, match="missing"):
        load_lm(tmp_path)


def test_corrupt_safetensors_is_a_clear_error(tiny_dir, tmp_path):
    directory, _ = tiny_dir
    for name in ("config.json", "vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((directory / name).read_bytes())
    (tmp_path / "model.safetensors").write_bytes(
        (directory / "model.safetensors").read_bytes()[:5000]
    )
    with pytest.raises(GptclfError, match="corrupt"):
        load_lm(tmp_path)


def test_unknown_name_and_missing_path():
    with pytest.raises(GptclfError, match="unknown model"):
        load_lm("gpt5-giant")
    with pytest.raises(GptclfError, match="does not exist"):
        load_lm("/nonexistent/dir/model")


def test_save_hf_gpt2_round_trips(tiny_dir, tmp_path):
    directory, hf = tiny_dir
    lm = load_lm(directory)
    save_hf_gpt2(tmp_path, lm.config, lm.model.state_dict())
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((directory / name).read_bytes())
    again = load_lm(tmp_path)
    assert dataclasses.replace(again.config, name=lm.config.name) == lm.config
    ids = torch.randint(0, 50257, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(again.model(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)
