"""A `SequenceClassifier` as an ONNX graph: `input_ids`, `attention_mask` -> `logits`.

`GraphClassifier` is the classifier's forward pass without its data-dependent shortcuts, which
`torch.export` (the ONNX exporter since torch 2.9) cannot follow: `attention_mask_to_bias` and
`padding_mask_to_bias` return None when nothing is padded, `run_blocks` computes a single
position in the last block. The graph always builds the mask and runs every position; the
result is the same (the parity tests hold both to 1e-4), and one graph serves every batch.
Needs the `export` extra: onnx, onnxscript (the exporter), onnxruntime (the check, int8).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from gptclf.classifier import SequenceClassifier, pool
from gptclf.encoder import Encoder
from gptclf.errors import GptclfError
from gptclf.model import positions_from_mask

log = logging.getLogger(__name__)

INPUTS, OUTPUTS = ["input_ids", "attention_mask"], ["logits"]
ONNX_TOLERANCE = 1e-4  # |onnxruntime - torch| allowed on the check batch
# Above this size one .onnx file (a protobuf, at most 2 GiB) cannot hold the weights.
EXTERNAL_DATA_BYTES = 1_800_000_000


def decoder_mask(attention_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """`model.attention_mask_to_bias` without its "nothing padded: None" shortcut: (B, 1, T, T),
    True = may attend; pad keys masked, causal if asked, each query always sees itself."""
    T = attention_mask.shape[1]
    positions = torch.arange(T, device=attention_mask.device)
    allowed = attention_mask.bool()[:, None, None, :]
    if causal:
        allowed = allowed & (positions[None, :] <= positions[:, None])
    return allowed | (positions[None, :] == positions[:, None])


class GraphClassifier(nn.Module):
    """`SequenceClassifier.forward` in a form `torch.export` can trace (see the module doc)."""

    def __init__(self, model: SequenceClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        model = self.model
        backbone = model.backbone
        mask = model.backbone_mask(attention_mask)  # None for `last`: pads are tokens
        x = backbone.embed(input_ids, mask)
        if isinstance(backbone, Encoder):
            keys = None if mask is None else mask.bool()[:, None, None, :]
            for block in backbone.h:
                x = block(x, keys)
        else:
            T = input_ids.shape[1]
            if mask is None:  # SDPA's is_causal path, as `run_blocks` takes it without a mask
                positions, bias = torch.arange(T, device=input_ids.device), None
            else:
                positions, bias = (
                    positions_from_mask(mask),
                    decoder_mask(mask, backbone.config.causal),
                )
            for block in backbone.h:
                x = block(x, bias, backbone.rope, positions)
        hidden = backbone.ln_f(x)
        return model.head(pool(hidden, attention_mask, model.pool_mode))


@contextmanager
def quiet() -> Iterator[None]:
    """The exporter and the quantizer log every pass and node at INFO (the quantizer on the root
    logger) and warn about optional packages: none of it is for the user. Errors still show."""
    names = ["torch.onnx", "onnxscript", "onnx_ir", ""]
    levels = {name: logging.getLogger(name).level for name in names}
    gptclf = logging.getLogger("gptclf")
    own = gptclf.level
    gptclf.setLevel(gptclf.getEffectiveLevel())  # ours keep their level while root is raised
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        gptclf.setLevel(own)


def sample_inputs(vocab_size: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of 2 rows x 8 tokens, the second right-padded: sizes above 1,
    so `torch.export` keeps both axes symbolic; random ids, fixed seed."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (2, 8), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids.masked_fill(mask == 0, pad_id), mask


def _require(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise GptclfError(f"--format onnx needs the {module} package: pip install 'gptclf[export]'")


def export_onnx(model: SequenceClassifier, path: Path) -> None:
    """Write `model` to `path` (opset 18+, batch and sequence dynamic up to the context)."""
    for module in ("onnx", "onnxscript"):
        _require(module)
    config = model.backbone.config
    batch = torch.export.Dim("batch", min=1)
    sequence = torch.export.Dim("sequence", min=1, max=config.context_length)
    shapes = {name: {0: batch, 1: sequence} for name in INPUTS}
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    with quiet(), torch.no_grad():
        torch.onnx.export(
            GraphClassifier(model).eval(),
            sample_inputs(config.vocab_size, 0),
            str(path),
            input_names=INPUTS,
            output_names=OUTPUTS,
            dynamic_shapes=shapes,
            dynamo=True,
            external_data=size > EXTERNAL_DATA_BYTES,
            verbose=False,
        )


def check_onnx(model: SequenceClassifier, path: Path, pad_id: int) -> float:
    """Run the file in onnxruntime on a padded batch of another shape than the traced one and
    compare with the PyTorch classifier: an exporter bug fails here, not in the user's hands."""
    _require("onnxruntime")
    import onnxruntime

    generator = torch.Generator().manual_seed(1)
    T = min(13, model.backbone.config.context_length)
    ids = torch.randint(0, model.backbone.config.vocab_size, (3, T), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, T // 2 :] = 0
    mask[2, 3:] = 0
    ids = ids.masked_fill(mask == 0, pad_id)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(OUTPUTS, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        expected = model(ids, mask)
    error = float((torch.from_numpy(logits) - expected).abs().max())
    if not error <= ONNX_TOLERANCE:
        raise RuntimeError(f"the exported graph differs from the model by {error:.3g}")
    log.info("onnxruntime matches PyTorch to %.2g on a padded check batch", error)
    return error


def quantize_int8(source: Path, target: Path) -> None:
    """onnxruntime's dynamic quantization: int8 weights for MatMul/Gemm, activations quantized
    per batch at run time. Approximate: its accuracy is measured, not promised."""
    _require("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    large = source.with_name(source.name + ".data").exists()  # weights beside the graph
    with quiet():
        quantize_dynamic(
            str(source), str(target), weight_type=QuantType.QInt8, use_external_data_format=large
        )
