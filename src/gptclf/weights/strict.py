"""One strict, shape-checked load for every model built on the meta device."""

from __future__ import annotations

import torch
from torch import nn

from gptclf.errors import GptclfError


def assign_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load `state_dict` into `model` by assignment (no copy, no prior init), strictly.

    Missing or unexpected keys and wrong shapes raise a GptclfError naming the first few and the
    `source` (a model name or a path) they came from.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise GptclfError(
            f"weights of {source} do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for key, tensor in state_dict.items():
        if tensor.shape != expected[key].shape:
            raise GptclfError(
                f"weight {key} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(expected[key].shape)} (in {source})"
            )
    model.load_state_dict(state_dict, strict=True, assign=True)
