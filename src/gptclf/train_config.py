"""`TrainConfig`: every training option, defined once, with its help text, choices and checks.

Defaults are the book's chapter 6; `RECIPES` are named override tables (`book`, `smollm2`). The
`gptclf train` flags are generated from the fields (`cli.add_train_args`), and `__post_init__`
checks every value, so the Python API and the command line reject the same bad values with the
same message, before any data or model is loaded. No torch here: `gptclf train --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any

from gptclf import choices, tables
from gptclf.errors import GptclfError


def option(default: Any, help: str = "", **cli: Any) -> Any:
    """A field with its command-line description. `cli` keys: choices (checked in
    `__post_init__`), flag (the flag's name when it is not --field-name: `--no-x` flags store
    False), metavar, negatable (--x/--no-x), parse (a str -> value function), check (a value ->
    None function raising `GptclfError`, for values other than None), tty_default (the CLI
    default is whether stderr is a terminal)."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})


# Every run replaces this one (`gptclf train` with no --out); another --out that holds a run needs
# --resume or --overwrite (out_dir.py).
DEFAULT_OUT = "runs/latest"
# Memory for the frozen-prefix cache before it spills to disk (prefix_cache.py).
CACHE_BUDGET_MB = 1024  # 50,000 SMS-length texts spill (bf16 ~2 GiB): peak RSS stays ~1.2 GiB


def unescape_newlines(text: str) -> str:
    """`\\n` typed on a command line is a newline (prompt templates span lines)."""
    return text.replace("\\n", "\n")


@dataclass
class TrainConfig:
    model: str = option(
        "gpt2-small", "model name (see `gptclf models`), HF directory or .gguf file"
    )
    weights: str = option(
        "pretrained",
        "pretrained, or random: the same architecture from a random init",
        choices=choices.WEIGHTS,
    )
    layers: int | None = option(
        None,
        "keep only the first K blocks of the model, so the classifier reads layer K (mid-depth "
        "layers can classify better, Skean et al. 2025); the blocks above are never loaded, "
        "--trainable's last blocks are the top ones of the K (default: every block)",
        metavar="K",
    )
    data: str = option(
        "sms-spam", "sms-spam | sms-spam-uci | a .csv/.tsv/.jsonl/.parquet file | a split directory"
    )
    text_columns: list[str] | None = option(
        None,
        "text column(s), several joined by a newline; if not given: Text",
        flag="--text-column",
        metavar="COLUMN",
    )
    label_column: str | None = option(None, "label column; if not given: Label", metavar="COLUMN")
    multi_label: bool = option(
        False,
        "each text has zero or more labels: the label column holds them separated by "
        "--label-sep (JSONL: also a list; empty: no label); sigmoid outputs, binary "
        "cross-entropy, a threshold per label",
    )
    label_sep: str = option(
        "|", "with --multi-label: the separator between the labels of a cell", metavar="SEP"
    )
    encoding: str | None = option(
        None,
        "text encoding of the table files, e.g. cp1252, latin-1 (default: UTF-8, a byte-order "
        "mark allowed; a file that is not UTF-8 but reads as cp1252 is read so, with a warning)",
        check=tables.check_encoding,
    )
    delimiter: str | None = option(
        None,
        "CSV/TSV delimiter: one character, or tab (default: , for .csv, tab for .tsv; a .csv "
        "header split by ; but not by , is read as ;-separated, with a warning)",
        parse=tables.parse_delimiter,
        check=tables.check_delimiter,
        metavar="CHAR",
    )
    validation: str | None = option(
        None, "validation file; if not given: split off --data", metavar="FILE"
    )
    test: str | None = option(None, "test file; if not given: split off --data", metavar="FILE")
    split: str = option(
        "auto",
        "auto: book on sms-spam, else stratified (with --seed); book_full: the book's "
        "validation/test, every other row trains",
        choices=choices.SPLIT_MODES,
    )
    balance: str = option(
        "none",
        "undersample: cut every class of the training split to the rarest one's size",
        choices=choices.BALANCE_MODES,
    )
    class_weights: str = option(
        "none",
        "cross-entropy weights per class (auto: inverse class frequency); multi-label: "
        "weights of each label's positives (auto: negatives/positives)",
        metavar="auto|none|W1,W2,...",
    )
    trainable: str = option("last_block", choices.TRAINABLE_HELP)
    lora_rank: int = option(8, "with --trainable lora: the adapters' rank")
    lora_alpha: float = option(16.0, "with --trainable lora: the adapters' alpha")
    lora_targets: str = option(
        "all",
        "the linears that get adapters (the book's bonus code wraps every one)",
        choices=choices.LORA_TARGETS,
    )
    lora_scaling: str = option(
        "alpha_over_rank",
        "update scale: alpha/rank (default) or alpha (the book's bonus code)",
        choices=choices.LORA_SCALINGS,
    )
    lora_blocks: int | None = option(
        None,
        "adapters in the last N blocks only (default: every block); the frozen blocks "
        "below them are computed once per text (prefix cache)",
        metavar="N",
    )
    head_bias: bool = option(
        True,
        "a bias in the class head; --no-head-bias: none, so --format hf exports a Llama "
        "classifier exactly (LlamaForSequenceClassification's head has no bias)",
        negatable=True,
    )
    pool: str = option(
        "last",
        "which token feeds the head: last position (pads included), last real token, "
        "first, cls, or the mean over real tokens",
        choices=choices.POOL_MODES,
    )
    padding: str = option(
        "longest",
        "longest: to the longest training text; max_context: to the context, or "
        "--max-length if shorter; dynamic: per batch",
        choices=choices.PADDING_MODES,
    )
    causal: bool = option(
        True, "let every token attend to every real token", flag="--no-causal-mask"
    )
    dropout: float = option(0.0, "dropout probability in the backbone")
    max_length: int | None = option(None, "tokens kept per text (default: the model's context)")
    truncation: str = option(
        "head",
        "which tokens a longer text keeps (head+tail: the first and the last half)",
        choices=choices.TRUNCATIONS,
    )
    prompt: str | None = option(
        None,
        'classify each text inside this template, e.g. \'Message: "{text}"\\nIs it '
        'spam?\' (one "{text}"; \\n is a newline; truncation cuts the text, never the prompt)',
        parse=unescape_newlines,
    )
    epochs: int = option(5, "training epochs")
    patience: int | None = option(
        None,
        "stop after N epochs in a row without a better validation accuracy (ties: a lower "
        "validation loss) (default: every epoch runs)",
        metavar="N",
    )
    select: str = option(
        "best",
        "the epoch kept: best validation accuracy (multi-label: micro-F1; default) or the "
        "last (as the book)",
        choices=choices.SELECT_MODES,
    )
    tune_thresholds: bool = option(
        False,
        "with --multi-label: each label's decision threshold is the one with the best F1 on "
        "the validation split (ties: the closest to 0.5), not 0.5",
    )
    batch_size: int = option(
        8, "examples per step and process (global batch = this x processes x --grad-accum)"
    )
    bucket: bool = option(
        True,
        "dynamic padding: batches of similar lengths (faster with long-tailed lengths, "
        "but nearly one class where length predicts the label) or, --no-bucket, random batches",
        negatable=True,
    )
    grad_accum: int = option(1, "steps whose gradients add up before each optimizer step")
    lr: float = option(5e-5, "AdamW learning rate")
    weight_decay: float = option(0.1, "AdamW weight decay (matrices only)")
    seed: int = option(123, "seed of the initialisation, the batches and the split")
    split_seed: int | None = option(
        None, "seed of the data split only (default: --seed); fix it to vary only training"
    )
    eval_batch_size: int = option(32, "examples per evaluation batch")
    precision: str = option(
        "fp32",
        "bf16: autocast with fp32 master weights; auto: bf16 where the CPU/GPU runs it "
        "natively (AVX-512/AMX, Arm BF16, CUDA), else fp32",
        choices=choices.PRECISIONS,
    )
    int8_prefix: bool = option(
        False,
        "run the frozen blocks below the trained ones in int8 (per-channel weight and "
        "per-token activation scales; CPU only, else fp32 with a warning); evaluate, predict "
        "and serve quantize them the same way, export refuses such a checkpoint",
    )
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    cache: bool = option(
        True,
        "recompute frozen lower blocks every step (default: cache them once)",
        flag="--no-cache",
    )
    cache_dir: str | None = option(
        None,
        "also keep the frozen-prefix cache in this folder, keyed by weights, settings and "
        "texts: later runs with the same frozen prefix (other seeds, heads, lrs) skip computing it",
    )
    cache_budget_mb: float = option(
        CACHE_BUDGET_MB,
        "memory the frozen-prefix cache may take, in MiB: float32 if it fits, else bfloat16, "
        "else it is spilled to a bfloat16 file (in --cache-dir, else OUT/.prefix-spill, removed "
        "at the end) and read batch by batch",
        metavar="MIB",
    )
    compile: bool = option(
        False,
        "torch.compile the training forward (compiles on the first steps; needs a C++ "
        "compiler on the CPU)",
    )
    fsdp: bool = option(
        False, "under torchrun: shard parameters, gradients and optimizer state (default: DDP)"
    )
    out: str | None = option(
        DEFAULT_OUT,
        "checkpoint directory: new or empty, or --resume/--overwrite for one that holds a run "
        f"(the default {DEFAULT_OUT} is replaced by every run; in Python, out=None writes nothing)",
    )
    resume: bool = option(
        False,
        "continue the run in --out from its training state (train_state.safetensors): "
        "the same command plus --resume; without a state, start fresh",
    )
    overwrite: bool = option(
        False,
        "replace the run in --out: its files are removed before training, so none of them "
        "mix with this run's",
    )
    save_every: int | None = option(
        None,
        "optimizer steps between saves of the training state in --out (default: about "
        "once a minute; always at the end of an epoch)",
        metavar="N",
    )
    time_budget: str | None = option(
        None,
        "with --recipe auto: the most time the search over candidates may take, e.g. 90s, "
        "10m, 1h (default: every candidate runs)",
        metavar="DURATION",
    )
    baseline: bool = option(
        True,
        "skip the TF-IDF + logistic regression baseline fitted beside the model",
        flag="--no-baseline",
    )
    report: bool = option(
        True, "no plots or report.md in the checkpoint directory", flag="--no-report"
    )
    progress: bool = option(
        True,
        "no progress bar (default when not a terminal)",
        flag="--no-progress",
        tty_default=True,
    )

    def __post_init__(self) -> None:
        if isinstance(self.text_columns, str):  # a single column given as a string
            self.text_columns = [self.text_columns]
        if isinstance(self.delimiter, str):  # "tab" in Python as on the command line
            self.delimiter = tables.parse_delimiter(self.delimiter)
        for name in PATH_FIELDS:  # pathlib paths work too; the config is stored as JSON
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        for f in dataclasses.fields(self):
            check_field(f, getattr(self, f.name))
        check_values(self)


def flag_name(f: dataclasses.Field) -> str:
    """The flag that sets field `f` (for messages; --no-x flags are named by their field)."""
    flag = f.metadata.get("flag", "")
    return flag if flag and not flag.startswith("--no-") else "--" + f.name.replace("_", "-")


def check_field(f: dataclasses.Field, value: Any) -> None:
    """A field's value against its declared choices and, for a number, its range."""
    flag = flag_name(f)
    known = f.metadata.get("choices")
    if known is not None and value not in known:
        raise GptclfError(f"{flag} must be one of {', '.join(known)}, got {value!r}")
    if value is None:
        return
    if (check := f.metadata.get("check")) is not None:
        check(value)
    if f.name in NUMBER_RANGES:
        check_number(flag, value, NUMBER_RANGES[f.name])


@dataclass(frozen=True)
class Range:
    """The numbers a flag accepts (finite; `integer`: whole numbers only), and how a message
    says so."""

    low: float
    high: float = math.inf
    integer: bool = True
    low_open: bool = False  # low itself is not allowed (--lr > 0)
    high_open: bool = False  # high itself is not allowed (--dropout < 1)

    def __contains__(self, value: Any) -> bool:
        kind = numbers.Integral if self.integer else numbers.Real  # numpy's numbers too
        if isinstance(value, bool) or not isinstance(value, kind):
            return False
        if not self.integer and not finite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        if self.high == math.inf:
            return f"greater than {self.low}" if self.low_open else f"at least {self.low}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low}, {self.high}{right}"

    def message(self, flag: str, given: Any) -> str:
        """One line naming the flag, the allowed range and what was given (a number out of
        range, or text that is not one)."""
        number = isinstance(given, numbers.Real) and not isinstance(given, bool)
        whole = isinstance(given, numbers.Integral) or not self.integer
        if number and whole and (self.integer or finite(given)):
            return f"{flag} must be {self.describe()}, got {given}"  # the right kind, too far
        kind = "an integer" if self.integer else "a finite number"
        return f"{flag} must be {kind}, {self.describe()}, got {given!r}"


def finite(value: numbers.Real) -> bool:
    """Not nan or ±inf; an int is finite, unless it is beyond what a float holds (then a float
    option would become inf)."""
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond 1e308
        return False


def check_number(flag: str, value: Any, allowed: Range) -> None:
    """`value` in `allowed`, else one line naming `flag` and the range (used for every numeric
    option: TrainConfig's fields and the other commands' flags alike)."""
    if value not in allowed:
        raise GptclfError(allowed.message(flag, value))


PATH_FIELDS = ("model", "data", "validation", "test", "cache_dir", "out")
AT_LEAST_1 = Range(1)  # counts: epochs, batch sizes, ranks...
# numpy's legacy RandomState (pandas' sample, the book split) takes seeds up to 2**32 - 1 only.
SEED = Range(0, 2**32 - 1)
# Every numeric field's range; a field missing here fails tests/test_flags.py.
NUMBER_RANGES: dict[str, Range] = {
    **dict.fromkeys(
        ("layers", "lora_rank", "lora_blocks", "max_length", "epochs", "batch_size", "grad_accum",
         "eval_batch_size", "save_every", "patience"),
        AT_LEAST_1,
    ),
    "seed": SEED,
    "split_seed": SEED,
    "lr": Range(0, integer=False, low_open=True),
    "weight_decay": Range(0, integer=False),
    "lora_alpha": Range(0, integer=False, low_open=True),
    "dropout": Range(0, 1, integer=False, high_open=True),
    "cache_budget_mb": Range(0, integer=False),
}  # fmt: skip


def check_values(cfg: TrainConfig) -> None:
    """What a field's type, choices and range do not say."""
    if not re.fullmatch(choices.TRAINABLE_PATTERN, cfg.trainable):
        raise GptclfError(
            f"unknown trainable spec {cfg.trainable!r}; expected {choices.TRAINABLE_HELP}"
        )
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise GptclfError(f"unknown device {cfg.device!r}; expected auto, cpu, cuda or cuda:N")
    if cfg.compile and not has_cpp_compiler():
        raise GptclfError(
            "--compile needs a C++ compiler for Inductor (g++ or clang++, or set CXX)"
        )
    if cfg.time_budget is not None:
        parse_duration(cfg.time_budget)
    if cfg.resume and cfg.overwrite:
        raise GptclfError("--resume continues the run in --out, --overwrite replaces it: give one")
    if cfg.resume and cfg.fsdp:
        raise GptclfError("--resume does not support --fsdp yet (its optimizer state is sharded)")
    if cfg.out is not None and os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise GptclfError(f"--out {cfg.out} is a file, not a directory")
    from gptclf.balance import parse_class_weights  # numpy; imported when a config is built
    from gptclf.tokenizer import split_prompt

    parse_class_weights(cfg.class_weights)
    if cfg.prompt is not None:
        split_prompt(cfg.prompt)  # exactly one "{text}"
    check_multi_label(cfg)


def check_multi_label(cfg: TrainConfig) -> None:
    """--multi-label's companions, and what it cannot be combined with."""
    if not cfg.multi_label:
        if cfg.tune_thresholds:
            raise GptclfError("--tune-thresholds needs --multi-label (one threshold per label)")
        if cfg.label_sep != "|":
            raise GptclfError("--label-sep needs --multi-label")
        return
    if not cfg.label_sep:
        raise GptclfError("--label-sep must not be empty")
    from gptclf.data import check_multilabel_options  # numpy, like parse_class_weights

    check_multilabel_options(cfg.data, cfg.split, cfg.balance)


def parse_duration(text: str) -> float:
    """Seconds in `90s`, `10m`, `1.5h` or a bare number of seconds (`--time-budget`)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not found or float(found.group(1)) <= 0:
        raise GptclfError(
            f"--time-budget must be a positive duration like 90s, 10m or 1h, got {text!r}"
        )
    return float(found.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[found.group(2)]


def has_cpp_compiler() -> bool:
    """Inductor compiles C++ for the CPU (and its CUDA wrappers): without one, torch.compile
    fails on the first step with a long traceback."""
    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "clang++", "c++") if c)


# Named sets of defaults; explicit flags and options override them. "book" = the TrainConfig
# defaults (the book's chapter 6). "smollm2" = the main job (the `tuning` rows of RESULTS.md).
RECIPES: dict[str, dict[str, Any]] = {
    "book": {},
    "smollm2": dict(
        model="smollm2-135m",
        pool="last_real",
        padding="dynamic",
        precision="auto",  # bf16 where the CPU/GPU runs it natively, else fp32 (inference.py)
        trainable="last_two_blocks",
        lr=2e-4,
        bucket=False,  # random batches: 97.89 +- 0.19% vs 96.89 +- 1.17% bucketed (RESULTS.md)
        # no head bias: exports exactly to LlamaForSequenceClassification (weights/hf_export.py);
        # the same test accuracy as with one in each of seeds 123-125 (README, "Export")
        head_bias=False,
    ),
}
# "auto": the smollm2 recipe's defaults, then a search over a few candidate settings on
# validation (auto.py); the defaults shown by --help are smollm2's.
AUTO = "auto"
RECIPES[AUTO] = RECIPES["smollm2"]


def recipe_defaults(recipe: str) -> dict[str, Any]:
    """Every field's default under `recipe` (no checks: `--help` shows them)."""
    if recipe not in RECIPES:
        raise GptclfError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return {**defaults, **RECIPES[recipe]}


def default_recipe(model_given: bool) -> str:
    """No recipe named: `smollm2`, the best model offline; but a run that names its --model keeps
    the book's defaults for everything else (as before recipes existed)."""
    return "book" if model_given else "smollm2"


def config_for(recipe: str | None = None, **options: Any) -> TrainConfig:
    """A `TrainConfig` as `gptclf train` builds it: the recipe's defaults, then `options`."""
    recipe = recipe or default_recipe("model" in options)
    if recipe not in RECIPES:
        raise GptclfError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    return TrainConfig(**{**RECIPES[recipe], **options})
