"""The chapter-6 recipe on pretrained weights: SmolLM2-135M in the book's own Llama code.

The GPT-2-small rows of speed.py use random weights (no pretrained GPT-2 offline), where the
book's pooling (the last position behind the padding) and gptclf's (the last real token) give
different features; these rows compare the two code paths where it matters, on the pretrained
SmolLM2-135M: the book's `llms_from_scratch.llama3.Llama3Model` (its Llama 3 code; SmolLM2 is the
same architecture with plain RoPE) loaded with the same weights, trained by the book's chapter-6
loop, against `gptclf train` with the same hyperparameters and its fast defaults.

Used by speed.py's ch6_book_smollm2 / ch6_ours_smollm2 benchmarks.
"""

from __future__ import annotations

import torch


def book_config(config) -> dict:
    """Our Llama `ModelConfig` in the book's Llama3Model config format (rope_freq None: plain
    RoPE, no Llama 3.1 frequency scaling). The book's RMSNorm eps is fixed at 1e-5 (SmolLM2's)."""
    return {
        "vocab_size": config.vocab_size,
        "context_length": config.context_length,
        "emb_dim": config.d_model,
        "n_heads": config.n_head,
        "n_layers": config.n_layer,
        "hidden_dim": config.d_ff,
        "n_kv_groups": config.n_kv_head,
        "rope_base": config.rope_theta,
        "rope_freq": None,
        "dtype": torch.float32,
    }


def to_book_llama(state: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    """Our Llama keys (fused c_attn = q|k|v, fused c_fc = gate|up) -> the book's Llama3Model."""
    d, kv = cfg["emb_dim"], cfg["n_kv_groups"] * cfg["emb_dim"] // cfg["n_heads"]
    out = {"tok_emb.weight": state["wte.weight"], "final_norm.weight": state["ln_f.weight"]}
    out["out_head.weight"] = state.get("lm_head.weight", state["wte.weight"])  # tied
    for i in range(cfg["n_layers"]):
        ours, book = f"h.{i}.", f"trf_blocks.{i}."
        q, k, v = state[ours + "attn.c_attn.weight"].split([d, kv, kv])
        gate, up = state[ours + "mlp.c_fc.weight"].chunk(2)
        out |= {
            book + "att.W_query.weight": q,
            book + "att.W_key.weight": k,
            book + "att.W_value.weight": v,
            book + "att.out_proj.weight": state[ours + "attn.c_proj.weight"],
            book + "norm1.weight": state[ours + "ln_1.weight"],
            book + "norm2.weight": state[ours + "ln_2.weight"],
            book + "ff.fc1.weight": gate,
            book + "ff.fc2.weight": up,
            book + "ff.fc3.weight": state[ours + "mlp.c_proj.weight"],
        }
    return out


def book_smollm2_classifier(seed: int):
    """(book model with SmolLM2's weights and a fresh 2-class head drawn with `seed`, tokenizer)."""
    from llms_from_scratch.llama3 import Llama3Model

    from gptclf.lm import load_lm

    lm = load_lm("smollm2-135m", progress=False)
    cfg = book_config(lm.config)
    with torch.device("meta"):
        model = Llama3Model(cfg)
    model.load_state_dict(to_book_llama(lm.model.state_dict(), cfg), assign=True)
    model.cos, model.sin = (t.to("cpu") for t in _rope(model))  # buffers were on meta
    torch.manual_seed(seed)
    model.out_head = torch.nn.Linear(cfg["emb_dim"], 2)
    return model, lm.tokenizer


def _rope(model):
    from llms_from_scratch.llama3 import compute_rope_params

    cfg = model.cfg
    return compute_rope_params(
        head_dim=cfg["emb_dim"] // cfg["n_heads"],
        theta_base=cfg["rope_base"],
        context_length=cfg["context_length"],
        freq_config=cfg["rope_freq"],
    )
