"""gptclf: turn a pretrained GPT-style language model into a text classifier."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Classifier", "GptclfError", "LanguageModel", "ModelConfig", "load_lm", "__version__"]

if TYPE_CHECKING:
    from gptclf.api import Classifier
    from gptclf.config import ModelConfig
    from gptclf.errors import GptclfError
    from gptclf.lm import LanguageModel, load_lm

_LAZY = {
    "Classifier": "gptclf.api",
    "ModelConfig": "gptclf.config",
    "GptclfError": "gptclf.errors",
    "LanguageModel": "gptclf.lm",
    "load_lm": "gptclf.lm",
}


def __getattr__(name: str) -> Any:
    # Lazy: `gptclf --help` and the CLI's error paths should not pay for importing torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gptclf' has no attribute {name!r}")
