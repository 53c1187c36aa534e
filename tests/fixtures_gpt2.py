"""Tiny GPT-2 checkpoints in the exact Hugging Face layout, made with `transformers` (test-only)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from gptclf.tokenizer import installed_gpt2_bpe_files


def make_tiny_hf_gpt2(directory: Path, *, seed: int = 0, n_positions: int = 64):
    """Write config.json, model.safetensors, vocab.json, merges.txt like openai-community/gpt2.

    The safetensors keys have no `transformer.` prefix and include the `h.N.attn.bias` mask buffers,
    as in the hub's file. Every parameter is randomised (also norms and biases) so a wrong
    transpose or a dropped bias cannot go unnoticed. Returns the transformers model (eval mode).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=n_positions, vocab_size=50257)
    hf = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    hf.save_pretrained(directory)  # writes config.json (and the weights, replaced below)
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items()}
    state.pop("lm_head.weight", None)  # tied: the hub file has no separate LM head
    mask = torch.tril(torch.ones(n_positions, n_positions, dtype=torch.bool))
    for i in range(config.n_layer):
        state[f"h.{i}.attn.bias"] = mask.view(1, 1, n_positions, n_positions).clone()
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    encoder, vocab_bpe = installed_gpt2_bpe_files()
    shutil.copy(encoder, directory / "vocab.json")
    shutil.copy(vocab_bpe, directory / "merges.txt")
    return hf
