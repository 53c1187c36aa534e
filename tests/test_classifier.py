import pytest
import torch

from gptclf.classifier import SequenceClassifier, pool, set_trainable
from gptclf.config import ModelConfig
from gptclf.errors import GptclfError
from gptclf.model import GPT


def tiny_classifier(pool_mode="last", **overrides):
    torch.manual_seed(0)
    config = ModelConfig.from_name("gpt2-tiny", vocab_size=100, n_layer=3, **overrides)
    return SequenceClassifier(GPT(config), num_classes=3, pool_mode=pool_mode).eval()


def test_pool_modes_pick_the_right_vectors():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)  # value = b*4 + t
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last").flatten().tolist() == [3, 7]
    assert pool(hidden, right, "first").flatten().tolist() == [0, 4]
    assert pool(hidden, right, "last_real").flatten().tolist() == [1, 7]
    assert pool(hidden, left, "last_real").flatten().tolist() == [3, 7]
    assert pool(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]
    assert pool(hidden, left, "mean").flatten().tolist() == [2.5, 5.5]
    with pytest.raises(GptclfError):
        pool(hidden, right, "max")


def test_last_real_ignores_pads_even_when_pad_id_is_a_real_token_id():
    model = tiny_classifier("last_real")
    eos = 7
    ids = torch.tensor([[5, 9, eos, eos, eos]])  # the text itself ends with eos, then pads (= eos)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    with torch.no_grad():
        padded = model(ids, mask)
        unpadded = model(ids[:, :3], mask[:, :3])
    torch.testing.assert_close(padded, unpadded)


@pytest.mark.parametrize("mode", ["last_real", "mean", "first"])
def test_pad_aware_modes_are_invariant_to_padding(mode):
    model = tiny_classifier(mode)
    ids = torch.tensor([[5, 9, 11, 13]])
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(model(padded, mask), model(ids, torch.ones_like(ids)))


def test_each_pool_mode_changes_the_output():
    ids = torch.tensor([[5, 9, 11, 13, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    outs = {}
    for mode in ("last", "last_real", "first", "mean"):
        with torch.no_grad():
            outs[mode] = tiny_classifier(mode)(ids, mask)
    modes = list(outs)
    for i, a in enumerate(modes):
        for b in modes[i + 1 :]:
            assert not torch.allclose(outs[a], outs[b]), (a, b)


def test_last_mode_treats_pads_as_tokens_like_the_book():
    model = tiny_classifier("last")
    ids = torch.tensor([[5, 9, 11, 0, 0]])
    with torch.no_grad():
        with_mask = model(ids, torch.tensor([[1, 1, 1, 0, 0]]))
        without_mask = model(ids)
    torch.testing.assert_close(with_mask, without_mask)


def test_causal_mask_switch_changes_outputs_of_early_tokens():
    ids = torch.tensor([[5, 9, 11, 13]])
    causal = tiny_classifier("first")
    bidirectional = tiny_classifier("first", causal=False)
    with torch.no_grad():
        a, b = causal(ids), bidirectional(ids)
        # With the mask, token 0 sees only itself: changing a later token can't affect it.
        a2 = causal(torch.tensor([[5, 9, 11, 14]]))
        b2 = bidirectional(torch.tensor([[5, 9, 11, 14]]))
    torch.testing.assert_close(a, a2)
    assert not torch.allclose(b, b2)
    assert not torch.allclose(a, b)


def test_no_causal_mask_still_ignores_pads():
    model = tiny_classifier("mean", causal=False)
    ids = torch.tensor([[5, 9, 11]])
    padded = torch.tensor([[5, 9, 11, 3, 3]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(model(padded, mask), model(ids))


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_set_trainable_specs():
    model = tiny_classifier()
    n, total = set_trainable(model, "head")
    assert trainable_names(model) == {"head.weight", "head.bias"}
    assert n == model.head.weight.numel() + model.head.bias.numel()

    set_trainable(model, "last_block")
    names = trainable_names(model)
    assert {n.split(".")[2] for n in names if n.startswith("backbone.h.")} == {"2"}
    assert "backbone.ln_f.weight" in names and "head.weight" in names
    assert "backbone.wte.weight" not in names

    set_trainable(model, "last_two_blocks")
    assert {n.split(".")[2] for n in trainable_names(model) if n.startswith("backbone.h.")} == {
        "1",
        "2",
    }
    set_trainable(model, "last_3")
    assert {n.split(".")[2] for n in trainable_names(model) if n.startswith("backbone.h.")} == {
        "0",
        "1",
        "2",
    }
    assert "backbone.wte.weight" not in trainable_names(model)

    n, total = set_trainable(model, "all")
    assert n == total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("spec", ["last_4", "some_layers", "last_-1"])
def test_set_trainable_rejects_bad_specs(spec):
    with pytest.raises(GptclfError):
        set_trainable(tiny_classifier(), spec)


def test_frozen_parameters_do_not_change_in_a_step():
    model = tiny_classifier("last_real").train()
    set_trainable(model, "last_block")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(torch.tensor([[5, 9, 11]])).logsumexp(-1).sum()
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable_names(model)
    assert any(n.startswith("backbone.h.2.") for n in changed)
