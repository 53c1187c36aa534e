"""A trained classifier in a Hugging Face layout that `transformers` loads with no custom code:
`GPT2ForSequenceClassification`, `LlamaForSequenceClassification`, `BertForSequenceClassification`.

Key maps are tables, inverses of the loaders where one exists (GPT-2: `weights/hf.py`'s
`gpt2_to_hf`; BERT: `weights/bert.py`'s `WEIGHT_MAP`); Llama, which we read from GGUF only, has
its own table, in the Hugging Face "rotate half" Q/K layout our RoPE already uses.

Where their classes compute something else than ours, the mapping stays exact or is refused:
- pooling: their decoders read the rightmost token that is not the pad id (our `last_real` with
  right padding); BERT reads [CLS] through its pooler (our `cls`/`first`). Other modes: refused.
- the head bias: their decoder `score` layers have none. GPT-2's final LayerNorm has a bias that
  only the score reads, so the head bias moves into it exactly (`fold_head_bias`). Llama's final
  RMSNorm has no bias and its output scales with 1/rms(x), so no parameter can carry a constant:
  a head bias that differs between classes is refused (a class-constant one changes no
  softmax probability and is dropped; with sigmoid outputs, multi-label, any bias is refused).
  The `smollm2` recipe trains a bias-free head (`--no-head-bias`) for this reason; its test
  accuracy is the biased head's in each of seeds 123-125 (README, "Export").
- BERT's pooler is tanh(dense(h)); it becomes a near-identity (`identity_pooler`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from gptclf.classifier import SequenceClassifier
from gptclf.config import ModelConfig
from gptclf.errors import GptclfError
from gptclf.weights.bert import BERT_CONFIG_MAP, WEIGHT_MAP
from gptclf.weights.hf_gpt2 import gpt2_to_hf

HfExport = tuple[dict[str, Any], dict[str, torch.Tensor]]  # (config.json fields, state dict)

# Our key ({} = block) -> their keys; several keys: our fused rows, split by LLAMA_ROW_SPLITS.
LLAMA_WEIGHTS: dict[str, tuple[str, ...]] = {
    "wte.weight": ("model.embed_tokens.weight",),
    "ln_f.weight": ("model.norm.weight",),
    "h.{}.ln_1.weight": ("model.layers.{}.input_layernorm.weight",),
    "h.{}.ln_2.weight": ("model.layers.{}.post_attention_layernorm.weight",),
    "h.{}.attn.c_attn.weight": (
        "model.layers.{}.self_attn.q_proj.weight",
        "model.layers.{}.self_attn.k_proj.weight",
        "model.layers.{}.self_attn.v_proj.weight",
    ),
    "h.{}.attn.c_proj.weight": ("model.layers.{}.self_attn.o_proj.weight",),
    "h.{}.mlp.c_fc.weight": (
        "model.layers.{}.mlp.gate_proj.weight",
        "model.layers.{}.mlp.up_proj.weight",
    ),
    "h.{}.mlp.c_proj.weight": ("model.layers.{}.mlp.down_proj.weight",),
}
LLAMA_ROW_SPLITS: dict[str, Callable[[ModelConfig], list[int]]] = {
    # model.Attention: rows [q (n_head*hs) | k (n_kv_head*hs) | v (n_kv_head*hs)]
    "h.{}.attn.c_attn.weight": lambda c: [c.n_head * c.head_dim] + [c.n_kv_head * c.head_dim] * 2,
    "h.{}.mlp.c_fc.weight": lambda c: [c.d_ff, c.d_ff],  # model.MLP: rows [gate | up]
}
# LlamaConfig field -> ModelConfig field
LLAMA_CONFIG_MAP = {
    "vocab_size": "vocab_size",
    "hidden_size": "d_model",
    "intermediate_size": "d_ff",
    "num_hidden_layers": "n_layer",
    "num_attention_heads": "n_head",
    "num_key_value_heads": "n_kv_head",
    "head_dim": "head_dim",
    "max_position_embeddings": "context_length",
    "rms_norm_eps": "norm_eps",
    "tie_word_embeddings": "tie_embeddings",
}
# BERT: the loader's table inverted (its dropped buffers and heads have no source here).
BERT_WEIGHTS = {ours: ("bert." + theirs,) for theirs, ours in WEIGHT_MAP.items() if ours}

GPT2_SWITCHES = dict(norm="layernorm", mlp="gelu_tanh", positions="learned", bias=True)
LLAMA_SWITCHES = dict(norm="rmsnorm", mlp="swiglu", positions="rope", bias=False)
ARCHITECTURES = {
    "gpt2": "GPT2ForSequenceClassification",
    "llama": "LlamaForSequenceClassification",
    "bert": "BertForSequenceClassification",
}
POOLS = {"gpt2": ("last_real",), "llama": ("last_real",), "bert": ("cls", "first")}
# |tanh(z) / z - 1| <= z^2 / 3: with |z| <= 1e-3 the pooler is the identity to 3.4e-7 (relative).
POOLER_INPUT_BOUND = 1e-3


def family(config: ModelConfig) -> str:
    """gpt2, llama or bert: the transformers class that computes this backbone."""
    if config.arch == "bert":
        return "bert"
    for name, switches in (("gpt2", GPT2_SWITCHES), ("llama", LLAMA_SWITCHES)):
        if all(getattr(config, k) == v for k, v in switches.items()):
            if name == "gpt2" and config.n_kv_head != config.n_head:
                break
            return name
    shape = ", ".join(f"{k}={getattr(config, k)}" for k in ("norm", "mlp", "positions", "bias"))
    raise GptclfError(f"--format hf: no transformers class computes this decoder ({shape})")


def check_exportable(model: SequenceClassifier) -> str:
    """The family, or a one-line GptclfError saying why the model cannot be exported exactly."""
    config = model.backbone.config
    name = family(config)
    if model.pool_mode not in POOLS[name]:
        raise GptclfError(
            f"--format hf: {ARCHITECTURES[name]} pools {' or '.join(POOLS[name])}, this "
            f"classifier pools {model.pool_mode!r} (--format onnx exports every pooling)"
        )
    if name != "bert" and not config.causal:
        raise GptclfError(
            "--format hf: trained with --no-causal-mask, but transformers' decoders always "
            "apply the causal mask (--format onnx exports it)"
        )
    return name


def rename(
    state: dict[str, torch.Tensor],
    table: dict[str, tuple[str, ...]],
    config: ModelConfig,
    splits: dict[str, Callable[[ModelConfig], list[int]]] | None = None,
) -> dict[str, torch.Tensor]:
    """Our keys -> theirs by `table`; a fused tensor is split along rows by `splits`."""
    out = {}
    for key, tensor in state.items():
        layer = re.findall(r"^h\.(\d+)\.", key)
        template = re.sub(r"^h\.\d+\.", "h.{}.", key)
        if template not in table:
            raise GptclfError(f"--format hf: weight {key!r} has no Hugging Face name")
        targets = table[template]
        parts = tensor.split((splits or {})[template](config)) if len(targets) > 1 else [tensor]
        for target, part in zip(targets, parts, strict=True):
            out[target.format(*layer)] = part.contiguous()
    return out


def fold_head_bias(
    weight: torch.Tensor, bias: torch.Tensor, norm_bias: torch.Tensor
) -> torch.Tensor:
    """The final LayerNorm bias β' with W β' = W β + b (minimal-norm solution, float64).

    GPT2ForSequenceClassification computes W (γ⊙n + β') with no head bias; ours is
    W (γ⊙n + β) + b. β feeds nothing but the head, so both agree when W (β' - β) = b, which
    W (C x d, C <= d, rows independent) always allows. Refused when float32 could not carry it.
    """
    W, b = weight.double(), bias.double()
    delta = torch.linalg.pinv(W) @ b
    folded = (norm_bias.double() + delta).float()
    achieved = W @ (folded.double() - norm_bias.double())
    # float32 rounding of W·β' grows with sum |W| |β'|; keep it far below the 1e-4 promise
    rounding = float((W.abs() @ folded.double().abs()).max()) * 2**-23
    if float((achieved - b).abs().max()) > 1e-6 or rounding > 1e-5:
        raise GptclfError(
            "--format hf: the head bias cannot be moved into ln_f exactly (the head's rows are "
            "nearly dependent); --format onnx exports it"
        )
    return folded


def drop_constant_bias(bias: torch.Tensor | None, multi_label: bool = False) -> None:
    """Refuse a head bias that changes a probability (Llama's score has none, see above): one
    that differs between classes, or with sigmoid outputs (multi-label) any nonzero one, since
    each label's sigmoid reads its own logit and no shared constant cancels."""
    if bias is None:
        return
    if multi_label:
        size = float(bias.abs().max())
        why = f"this multi-label head's bias reaches {size:.3g} (each label's sigmoid reads it)"
    else:
        size = float(bias.max() - bias.min())
        why = f"this head's bias differs between classes by {size:.3g}"
    if size > 1e-7:
        raise GptclfError(
            "--format hf: LlamaForSequenceClassification's score head has no bias and no other "
            f"parameter can carry one (final RMSNorm), but {why}; train with --no-head-bias to "
            "export it (--format onnx exports this one)"
        )


def identity_pooler(
    weight: torch.Tensor, bias: torch.Tensor, norm: torch.nn.LayerNorm
) -> dict[str, torch.Tensor]:
    """BERT pooler + classifier computing our `head(h_cls)`: logits = (W/ε) tanh(ε h) + b.

    tanh(z) = z (1 - z^2/3 + ...): with each ε_i chosen so that |ε_i h_i| <= 1e-3 for every
    possible h (the last LayerNorm bounds it: |h_i| <= |γ_i| sqrt(d) + |β_i|), the pooler is
    the identity to 3.4e-7 relative, below float32 noise of the sums.
    """
    d = weight.shape[1]
    bound = norm.weight.detach().abs() * d**0.5 + norm.bias.detach().abs()
    eps = POOLER_INPUT_BOUND / bound.clamp(min=1e-6)
    return {
        "bert.pooler.dense.weight": torch.diag(eps).contiguous(),
        "bert.pooler.dense.bias": torch.zeros(d),
        "classifier.weight": (weight / eps).contiguous(),
        "classifier.bias": bias.clone(),
    }


def backbone_state(model: SequenceClassifier) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


def gpt2_classifier(model: SequenceClassifier, multi_label: bool) -> HfExport:
    """Exact logits, so either activation: the head bias is folded into ln_f."""
    config, state = model.backbone.config, backbone_state(model)
    head = model.head
    if head.bias is not None:
        state["ln_f.bias"] = fold_head_bias(head.weight, head.bias, state["ln_f.bias"])
    hf_config, hf_state = gpt2_to_hf(config, state)
    for field in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        hf_config[field] = config.dropout
    hf_state = {f"transformer.{k}": v for k, v in hf_state.items()}
    return hf_config, {**hf_state, "score.weight": head.weight.detach().clone()}


def llama_classifier(model: SequenceClassifier, multi_label: bool) -> HfExport:
    config, head = model.backbone.config, model.head
    drop_constant_bias(head.bias, multi_label)
    hf_config = {theirs: getattr(config, ours) for theirs, ours in LLAMA_CONFIG_MAP.items()}
    hf_config.update(
        model_type="llama",
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=config.dropout,
        rope_theta=config.rope_theta,  # transformers < 5 reads this key, 5 `rope_parameters`
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
    )
    state = rename(backbone_state(model), LLAMA_WEIGHTS, config, LLAMA_ROW_SPLITS)
    return hf_config, {**state, "score.weight": head.weight.detach().clone()}


def bert_classifier(model: SequenceClassifier, multi_label: bool) -> HfExport:
    """Exact logits (BERT's classifier keeps the bias), so either activation."""
    config, head = model.backbone.config, model.head
    hf_config = {theirs: getattr(config, ours) for theirs, ours in BERT_CONFIG_MAP.items()}
    hf_config.update(
        model_type="bert",
        hidden_act="gelu",
        position_embedding_type="absolute",
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
    )
    bias = head.bias if head.bias is not None else torch.zeros(head.out_features)
    last_norm = model.backbone.h[-1].ln_2  # post-norm: what [CLS]'s vector comes out of
    state = rename(backbone_state(model), BERT_WEIGHTS, config)
    return hf_config, {**state, **identity_pooler(head.weight.detach(), bias.detach(), last_norm)}


CONVERTERS: dict[str, Callable[[SequenceClassifier, bool], HfExport]] = {
    "gpt2": gpt2_classifier,
    "llama": llama_classifier,
    "bert": bert_classifier,
}


@torch.no_grad()
def classifier_to_hf(model: SequenceClassifier, multi_label: bool = False) -> tuple[str, HfExport]:
    """(architecture class name, (config.json fields, state dict)); refusals as GptclfError.
    `multi_label`: the logits go through a sigmoid each, not a softmax together."""
    name = check_exportable(model)
    hf_config, state = CONVERTERS[name](model, multi_label)
    hf_config["architectures"] = [ARCHITECTURES[name]]
    return ARCHITECTURES[name], (hf_config, {k: v.float().contiguous() for k, v in state.items()})
