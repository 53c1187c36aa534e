"""Single-position pooling: the last block computes only the pooled position (`run_blocks(index=)`).

Oracle: the full computation (every position through every block, final norm, then `pool`).
"""

import pytest
import torch
from torch.testing import assert_close

from gptclf.classifier import SequenceClassifier, pool, set_trainable
from gptclf.config import ModelConfig
from gptclf.lm import build_backbone
from gptclf.lora import apply_lora

CONFIGS = {
    "gpt2": dict(name="gpt2-tiny", vocab_size=100, n_layer=3),
    "llama": dict(name="llama-tiny", vocab_size=100, n_layer=3),  # RMSNorm, RoPE, SwiGLU, GQA
    "bert": dict(
        name="minilm-l6",
        vocab_size=100,
        n_layer=3,
        n_head=4,
        d_model=32,
        d_ff=64,
        context_length=64,
    ),
}
IDS = torch.tensor([[5, 9, 11, 13, 2, 7], [8, 3, 0, 0, 0, 0], [4, 4, 6, 1, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]])


def classifier(arch="gpt2", pool_mode="last_real", **overrides):
    torch.manual_seed(0)
    spec = {**CONFIGS[arch], **overrides}
    config = ModelConfig.from_name(spec.pop("name"), **spec)
    model = SequenceClassifier(build_backbone(config), 3, pool_mode).eval()
    with torch.no_grad():  # every parameter random (norms and biases too): no error can hide
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model


def lora_classifier(arch):
    """`classifier` with LoRA on every linear (c_attn is a LoRALinear, not an nn.Linear), its B
    matrices random so that the adapters change the result."""
    model = classifier(arch, "last_real")
    apply_lora(model, rank=2, alpha=4.0, targets="all")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p))
    return model


def full_logits(model, x, mask, start):
    """Every position through every block, then the final norm, then `pool`: the oracle."""
    hidden = model.backbone.ln_f(model.backbone.run_blocks(x, model.backbone_mask(mask), start))
    return model.head(pool(hidden, mask, model.pool_mode))


CASES = [
    pytest.param(arch, mode, causal, id=f"{arch}-{mode}-{'causal' if causal else 'bidirectional'}")
    for arch in ("gpt2", "llama")
    for mode in ("last", "last_real", "first")
    for causal in (True, False)
] + [pytest.param("bert", mode, None, id=f"bert-{mode}") for mode in ("cls", "last_real")]


@pytest.mark.parametrize(("arch", "mode", "causal"), CASES)
@pytest.mark.parametrize("padded", [True, False])
def test_pooled_position_equals_the_full_computation(arch, mode, causal, padded):
    model = classifier(arch, mode, **({} if causal is None else {"causal": causal}))
    ids, mask = (IDS, MASK) if padded else (IDS[:, :4], None)
    with torch.no_grad():
        x = model.backbone.embed(ids, model.backbone_mask(mask))
        expected = full_logits(model, x, mask, 0)
        assert_close(model(ids, mask), expected)
        # From a frozen-prefix cache: the suffix alone, and no block at all (trainable head).
        for start in (2, 3):
            prefix = model.prefix_states(ids, mask, start)
            assert_close(model.forward_from(prefix, mask, start), expected)
            assert_close(
                model.forward_from(prefix, mask, start), full_logits(model, prefix, mask, start)
            )


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_pooled_position_gives_the_same_gradients(arch):
    model = classifier(arch, "last_real")
    set_trainable(model, "last_block")
    labels = torch.tensor([0, 2, 1])
    prefix = model.prefix_states(IDS, MASK, 2).detach()
    grads = []
    for logits in (
        lambda: model.forward_from(prefix, MASK, 2),
        lambda: full_logits(model, prefix, MASK, 2),
    ):
        model.zero_grad()
        torch.nn.functional.cross_entropy(logits(), labels).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert_close(grads[0][name], grads[1][name], msg=name)


def test_wrapped_projections_take_the_generic_path():
    model = lora_classifier("gpt2")
    with torch.no_grad():
        x = model.backbone.embed(IDS, MASK)
        assert_close(model(IDS, MASK), full_logits(model, x, MASK, 0))
