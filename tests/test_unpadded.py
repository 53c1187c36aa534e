"""Unpadded blocks (`model.Unpadded`): with pads in the batch, `run_blocks` runs the per-position
work on the real tokens only. Oracle: every block called on the padded (B, T) layout, as the
ONNX graph does, then the final norm and `pool`."""

import pytest
import torch
from torch.testing import assert_close

from gptclf.classifier import pool, set_trainable
from gptclf.encoder import padding_mask_to_bias
from gptclf.model import Unpadded, attention_mask_to_bias, positions_from_mask
from test_pooled_position import IDS, MASK, classifier, lora_classifier

ROUND_ROWS = Unpadded.round_rows


@pytest.fixture(autouse=True)
def exact_rows(monkeypatch):
    """The tests' batches are tiny (B * T = 18): rows unrounded, so that they unpad at all."""
    monkeypatch.setattr(Unpadded, "round_rows", staticmethod(lambda n: n))


LEFT_IDS = torch.tensor([[5, 9, 11, 13, 2, 7], [0, 0, 0, 0, 8, 3], [0, 0, 4, 4, 6, 1]])
LEFT_MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1]])


def padded_logits(model, x, mask, start=0):
    """Blocks[start:] on the padded layout, every position computed: the oracle."""
    backbone, bmask = model.backbone, model.backbone_mask(mask)
    if backbone.config.arch == "bert":
        bias = padding_mask_to_bias(bmask)
        for block in backbone.h[start:]:
            x = block(x, bias)
    else:
        positions = positions_from_mask(bmask)
        bias = attention_mask_to_bias(bmask, backbone.config.causal)
        for block in backbone.h[start:]:
            x = block(x, bias, backbone.rope, positions)
    return model.head(pool(backbone.ln_f(x), mask, model.pool_mode))


CASES = [
    pytest.param(arch, mode, causal, id=f"{arch}-{mode}-{'causal' if causal else 'bidirectional'}")
    for arch in ("gpt2", "llama")
    for mode in ("last_real", "mean", "first")
    for causal in (True, False)
] + [pytest.param("bert", mode, None, id=f"bert-{mode}") for mode in ("cls", "mean", "last_real")]


@pytest.mark.parametrize(("arch", "mode", "causal"), CASES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_unpadded_equals_the_padded_computation(arch, mode, causal, side):
    if arch == "bert" and side == "left":
        pytest.skip("BERT's positions count from the first column: batches are right-padded")
    model = classifier(arch, mode) if causal is None else classifier(arch, mode, causal=causal)
    ids, mask = (IDS, MASK) if side == "right" else (LEFT_IDS, LEFT_MASK)
    with torch.no_grad():
        x = model.backbone.embed(ids, model.backbone_mask(mask))
        expected = padded_logits(model, x, mask)
        assert_close(model(ids, mask), expected)
        if (mode, side) == ("first", "left"):
            return  # reads a pad's state, which the unpadded prefix leaves at zero (gptclf pads right)
        for start in (1, 2):  # from a frozen-prefix cache, as training reads it
            prefix = model.prefix_states(ids, mask, start)
            assert_close(model.forward_from(prefix, mask, start), expected)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("trainable", ["last_two_blocks", "all"])
def test_unpadded_gives_the_same_gradients(arch, trainable):
    model = classifier(arch, "last_real")
    set_trainable(model, trainable)
    labels = torch.tensor([0, 2, 1])
    x = model.backbone.embed(IDS, MASK).detach()
    grads = []
    for logits in (lambda: model.forward_from(x, MASK, 0), lambda: padded_logits(model, x, MASK)):
        model.zero_grad()
        torch.nn.functional.cross_entropy(logits(), labels).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert_close(grads[0][name], grads[1][name], msg=name)


def test_unpadded_with_wrapped_projections():
    model = lora_classifier("llama")
    with torch.no_grad():
        x = model.backbone.embed(IDS, MASK)
        assert_close(model(IDS, MASK), padded_logits(model, x, MASK))


def test_unpadded_only_where_it_pays(monkeypatch):
    index = torch.tensor([5, 1, 3])
    assert Unpadded.of(None, None) is None
    assert Unpadded.of(torch.ones(3, 6, dtype=torch.long), index) is None  # nothing padded
    # `first` with left padding reads a pad: that row's position is not among the real ones
    assert Unpadded.of(LEFT_MASK, torch.zeros(3, dtype=torch.long)) is None
    layout = Unpadded.of(MASK, index)
    assert layout is not None and len(layout.flat) == int(MASK.sum()) == 12
    x = torch.randn(3, 6, 4) * MASK[..., None]  # zeros at the pads, as `pad` leaves them
    assert_close(layout.pad(layout.unpad(x)), x)
    assert_close(layout.rows(layout.unpad(x), index)[:, 0], x[torch.arange(3), index])
    # rows rounded to bound the shapes oneDNN sees; not unpadded where that is no fewer rows
    assert [ROUND_ROWS(n) for n in (1, 64, 65, 511, 513, 1025)] == [64, 64, 128, 512, 576, 1152]
    monkeypatch.setattr(Unpadded, "round_rows", staticmethod(ROUND_ROWS))
    assert Unpadded.of(MASK, index) is None  # 12 tokens in 18 positions: 64 rows
    tens = (torch.arange(40) < 10).long().expand(8, 40)  # 80 tokens in 320 positions
    assert len(Unpadded.of(tens, None).flat) == 128


@pytest.mark.parametrize("arch", ["llama", "bert"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_spare_rows_change_nothing(arch, precision, monkeypatch):
    """N = 19 real tokens run as 24 rows (`Unpadded.round_rows` rounds up): the spare rows are
    dropped, in the outputs and the gradients."""
    monkeypatch.setattr(Unpadded, "round_rows", staticmethod(lambda n: n + 5))
    lengths = [10, 3, 5, 1]
    mask = (torch.arange(10) < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(1, 100, (4, 10)) * mask
    layout = Unpadded.of(mask, None)
    assert len(layout.flat) == 24 and int(mask.sum()) == 19
    model = classifier(arch, "last_real")
    set_trainable(model, "last_two_blocks")
    x = model.backbone.embed(ids, mask).detach()
    labels = torch.tensor([0, 2, 1, 1])
    results = []
    for logits in (lambda: model.forward_from(x, mask, 0), lambda: padded_logits(model, x, mask)):
        model.zero_grad()
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            out = logits()
        torch.nn.functional.cross_entropy(out.float(), labels).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.float(), grads))
    tolerance = {} if precision == "fp32" else dict(atol=0.1, rtol=0.05)
    assert_close(results[0][0], results[1][0], **tolerance)
    for name in results[0][1]:
        assert_close(results[0][1][name], results[1][1][name], msg=name, **tolerance)
