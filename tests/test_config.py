import pytest
import torch

from gptclf.config import ModelConfig
from gptclf.errors import GptclfError
from gptclf.model import GPT


@pytest.mark.parametrize(
    "name, n_params",
    # Parameter counts of the Hugging Face GPT-2 checkpoints (tied LM head counted once).
    [
        ("gpt2-small", 124_439_808),
        ("gpt2-medium", 354_823_168),
        ("gpt2-large", 774_030_080),
        ("gpt2-xl", 1_557_611_200),
    ],
)
def test_gpt2_presets_have_the_published_sizes(name, n_params):
    with torch.device("meta"):  # shapes only, no memory
        model = GPT(ModelConfig.from_name(name))
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_smollm2_preset_size():
    with torch.device("meta"):
        model = GPT(ModelConfig.from_name("smollm2-135m"))
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


def test_json_round_trip_and_overrides():
    config = ModelConfig.from_name("gpt2", causal=False, dropout=0.1)
    assert config.name == "gpt2-small" and not config.causal
    assert ModelConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("bad", [dict(norm="batchnorm"), dict(n_head=5), dict(dropout=1.5)])
def test_invalid_configs_are_rejected(bad):
    with pytest.raises(GptclfError):
        ModelConfig.from_name("gpt2-tiny", **bad)


def test_unknown_preset():
    with pytest.raises(GptclfError, match="unknown model preset"):
        ModelConfig.from_name("gpt3")
