"""Every set of named choices, defined once (no torch: `gptclf --help` imports only this).

The training config, the command line, the Python API, the experiment validator and the server
import these tuples; the modules that implement a choice check against the same tuple.
"""

from __future__ import annotations

WEIGHTS = ("pretrained", "random")  # a known model's pretrained weights, or a random init
SPLIT_MODES = ("auto", "book", "book_full", "stratified")
BALANCE_MODES = ("none", "undersample")
TRUNCATIONS = ("head", "tail", "head+tail")  # which tokens a too-long text keeps
PADDING_MODES = ("longest", "max_context", "dynamic")
POOL_MODES = ("last", "last_real", "first", "cls", "mean")
TRAINABLE_HELP = "head | last_block | last_two_blocks | last_N (e.g. last_4) | all | lora"
TRAINABLE_PATTERN = r"head|all|lora|last_block|last_two_blocks|last_\d+"
LORA_TARGETS = ("attention", "mlp", "all")
LORA_SCALINGS = ("alpha_over_rank", "alpha")
SELECT_MODES = ("best", "last")  # the epoch kept: best validation accuracy, or the last
PRECISIONS = ("fp32", "bf16", "auto")  # training; auto = bf16 where it runs natively, else fp32
INFERENCE_PRECISIONS = ("fp32", "bf16", "int8", "auto")  # int8: dynamic quantization
