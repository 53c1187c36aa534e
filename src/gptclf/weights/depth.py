"""`--layers K`: only the first K blocks of a checkpoint (the classifier reads layer K).

The loaders read the file's config, cut it to K blocks here (`first_blocks`, which checks K
against the file's depth), then skip the tensors of the blocks above (`unused_block`) before
reading or dequantizing them: the dropped blocks are never materialised. Everything downstream
(trainable specs, LoRA, the prefix cache, checkpoints, export) sees a model of K blocks.
"""

from __future__ import annotations

import dataclasses
import re

from gptclf.config import ModelConfig
from gptclf.errors import GptclfError


def first_blocks(config: ModelConfig, layers: int | None) -> ModelConfig:
    """`config` cut to its first `layers` blocks (None: every block); one line naming --layers
    and the model's depth when it has fewer."""
    if layers is None:
        return config
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= config.n_layer:
        raise GptclfError(
            f"--layers must be in [1, {config.n_layer}] ({config.name} has {config.n_layer} "
            f"blocks), got {layers!r}"
        )
    return dataclasses.replace(config, n_layer=layers)


def unused_block(name: str, block: re.Pattern[str], kept: int, depth: int) -> bool:
    """Whether weight `name` belongs to a block cut off: `block` matches the format's block
    prefix at the start of a name, its first group the block's index; the blocks from `kept` up
    to the file's `depth` go. A name of no block, or of a block beyond `depth`, stays for the
    loader to judge (a tensor beyond the file's own depth is an error there)."""
    found = block.match(name)
    return found is not None and kept <= int(found.group(1)) < depth
