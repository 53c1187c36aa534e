"""LoRA: exact no-op at init, base keys kept, idempotent merge, scalings, what trains, checkpoints."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from fixtures_checkpoint import tiny_tokenizer
from gptclf.api import Classifier
from gptclf.checkpoint import ClassifierInfo, load_classifier, save_classifier
from gptclf.classifier import SequenceClassifier, set_trainable
from gptclf.cli import build_parser
from gptclf.config import ModelConfig
from gptclf.data import load_dataset
from gptclf.encoder import Encoder
from gptclf.errors import GptclfError
from gptclf.lora import LoRALinear, apply_lora, lora_layers, merge_lora
from gptclf.model import GPT
from gptclf.prefix_cache import cache_start
from gptclf.train import TrainConfig, fit, make_optimizer
from test_train import small_split, tiny  # noqa: F401  (fixture)


def tiny_classifier(seed: int = 0, arch: str = "decoder") -> SequenceClassifier:
    torch.manual_seed(seed)
    if arch == "bert":
        config = ModelConfig.from_name("minilm-l6", n_layer=2, d_model=32, n_head=4, d_ff=64)
        backbone = Encoder(config)
    else:
        backbone = GPT(ModelConfig.from_name("gpt2-tiny", vocab_size=512))
    return SequenceClassifier(backbone, 2, "last_real").eval()


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 512, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


def randomize_lora(model: nn.Module) -> None:
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B.normal_(0, 0.1)


def test_zero_init_gives_identical_logits():
    model = tiny_classifier()
    ids, mask = inputs()
    before = model(ids, mask)
    apply_lora(model, rank=4, alpha=8)
    assert all(bool((layer.lora_B == 0).all()) for layer in lora_layers(model))
    # Equal up to float rounding only: a plain c_attn projects the pooled query row on its own,
    # a wrapped one slices it out of the full projection (`model.Attention._project_at`).
    assert_close(model(ids, mask), before)


@pytest.mark.parametrize(
    "targets, names",
    [
        ("attention", {"attn.c_attn", "attn.c_proj"}),
        ("mlp", {"mlp.c_fc", "mlp.c_proj"}),
        ("all", {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}),
    ],
)
def test_targets_and_base_keys_are_preserved(targets, names):
    model = tiny_classifier()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    replaced = apply_lora(model, rank=2, alpha=4, targets=targets)
    assert set(replaced) == {f"backbone.h.{i}.{n}" for i in range(2) for n in names}
    assert isinstance(model.head, nn.Linear) and not isinstance(model.head, LoRALinear)
    keys = set(model.state_dict())
    lora_keys = {f"{r}.{p}" for r in replaced for p in ("lora_A", "lora_B")}
    assert keys == set(base) | lora_keys  # weight/bias stay exactly where nn.Linear had them
    result = model.load_state_dict(base, strict=False)  # a base checkpoint loads unchanged
    assert set(result.missing_keys) == lora_keys and not result.unexpected_keys


def test_bert_attention_targets_query_key_value_and_output():
    model = tiny_classifier(arch="bert")
    replaced = apply_lora(model, rank=2, alpha=2, targets="attention")
    names = {r.split(".", 3)[3] for r in replaced}
    assert names == {"attn.query", "attn.key", "attn.value", "attn.c_proj"}


def test_merge_is_idempotent_and_exact():
    model = tiny_classifier()
    apply_lora(model, rank=4, alpha=8, targets="all")
    randomize_lora(model)
    ids, mask = inputs()
    unmerged = model(ids, mask)
    layer = lora_layers(model)[0]
    expected = layer.weight.detach() + layer.scaling * layer.lora_B.detach() @ layer.lora_A.detach()
    for m in lora_layers(model):
        m.merge()
    merged_weight = layer.weight.detach().clone()
    assert_close(merged_weight, expected)
    assert_close(model(ids, mask), unmerged, atol=1e-5, rtol=1e-5)
    for m in lora_layers(model):
        m.merge()  # a second merge changes nothing
    assert torch.equal(layer.weight, merged_weight)
    assert_close(model(ids, mask), unmerged, atol=1e-5, rtol=1e-5)

    plain = merge_lora(model)  # plain linears again: exactly the base model's keys
    assert not lora_layers(plain)
    assert not any("lora" in k for k in plain.state_dict())
    assert_close(plain(ids, mask), unmerged, atol=1e-5, rtol=1e-5)


def test_scaling_conventions_differ_by_rank():
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    x = torch.randn(5, 16)
    rank, alpha = 4, 8.0
    per_rank = LoRALinear(linear, rank, alpha, "alpha_over_rank")
    book = LoRALinear(linear, rank, alpha, "alpha")
    with torch.no_grad():
        book.lora_A.copy_(per_rank.lora_A)
        per_rank.lora_B.normal_()
        book.lora_B.copy_(per_rank.lora_B)
        base = linear(x)
        # Oracle: the paper's formula, and the book's LoRALayer (alpha * x @ A @ B, A: (in, r)).
        paper = base + alpha / rank * (x @ per_rank.lora_A.T @ per_rank.lora_B.T)
        books = base + alpha * (x @ book.lora_A.T @ book.lora_B.T)
        assert_close(per_rank(x), paper)
        assert_close(book(x), books)
        assert_close(book(x) - base, rank * (per_rank(x) - base))
    assert per_rank.scaling == 2.0 and book.scaling == 8.0
    assert math.isclose(per_rank.lora_A.std().item(), book.lora_A.std().item())


def test_only_lora_and_head_parameters_train():
    model = tiny_classifier().train()
    apply_lora(model, rank=4, alpha=8, targets="attention")
    trainable, total = set_trainable(model, "lora")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {
        n for n, _ in model.named_parameters() if "lora_" in n or n.startswith("head.")
    }
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n in names) < total
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2))
    ids, mask = inputs()
    for _ in range(2):  # the second step also moves A (its gradient is 0 while B is 0)
        F.cross_entropy(model(ids, mask), torch.tensor([0, 1, 1])).backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == names


def test_lora_errors():
    model = tiny_classifier()
    with pytest.raises(GptclfError, match="no LoRA layers"):
        set_trainable(model, "lora")
    with pytest.raises(GptclfError, match="unknown LoRA targets"):
        apply_lora(model, rank=2, alpha=2, targets="embeddings")
    with pytest.raises(GptclfError, match="rank must be at least 1"):
        apply_lora(model, rank=0, alpha=2)
    with pytest.raises(GptclfError, match="unknown LoRA scaling"):
        apply_lora(model, rank=2, alpha=2, scaling="sqrt")
    apply_lora(model, rank=2, alpha=2, targets="mlp")
    with pytest.raises(GptclfError, match="already has a LoRA adapter"):
        apply_lora(model, rank=2, alpha=2, targets="all")


def test_prefix_cache_with_lora():
    model = tiny_classifier()
    apply_lora(model, rank=2, alpha=2)
    set_trainable(model, "lora")
    assert cache_start(model, fixed_length=True) is None  # adapters in block 0: nothing fixed
    model = tiny_classifier()
    apply_lora(model, rank=2, alpha=2, last_blocks=1)
    set_trainable(model, "lora")
    assert cache_start(model, fixed_length=True) == 1  # block 0 frozen and adapter-free


def test_save_and_reload_give_identical_predictions(tmp_path):
    model = tiny_classifier()
    lora = {"rank": 4, "alpha": 4.0, "targets": "all", "scaling": "alpha", "last_blocks": 1}
    apply_lora(model, **lora)
    randomize_lora(model)
    info = ClassifierInfo(model.backbone.config, ["ham", "spam"], "last_real", "dynamic", 64)
    info.lora = lora
    save_classifier(tmp_path, model.state_dict(), tiny_tokenizer(), info)  # ids < 512
    loaded, _, loaded_info = load_classifier(tmp_path)
    assert loaded_info.lora == lora and len(lora_layers(loaded)) == 4
    ids, mask = inputs()
    assert torch.equal(loaded(ids, mask), model(ids, mask))


def test_fit_with_lora_trains_saves_and_reloads(small_split, tmp_path):  # noqa: F811
    cfg = tiny(small_split, tmp_path / "run", trainable="lora", lora_rank=4, lora_alpha=8, epochs=1)
    metrics = fit(cfg)
    assert metrics["cached_from_block"] is None  # LoRA in every block: no frozen prefix
    assert metrics["config"]["lora"] == {
        "rank": 4,
        "alpha": 8,
        "targets": "all",
        "scaling": "alpha_over_rank",
    }
    clf = Classifier.load(tmp_path / "run")
    assert len(lora_layers(clf.model)) == 2 * 4
    again = clf.evaluate(load_dataset(small_split / "test.csv"))
    assert again["confusion_matrix"] == metrics["test"]["confusion_matrix"]
    assert again["loss"] == pytest.approx(metrics["test"]["loss"], abs=1e-6)


def test_fit_with_lora_in_the_last_block_caches_the_frozen_prefix(small_split, tmp_path):  # noqa: F811
    cfg = tiny(small_split, tmp_path / "run", trainable="lora", lora_rank=4, lora_blocks=1)
    metrics = fit(replace(cfg, epochs=1))
    assert metrics["cached_from_block"] == 1  # block 0 has no adapter: computed once per text
    assert metrics["config"]["lora"]["last_blocks"] == 1
    clf = Classifier.load(tmp_path / "run")
    assert len(lora_layers(clf.model)) == 4  # the last block's four linears
    again = clf.evaluate(load_dataset(small_split / "test.csv"))
    assert again["confusion_matrix"] == metrics["test"]["confusion_matrix"]
    assert again["loss"] == pytest.approx(metrics["test"]["loss"], abs=1e-6)
    with pytest.raises(GptclfError, match="lora-blocks must be at least 1"):
        replace(cfg, lora_blocks=0)
    with pytest.raises(GptclfError, match="last_blocks=3: the model has 2 blocks"):
        fit(replace(cfg, lora_blocks=3))


def test_cli_lora_flags():
    args = build_parser().parse_args(
        ["train", "--trainable", "lora", "--lora-rank", "16", "--lora-alpha", "16"]
        + ["--lora-targets", "attention", "--lora-scaling", "alpha", "--lora-blocks", "2"]
    )
    assert args.lora_blocks == 2
    assert (args.trainable, args.lora_rank, args.lora_alpha) == ("lora", 16, 16.0)
    assert (args.lora_targets, args.lora_scaling) == ("attention", "alpha")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--lora-scaling", "sqrt"])
