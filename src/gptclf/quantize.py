"""int8 dynamic quantization: the frozen prefix (`--int8-prefix`) and `--precision int8` inference
(every linear layer, the class head included), both with `TokenInt8Linear`.

`--int8-prefix` runs the frozen blocks below the first trainable one (`first_trainable_block`)
with int8 weights: their linears become `TokenInt8Linear`s, built from the fp32 weights, which
stay in the model under their own keys (the checkpoint keeps fp32 weights, and every load
quantizes them again the same way: `quantize_prefix`). The prefix cache then stores what the
int8 prefix computes, so the trained blocks learn on the features they get at inference.

Activation scales. torch's dynamic quantization measures one activation range per input tensor,
i.e. per batch: a text's features would depend on its batch-mates (and, with dynamic padding, on
their lengths). `TokenInt8Linear` gives every token (row) its own scale instead: each row is
divided by its largest |value|, and one anchor row holding +1 and -1 fixes the range the kernel
measures to [-1, 1], so every row is quantized on the same grid of its own scale, whatever else
is in the batch. Weights: one scale per output channel (symmetric). The matmul is torch's
`quantized::linear_dynamic` (fbgemm/x86/oneDNN; `torch._int_mm` has no fast CPU kernel).
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from gptclf.classifier import SequenceClassifier, first_trainable_block, freeze

log = logging.getLogger(__name__)


def quantized_engines() -> list[str]:
    """The quantized CPU engines this torch build has (none: int8 cannot run here)."""
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


def int8_prefix_runs(device: torch.device | str) -> bool:
    """Whether `--int8-prefix` can run here: a quantized engine, on the CPU (dynamic quantization
    has CPU kernels only). Otherwise a one-line warning, and the run is fp32 (what the checkpoint
    then records, so inference computes the same)."""
    if torch.device(device).type != "cpu":
        log.warning(
            "--int8-prefix runs on the CPU only (dynamic quantization): ignored on %s", device
        )
        return False
    if not quantized_engines():
        log.warning("--int8-prefix: this torch build has no quantized engine; running in fp32")
        return False
    return True


class TokenInt8Linear(nn.Module):
    """A frozen `nn.Linear` computed in int8: per-channel weight scales, per-token activation
    scales (see the module doc). `weight`/`bias` keep their keys and fp32 values (the checkpoint
    stores those); the packed int8 weight is derived from them and is not part of the state."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.in_features < 2:
            raise ValueError("the anchor row needs at least 2 input features")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters: no copy
        weight = linear.weight.detach().float()
        # torch 2.13 marks its quantization API deprecated (successor: torchao); it still works
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            observer = torch.ao.quantization.default_per_channel_weight_observer()  # symmetric
            observer(weight)
            scales, zero_points = observer.calculate_qparams()
            q = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(q, None)  # bias added in fp32
        anchor = torch.zeros(linear.in_features)
        anchor[:2] = torch.tensor([1.0, -1.0])
        self.register_buffer("anchor", anchor, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.float().reshape(-1, self.in_features)  # (B*T, in)
        # max |x| per row, as max(max x, -min x): the same values as vector_norm(inf), which
        # took 10-40% of this layer's time (its reduction is ~15x slower than amax/amin here)
        scale = torch.maximum(rows.amax(1, keepdim=True), rows.amin(1, keepdim=True).neg_())
        scale = scale.clamp_min_(torch.finfo(torch.float32).tiny)
        # Few passes over the activations (each op is a parallel region): rows/scale written
        # straight into the kernel's input, the anchor row after them.
        normed = torch.empty(rows.shape[0] + 1, self.in_features)
        torch.div(rows, scale, out=normed[:-1])
        normed[-1] = self.anchor
        # reduce_range: 7-bit activations, as torch's dynamic Linear (no int16 overflow on AVX2)
        y = torch.ops.quantized.linear_dynamic(normed, self.packed, reduce_range=True)[:-1]
        y = y * scale if self.bias is None else torch.addcmul(self.bias.float(), y, scale)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_prefix(model: SequenceClassifier) -> int:
    """Replace every `nn.Linear` of the blocks below the first trainable one by a
    `TokenInt8Linear` (in place); returns the number of blocks quantized (0: nothing frozen)."""
    blocks = first_trainable_block(model)
    for block in model.backbone.h[:blocks]:
        int8_linears(block)
    if blocks:
        log.info("--int8-prefix: blocks 0-%d of %d in int8", blocks - 1, len(model.backbone.h))
    else:
        log.warning("--int8-prefix: no frozen block below the trained ones; nothing in int8")
    return blocks


def requantize_prefix(model: SequenceClassifier, trainable: str, source: object) -> None:
    """A checkpoint trained with `--int8-prefix`, loaded (fp32 weights): the same frozen blocks
    (those below `trainable`'s) in int8 again, so inference computes what training did."""
    if not quantized_engines():
        log.warning(
            "%s was trained with --int8-prefix, but this torch build has no quantized engine: "
            "its frozen blocks run in fp32 (probabilities differ slightly from training's)",
            source,
        )
        return
    freeze(model, trainable)
    quantize_prefix(model)
    model.requires_grad_(False)  # inference only; freeze() was to find the frozen blocks


def int8_blocks(model: SequenceClassifier) -> int:
    """How many of the first blocks hold int8 linears (what `quantize_prefix` did)."""
    blocks = model.backbone.h
    return next(
        (
            i
            for i, block in enumerate(blocks)
            if not any(isinstance(m, TokenInt8Linear) for m in block.modules())
        ),
        len(blocks),
    )


def int8_linears(module: nn.Module) -> None:
    """Replace every `nn.Linear` inside `module` by a `TokenInt8Linear`, in place."""
    for name, child in list(module.named_modules()):
        if type(child) is nn.Linear:
            parent, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent), attr, TokenInt8Linear(child))


def quantize_linears(model: nn.Module) -> nn.Module:
    """`--precision int8` inference: every `nn.Linear` of `model` (in place) computed in int8 by
    a `TokenInt8Linear`, so a text's probabilities do not depend on its batch-mates, as they do
    under torch's `quantize_dynamic` (one activation scale per batch). Returns `model`."""
    model.requires_grad_(False)
    int8_linears(model)
    return model
